"""Attribution targets (tl_clt.targets): rows equal the default graph's, and edges equal interventions."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from conftest import PROMPT
from frozen_reference import FrozenReference

import tl_clt
from tl_clt.prompts import to_tokens


def _one_token_strings(model, ids):
    """Decoded strings of `ids` that encode back to exactly that one token."""
    out = []
    for t in ids:
        s = model.tokenizer.decode([t])
        if model.tokenizer.encode(s, add_special_tokens=False) == [t]:
            out.append((t, s))
    return out


@pytest.fixture(scope="module")
def setup(model_dir, clt_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    full = tl_clt.attribute(model, clt, PROMPT, batch_size=16, max_n_logits=5, verbose=False)
    tokens = to_tokens(model, PROMPT)
    ref = FrozenReference(model, clt_dir, tokens, full.active_features, full.activation_values)
    pairs = _one_token_strings(model, full.logit_tokens.tolist())
    assert len(pairs) >= 2, "the test needs two top tokens that are single-token strings"
    return model, full, ref, pairs


def _n_src(graph):
    return graph.n_features + (graph.n_layers + 1) * graph.n_pos


def test_token_targets_equal_rows_of_the_default_graph(setup, clt):
    model, full, _, pairs = setup
    (a_id, a), (b_id, b) = pairs[:2]
    g = tl_clt.attribute(model, clt, PROMPT, targets=[b, a_id], verbose=False)
    assert g.logit_tokens.tolist() == [b_id, a_id]
    assert g.node_id(g.logit_index(0)) == f"L:{b_id}"
    torch.testing.assert_close(g.logit_probabilities, torch.tensor([0.5, 0.5]))
    for i, tid in enumerate([b_id, a_id]):
        j = full.logit_tokens.tolist().index(tid)
        torch.testing.assert_close(
            g.adjacency[g.logit_index(i), : _n_src(g)], full.adjacency[full.logit_index(j), : _n_src(full)]
        )


def test_logit_diff_row_is_the_difference_of_token_rows(setup, clt):
    model, full, _, pairs = setup
    (a_id, a), (b_id, b) = pairs[:2]
    g = tl_clt.attribute(model, clt, PROMPT, targets=[tl_clt.logit_diff(a, b)], verbose=False)
    i, j = full.logit_tokens.tolist().index(a_id), full.logit_tokens.tolist().index(b_id)
    expected = full.adjacency[full.logit_index(i)] - full.adjacency[full.logit_index(j)]
    torch.testing.assert_close(g.adjacency[g.logit_index(0), : _n_src(g)], expected[: _n_src(full)])
    assert g.logit_token_strs == [f"logit_diff({a}, {b})"]
    assert g.logit_tokens.tolist() == [model.cfg.d_vocab]  # a virtual id past the vocabulary
    # a Direction along the same unembedding difference reads the same row
    W_U = model.W_U.detach()
    d = tl_clt.attribute(
        model, clt, PROMPT, targets=[tl_clt.Direction("a-b", W_U[:, a_id] - W_U[:, b_id])], verbose=False
    )
    torch.testing.assert_close(d.adjacency[d.logit_index(0)], g.adjacency[g.logit_index(0)])
    assert d.logit_token_strs == ["a-b"]


def test_feature_target_row_is_its_row_in_the_full_graph(setup, clt):
    model, full, _, _ = setup
    # the feature with the most incoming edge mass, so the check is not trivial
    mass = full.adjacency[: full.n_features].abs().sum(1)
    layer, pos, feat = full.feature_keys[int(mass.argmax())].tolist()
    spellings = [f"F:{layer}:{pos}:{feat}", f"{layer}:{pos}:{feat}", (layer, pos, feat)]
    g = tl_clt.attribute(model, clt, PROMPT, targets=spellings, verbose=False)
    expected = full.adjacency[full.feature_index(layer, pos, feat), : _n_src(full)]
    assert expected.abs().max() > 0
    for i in range(3):
        torch.testing.assert_close(g.adjacency[g.logit_index(i), : _n_src(g)], expected)
    assert g.logit_token_strs == [f"F:{layer}:{pos}:{feat}"] * 3


def test_logit_diff_edges_equal_measured_interventions(setup, clt):
    """Doubling a source changes logit(a) - logit(b) in the frozen model by exactly the edge weight."""
    model, full, ref, pairs = setup
    (a_id, a), (b_id, b) = pairs[:2]
    low = int(ref.clean_logits.argmin())  # a token far outside the top logits
    g = tl_clt.attribute(model, clt, PROMPT, targets=[tl_clt.logit_diff(a, b), low], verbose=False)
    gen = torch.Generator().manual_seed(0)
    checked, worst = 0, 0.0
    scale = float(g.adjacency[g.logit_index(0)].abs().max())
    sources = [("feature", i) for i in torch.randperm(g.n_features, generator=gen)[:10].tolist()]
    sources += [("error", (layer, p)) for layer in range(g.n_layers) for p in (1, g.n_pos - 1)]
    sources += [("token", p) for p in range(g.n_pos)]
    for kind, s in sources:
        col, _, delta = ref.source_deltas(g, kind, s)
        measured = torch.stack([delta[a_id] - delta[b_id], delta[low]])
        edges = g.adjacency[[g.logit_index(0), g.logit_index(1)], col]
        worst = max(worst, float((edges - measured).abs().max()))
        torch.testing.assert_close(edges, measured, atol=2e-5 * scale, rtol=1e-4)
        checked += int((edges.abs() > 1e-3 * scale).sum())
    assert checked > 10, "the test must check some non-trivial edges"
    print(f"max |edge - intervention| = {worst:.3g} (row scale {scale:.3g})")


def test_prune_scores_export_networkx_with_custom_targets(setup, clt, tmp_path):
    model, full, _, pairs = setup
    (a_id, a), (b_id, b) = pairs[:2]
    layer, pos, feat = full.feature_keys[-1].tolist()
    g = tl_clt.attribute(
        model, clt, PROMPT, targets=[tl_clt.logit_diff(a, b), a, f"F:{layer}:{pos}:{feat}"], verbose=False
    )
    scores = g.scores()
    assert 0 <= scores.replacement <= 1 and 0 <= scores.completeness <= 1
    pruned = g.prune(0.8, 0.98)
    assert all(pruned.node_mask[g.logit_index(i)] for i in range(3))
    G = pruned.to_networkx()
    ids = [g.node_id(g.logit_index(i)) for i in range(3)]
    assert ids == [f"L:{model.cfg.d_vocab}", f"L:{a_id}", f"L:{model.cfg.d_vocab + 1}"]
    assert all(G.has_node(n) for n in ids)
    assert G.nodes[ids[0]]["token"] == f"logit_diff({a}, {b})"
    assert nx.is_directed_acyclic_graph(G)
    path = g.to_json(tmp_path / "g.json")
    data = json.loads(path.read_text())
    tl_clt.validate_graph_json(data)
    labels = {n.get("clerp") for n in data["nodes"] if n["feature_type"] == "logit"}
    assert any(f"logit_diff({a}, {b})" in (lab or "") for lab in labels)
    tl_clt.node_id(data["nodes"][-1]["node_id"], n_layers=g.n_layers)  # json ids parse


@pytest.mark.parametrize(
    "targets, match",
    [
        ([], "empty"),
        (["Fact: The president"], "tokens"),
        (["F:1:1:99999"], "not active"),
        ([tl_clt.logit_diff(" x y z w", 0)], "tokens"),
        ([tl_clt.Direction("bad", torch.ones(3))], "shape"),
    ],
)
def test_bad_targets_raise_typed_errors(setup, clt, targets, match):
    model = setup[0]
    with pytest.raises(tl_clt.TargetError, match=match):
        tl_clt.attribute(model, clt, PROMPT, targets=targets, verbose=False)


def test_cli_target_option(setup, model_dir, clt_dir, tmp_path, capsys):
    from tl_clt.cli import main
    from tl_clt.targets import parse_target_spec

    _, full, _, pairs = setup
    (a_id, a), (b_id, b) = pairs[:2]
    assert parse_target_spec(f"diff:{a}|{b}") == tl_clt.logit_diff(a, b)
    assert parse_target_spec(f"id:{a_id}") == a_id
    assert parse_target_spec("token:id:3") == "id:3"
    layer, pos, feat = full.feature_keys[0].tolist()
    out = tmp_path / "g.json"
    base = ["attribute", "--model", str(model_dir), "--clt", str(clt_dir), "--prompt", PROMPT, "-q"]
    targets = ["--target", f"diff:{a}|{b}", "--target", a, "--target", f"{layer}:{pos}:{feat}"]
    assert main([*base, "-o", str(out), *targets, "--png", str(tmp_path / "g.png")]) == 0
    data = json.loads(out.read_text())
    tl_clt.validate_graph_json(data)
    assert sum(n["feature_type"] == "logit" for n in data["nodes"]) == 3
    assert (tmp_path / "g.png").stat().st_size > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "-o", str(tmp_path / "h.json"), "--target", "Fact: The president"])
    assert exit_info.value.code == 2
    assert "give one token" in capsys.readouterr().err
    assert not (tmp_path / "h.json").exists()
