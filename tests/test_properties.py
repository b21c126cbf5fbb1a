"""Property tests: invariants that hold for every tiny Qwen3 shape, CLT and prompt hypothesis draws.

Models are built straight as HookedTransformers (the config `load_qwen3` makes, random weights, random
norm weights so that folding would show); CLTs are written in the on-disk format, so the independent
`FrozenReference` reads the raw tensors. Invariants:
- every sampled edge equals the effect measured by intervening in the frozen reference model;
- CLT reconstruction + error nodes give the model's MLP outputs, and the reconstruction equals one summed
  feature by feature from the raw decoder tensors;
- pruned graphs are subgraphs of the full graph (same edge weights) that keep every token and logit;
- steering features to their current activation changes nothing, in all three steering modes;
- save / load round-trips a graph, pruned or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from frozen_reference import FrozenReference, target_rows
from graph_factory import assert_same_graph
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

import tl_clt
from tl_clt import AttributionGraph, Intervention, synthetic
from tl_clt.attribution import LinearReplacement, find_active_features
from tl_clt.frozen import clean_pass
from tl_clt.loading import qwen3_tl_config

# TL_CLT_PROPERTY_EXAMPLES=500 hunts harder (minutes); the default keeps the suite fast
N_EXAMPLES = int(os.environ.get("TL_CLT_PROPERTY_EXAMPLES", "25"))
SETTINGS = dict(
    max_examples=N_EXAMPLES,
    deadline=None,
    # `world` (below) is function-scoped on purpose: it counts the examples of one test
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
# Most worlds get encoder biases fitted to their prompt, so features fire; one in BLIND_EVERY keeps the
# data-blind biases (which may leave nothing active: that edge case stays covered). Each test reports how
# many of its examples had active features and fails when fewer than MIN_WITH_FEATURES of them did.
BLIND_EVERY = 8
DENSITY = 0.3
MIN_WITH_FEATURES = 0.6
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}
# graphs store float32 edges: float64 models are checked to float32 precision (relative to the largest edge)
EDGE_TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-6, rtol=1e-5)}


@dataclass
class Shape:
    n_layers: int
    n_kv: int
    n_heads: int
    head_dim: int
    d_model: int
    d_mlp: int
    n_features: int
    n_tokens: int
    dtype: torch.dtype
    seed: int


shapes = st.builds(
    lambda n_layers, n_kv, group, head_dim, d_model, d_mlp, n_features, n_tokens, dtype, seed: Shape(
        n_layers, n_kv, n_kv * group, head_dim, d_model, d_mlp, n_features, n_tokens, dtype, seed
    ),
    n_layers=st.integers(1, 3),
    n_kv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([4, 8]),
    d_model=st.sampled_from([8, 16, 24]),
    d_mlp=st.sampled_from([8, 24]),
    n_features=st.integers(4, 24),
    n_tokens=st.integers(1, 6),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)


def build_model(shape: Shape, tokenizer) -> HookedTransformer:
    """A random Qwen3-shaped HookedTransformer with unfolded, non-trivial RMSNorm weights."""
    hf = dict(
        hidden_size=shape.d_model,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv,
        head_dim=shape.head_dim,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        vocab_size=len(tokenizer),
        rope_theta=10000.0,
        max_position_embeddings=64,
    )
    cfg = qwen3_tl_config(hf, dtype=shape.dtype, device="cpu", n_ctx=32, model_name="prop-qwen3")
    model = HookedTransformer(cfg, move_to_device=False)
    model.tokenizer = tokenizer  # set_tokenizer wants a tokenizer saved to a folder; tl_clt needs only this
    gen = torch.Generator().manual_seed(shape.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.split(".")[-1].startswith("b_"):
                p.zero_()
            else:
                fan_in = 1 if name == "embed.W_E" else p.shape[-2] * (p.shape[0] if p.ndim == 3 else 1)
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return model.eval()


@dataclass
class World:
    shape: Shape
    model: HookedTransformer
    clt: tl_clt.CrossLayerTranscoder
    clt_dir: object
    tokens: torch.Tensor
    n_active: int  # active features after the sink


def fit_biases_to_prompt(clt_dir, model, tokens, density: float) -> None:
    """Rewrite each layer's `b_enc` so every feature fires at about `density` of the prompt's real
    positions (at least one): its pre-activation clears the threshold at and above that quantile."""
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    mlp_in = clean_pass(model, clt, tokens).mlp_in.float()  # [n_layers, pos, d_model]: the CLT's inputs
    for layer in range(clt.n_layers):
        path = clt_dir / f"W_enc_{layer}.safetensors"
        tensors = load_file(str(path))
        pre = mlp_in[layer, 1:] @ tensors[f"W_enc_{layer}"].float().T  # [real pos, n_features], no bias
        q = torch.quantile(pre, 1 - density, dim=0)
        thr = tensors.get(f"threshold_{layer}", torch.zeros_like(q)).float()
        tensors[f"b_enc_{layer}"] = (thr - q + 1e-3 * (1 + q.abs())).to(tensors[f"b_enc_{layer}"].dtype)
        save_file(tensors, str(path))


@pytest.fixture(scope="module")
def make_world(tokenizer, tmp_path_factory):
    def make(shape: Shape) -> World:
        model = build_model(shape, tokenizer)
        clt_dir = synthetic.make_random_clt_folder(
            tmp_path_factory.mktemp("prop"),
            shape.n_layers,
            shape.d_model,
            shape.n_features,
            seed=shape.seed,
            density=0.3,
            dtype=torch.float32,
            model_name="prop-qwen3",
        )
        gen = torch.Generator().manual_seed(shape.seed + 1)
        ids = torch.randint(1, len(tokenizer), (shape.n_tokens,), generator=gen)  # 0 is the sink
        tokens = tl_clt.to_tokens(model, ids)
        if shape.seed % BLIND_EVERY:
            fit_biases_to_prompt(clt_dir, model, tokens, DENSITY)
        clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=shape.dtype)
        n_active = int((tl_clt.feature_activations(model, clt, tokens).to_dense()[:, 1:] != 0).sum())
        event(f"active features: {'none' if not n_active else 'some'}")
        return World(shape, model, clt, clt_dir, tokens, n_active)

    return make


@pytest.fixture()
def world(make_world, request):
    """`make_world` that counts, over one test's examples, how many had active features, and checks it."""
    seen: list[bool] = []

    def make(shape: Shape) -> World:
        w = make_world(shape)
        seen.append(w.n_active > 0)
        return w

    yield make
    n, hit = len(seen), sum(seen)
    print(f"\n{request.node.name}: {hit}/{n} examples had active features")
    request.node.user_properties.append(("examples_with_active_features", f"{hit}/{n}"))
    assert n < 5 or hit >= MIN_WITH_FEATURES * n, f"only {hit}/{n} examples had active features"


