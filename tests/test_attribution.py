"""Exactness: every checked edge equals the effect measured by intervening in the frozen model."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT
from frozen_reference import FrozenReference, target_rows

import tl_clt
from tl_clt.prompts import to_tokens


@pytest.fixture(scope="module")
def setup(model_dir, clt_dir, clt, backend):
    model = tl_clt.load_qwen3(model_dir, backend=backend)
    graph = tl_clt.attribute(model, clt, PROMPT, batch_size=7, max_n_logits=5, verbose=False)
    tokens = to_tokens(model, PROMPT)
    ref = FrozenReference(model, clt_dir, tokens, graph.active_features, graph.activation_values)
    return model, graph, ref


def test_active_features_match_a_direct_encoding(setup, clt_dir):
    model, graph, ref = setup
    _, cache = model.run_with_cache(ref.tokens[None])
    found = []
    for k in range(model.cfg.n_layers):
        x = cache[f"blocks.{k}.ln2.hook_normalized"][0] * model.blocks[k].ln2.w
        pre = x @ ref.enc[k][f"W_enc_{k}"].float().T + ref.enc[k][f"b_enc_{k}"].float()
        act = pre * (pre > ref.enc[k][f"threshold_{k}"].float())
        act[0] = 0
        found += [(k, p, f, float(act[p, f])) for p, f in act.nonzero().tolist()]
    assert graph.active_features.tolist() == [list(x[:3]) for x in found]
    torch.testing.assert_close(graph.activation_values, torch.tensor([x[3] for x in found]))


def test_frozen_reference_reproduces_the_model(setup):
    _, _, ref = setup
    _, logits = ref.run()
    torch.testing.assert_close(logits, ref.clean_logits - ref.clean_logits.mean(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["feature", "error", "token"])
def test_edges_equal_measured_interventions(setup, kind):
    """Doubling a source changes each target by exactly its edge weight (the model is linear)."""
    _, graph, ref = setup
    gen = torch.Generator().manual_seed(0)
    rows = target_rows(graph)
    scale = graph.adjacency.abs().max()
    if kind == "feature":
        sources = torch.randperm(graph.n_features, generator=gen)[:12].tolist()
    elif kind == "error":
        sources = [(layer, pos) for layer in range(graph.n_layers) for pos in range(1, graph.n_pos)]
        sources = [sources[i] for i in torch.randperm(len(sources), generator=gen)[:10]]
    else:
        sources = list(range(graph.n_pos))
    checked = 0
    for s in sources:
        col, measured = ref.double_source(graph, kind, s)
        edges = graph.adjacency[rows, col]
        torch.testing.assert_close(edges, measured, atol=2e-5 * float(scale), rtol=1e-4)
        checked += int((edges.abs() > 1e-3 * scale).sum())
    assert checked > 10, "the test must check some non-trivial edges"


def test_max_feature_nodes_keeps_rows_of_the_full_graph(setup, clt):
    model, graph, _ = setup
    sub = tl_clt.attribute(
        model, clt, PROMPT, batch_size=5, max_n_logits=5, max_feature_nodes=20, verbose=False
    )
    assert sub.n_features == 20
    full_index = [graph.feature_index(*k) for k in sub.feature_keys.tolist()]
    sub_rows = list(range(20)) + [sub.logit_index(i) for i in range(sub.n_logits)]
    full_rows = full_index + [graph.logit_index(i) for i in range(graph.n_logits)]
    n_rest = (graph.n_layers + 1) * graph.n_pos
    cols_full = full_index + list(range(graph.n_features, graph.n_features + n_rest))
    torch.testing.assert_close(
        sub.adjacency[sub_rows][:, : 20 + n_rest],
        graph.adjacency[full_rows][:, cols_full],
        atol=1e-5,
        rtol=1e-4,
    )
    # the selection follows influence: the chosen features carry more logit influence than the rest
    infl = graph.node_influence()[: graph.n_features]
    chosen = torch.zeros(graph.n_features, dtype=torch.bool)
    chosen[full_index] = True
    assert infl[chosen].mean() > infl[~chosen].mean()


def test_logit_targets_follow_probability(setup):
    model, graph, ref = setup
    probs = torch.softmax(ref.clean_logits, -1)
    top = probs.topk(graph.n_logits)
    assert graph.logit_tokens.tolist() == top.indices.tolist()
    torch.testing.assert_close(graph.logit_probabilities, top.values)
    assert graph.n_logits == 5 or probs[graph.logit_tokens].sum() >= 0.95


def test_sink_position_is_left_out(setup):
    _, graph, _ = setup
    assert (graph.feature_keys[:, 1] > 0).all()
    G = graph.to_networkx()
    assert not [n for n, d in G.nodes(data=True) if d["kind"] in ("feature", "error") and d["pos"] == 0]
    assert G.nodes["T:0"]["kind"] == "token"


def test_networkx_attributes_and_edges(setup):
    _, graph, _ = setup
    G = graph.to_networkx()
    kinds = {d["kind"] for _, d in G.nodes(data=True)}
    assert kinds == {"feature", "error", "token", "logit"}
    node = f"F:{':'.join(map(str, graph.feature_keys[0].tolist()))}"
    assert G.nodes[node]["activation"] == pytest.approx(
        float(graph.activation_values[graph.selected_features[0]])
    )
    for u, v, w in list(G.edges(data="weight"))[:50]:
        assert w == pytest.approx(
            float(graph.adjacency[graph.node_ids().index(v), graph.node_ids().index(u)])
        )
    assert all(G.nodes[v]["kind"] in ("feature", "logit") for _, v in G.edges())


@pytest.mark.parametrize("input_hook", ["ln2.hook_normalized", "hook_resid_mid"])
def test_other_input_hooks_are_exact(model_dir, tmp_path, input_hook, backend):
    """CLTs reading ln2's normalised value (no weight) or the residual stream are attributed exactly."""
    from tl_clt import synthetic

    model = tl_clt.load_qwen3(model_dir, backend=backend)
    cdir = synthetic.make_random_clt_folder(
        tmp_path / "c", 3, 64, 48, seed=3, feature_input_hook=input_hook, model_name=str(model_dir)
    )
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(cdir, dtype=torch.float32)
    graph = tl_clt.attribute(model, clt, PROMPT, batch_size=16, max_n_logits=3, verbose=False)
    ref = FrozenReference(
        model, cdir, to_tokens(model, PROMPT), graph.active_features, graph.activation_values, input_hook
    )
    rows = target_rows(graph)
    scale = graph.adjacency.abs().max()
    assert graph.n_features > 5
    for s in range(0, graph.n_features, max(1, graph.n_features // 8)):
        col, measured = ref.double_source(graph, "feature", s)
        torch.testing.assert_close(graph.adjacency[rows, col], measured, atol=2e-5 * float(scale), rtol=1e-4)


def test_bfloat16_model_matches_float32_closely(model_dir, clt_dir, setup, backend):
    """A bf16 model (with a bf16 or fp32 CLT) attributes; its logit edges track the fp32 graph's."""
    _, graph32, _ = setup
    for clt_dtype in (torch.bfloat16, torch.float32):
        model = tl_clt.load_qwen3(model_dir, dtype=torch.bfloat16, backend=backend)
        clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=clt_dtype)
        graph = tl_clt.attribute(model, clt, PROMPT, batch_size=7, max_n_logits=5, verbose=False)
        assert torch.isfinite(graph.adjacency).all() and graph.adjacency.dtype == torch.float32
        assert graph.logit_tokens[0] == graph32.logit_tokens[0]
        common = [k for k in graph.feature_keys.tolist() if k in graph32.feature_keys.tolist()]
        assert len(common) > 0.8 * graph32.n_features
        ours = graph.adjacency[graph.logit_index(0), [graph.feature_index(*k) for k in common]]
        ref = graph32.adjacency[graph32.logit_index(0), [graph32.feature_index(*k) for k in common]]
        assert (ours - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.hooked
def test_bridge_graph_equals_hooked_transformer_graph(model_dir, clt):
    """Both backends of the same checkpoint give the same graph: same nodes, edges within 1e-5 of the
    largest edge (they differ only by float rounding in the two implementations of the forward pass)."""
    graphs = [
        tl_clt.attribute(tl_clt.load_qwen3(model_dir, backend=b), clt, PROMPT, max_n_logits=5, verbose=False)
        for b in ("hooked", "bridge")
    ]
    hooked, bridge = graphs
    assert hooked.feature_keys.tolist() == bridge.feature_keys.tolist()
    assert hooked.logit_tokens.tolist() == bridge.logit_tokens.tolist()
    scale = hooked.adjacency.abs().max()
    assert scale > 0.1 and hooked.n_features > 50
    assert (hooked.adjacency - bridge.adjacency).abs().max() <= 1e-5 * scale


@pytest.mark.bridge
def test_bridge_calls_show_no_edit_warning(model_dir, clt):
    """Freezing edits norm scales on purpose: our calls silence the bridge's warning about it (the user's
    own forward passes with our frozen steering hooks still show it)."""
    import warnings

    bridge = tl_clt.load_qwen3(model_dir, backend="bridge")
    ivs = [tl_clt.Intervention(1, -1, 4, 3.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tl_clt.attribute(bridge, clt, PROMPT, max_n_logits=2, max_feature_nodes=8, verbose=False)
        tl_clt.steer(bridge, clt, PROMPT, ivs, direct_effects=True)
    tokens = to_tokens(bridge, PROMPT)
    hooks = tl_clt.steering_hooks(bridge, clt, ivs, tokens=tokens, direct_effects=True)
    with pytest.warns(UserWarning, match="native-autograd path"), bridge.hooks(fwd_hooks=hooks):
        bridge(tokens[None])


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_the_adjacency_places_rows_by_node_and_columns_by_keep_cols(chunk):
    """`_adjacency` against the definition, entry by entry: node j's row is feature row n_logits + perm[j]
    of the buffer, target rows last, column c of the kept block is buffer column keep_cols[c]."""
    from tl_clt.attribution import _adjacency

    gen = torch.Generator().manual_seed(0)
    n_logits, n_sel, n_sources, extra = 2, 7, 12, 3
    rows = torch.randn(n_logits + n_sel + 4, n_sources, generator=gen)  # 4 spare rows, never read
    selected = torch.tensor([1, 4, 5, 6, 7, 8, 9])  # sorted, as in _build_graph
    order = selected[torch.randperm(n_sel, generator=gen)]  # visiting order
    _, perm = torch.sort(order)
    keep_cols = torch.cat([selected, torch.arange(n_sources - extra, n_sources)])
    n_nodes = n_sel + extra + n_logits
    got = _adjacency(rows, n_logits, perm, keep_cols, n_nodes, chunk=chunk)
    want = torch.zeros(n_nodes, n_nodes)
    for j in range(n_sel):
        for c, col in enumerate(keep_cols.tolist()):
            want[j, c] = rows[n_logits + int(perm[j]), col]
    for i in range(n_logits):
        for c, col in enumerate(keep_cols.tolist()):
            want[n_nodes - n_logits + i, c] = rows[i, col]
    assert torch.equal(got, want)