def _attribute(w: World) -> AttributionGraph:
    return tl_clt.attribute(w.model, w.clt, w.tokens, max_n_logits=3, batch_size=16, verbose=False)


# ------------------------------------------------------------------------ edges = measured effects
@settings(**SETTINGS)
@given(shape=shapes, picks=st.lists(st.integers(0, 10**6), min_size=6, max_size=6))
def test_edges_equal_measured_effects(world, shape, picks):
    w = world(shape)
    graph = _attribute(w)
    event(f"feature nodes: {'none' if not graph.n_features else '1-20' if graph.n_features <= 20 else '>20'}")
    ref = FrozenReference(w.model, w.clt_dir, w.tokens, graph.active_features, graph.activation_values)
    rows = target_rows(graph)
    scale = max(float(graph.adjacency.abs().max()), 1e-3)
    errors = [(k, p) for k in range(graph.n_layers) for p in range(1, graph.n_pos)]
    sources = [("token", picks[0] % graph.n_pos), ("error", errors[picks[1] % len(errors)])]
    sources += [("feature", i % graph.n_features) for i in picks[2:5] if graph.n_features]
    for kind, s in sources:
        col, measured = ref.double_source(graph, kind, s)
        tol = EDGE_TOL[shape.dtype]
        torch.testing.assert_close(
            graph.adjacency[rows, col], measured.float(), atol=tol["atol"] * scale, rtol=tol["rtol"]
        )


# ------------------------------------------------------------------------ reconstruction + errors = MLP out
@settings(**SETTINGS)
@given(shape=shapes)
def test_reconstruction_plus_errors_is_the_mlp_output(world, shape):
    w = world(shape)
    _, cache = w.model.run_with_cache(w.tokens[None])
    mlp_out = torch.stack([cache[f"blocks.{k}.hook_mlp_out"][0] for k in range(shape.n_layers)])
    state = clean_pass(w.model, w.clt, w.tokens)
    active = find_active_features(w.clt, state)
    lin = LinearReplacement(w.model, w.clt, state, active, batch_size=4)
    tol = TOL[shape.dtype]
    torch.testing.assert_close(active.reconstruction[:, 1:] + lin.errors[:, 1:], mlp_out[:, 1:], **tol)
    ref = FrozenReference(w.model, w.clt_dir, w.tokens, active.index, active.values)
    torch.testing.assert_close(active.reconstruction[:, 1:], ref.reconstruction(active.values)[:, 1:], **tol)
    with (
        torch.no_grad(),
        w.model.hooks(fwd_hooks=tl_clt.replacement_hooks(w.model, w.clt, use_error_term=True)),
    ):
        replaced = w.model(w.tokens[None])
    torch.testing.assert_close(replaced, w.model(w.tokens[None]), **tol)


# ------------------------------------------------------------------------ pruning and save/load
thresholds = st.floats(0.0, 1.0, allow_nan=False)


@settings(**SETTINGS)
@given(shape=shapes, cuts=st.lists(st.tuples(thresholds, thresholds), min_size=1, max_size=4))
def test_pruned_graphs_are_subgraphs_keep_tokens_and_logits_and_round_trip(
    world, shape, cuts, tmp_path_factory
):
    w = world(shape)
    graph = _attribute(w)
    G = graph.to_networkx()
    must_keep = {n for n, d in G.nodes(data=True) if d["kind"] in ("token", "logit")}
    assert len(must_keep) == graph.n_pos + graph.n_logits
    folder = tmp_path_factory.mktemp("saved")
    for i, (node_t, edge_t) in enumerate(cuts):
        P = graph.prune(node_threshold=node_t, edge_threshold=edge_t)
        H = P.to_networkx()
        assert must_keep <= set(H.nodes) <= set(G.nodes)
        for u, v, wt in H.edges(data="weight"):
            assert G.has_edge(u, v) and G[u][v]["weight"] == wt
        for g in (graph, P):
            g.save(folder / f"g{i}.pt")
            assert_same_graph(AttributionGraph.load(folder / f"g{i}.pt"), g)


# ------------------------------------------------------------------------ steering to the current value
@settings(**SETTINGS)
@given(shape=shapes, mode=st.sampled_from(["frozen", "unfrozen", "direct"]), k=st.integers(1, 8))
def test_steering_to_the_current_activation_is_a_noop(world, shape, mode, k):
    w = world(shape)
    acts = tl_clt.feature_activations(w.model, w.clt, w.tokens)
    keys = acts.indices().T
    keys = keys[torch.randperm(len(keys), generator=torch.Generator().manual_seed(shape.seed))[:k]]
    dense = acts.to_dense()
    ivs = [Intervention(la, p, f, float(dense[la, p, f])) for la, p, f in keys.tolist()]
    if not ivs:  # nothing active: setting a silent feature to 0 everywhere is a no-op too
        ivs = [Intervention(0, slice(0, None), 0, 0.0)]
    out = tl_clt.steer(
        w.model, w.clt, w.tokens, ivs, freeze_attention=mode == "frozen", direct_effects=mode == "direct"
    )
    with torch.no_grad():
        clean = w.model(w.tokens[None])[0]
    torch.testing.assert_close(out, clean, **TOL[shape.dtype])
