"""Steering: expected logits are computed independently, from the raw safetensors tensors and plain
TransformerLens hooks (no tl_clt code), and compared with tl_clt.steer / steering_hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT
from safetensors.torch import load_file

import tl_clt
from tl_clt import Intervention, ablate, load_qwen3, scale, steer, steering_hooks, synthetic
from tl_clt.prompts import to_tokens


# ------------------------------------------------------------------------ independent reference
class RawCLT:
    """The CLT read straight from its safetensors files."""

    def __init__(self, folder, n_layers):
        enc = [load_file(str(folder / f"W_enc_{k}.safetensors")) for k in range(n_layers)]
        self.W_enc = [e[f"W_enc_{k}"].float() for k, e in enumerate(enc)]
        self.b_enc = [e[f"b_enc_{k}"].float() for k, e in enumerate(enc)]
        self.thr = [e[f"threshold_{k}"].float() for k, e in enumerate(enc)]
        self.W_dec = [
            load_file(str(folder / f"W_dec_{k}.safetensors"))[f"W_dec_{k}"].float() for k in range(n_layers)
        ]

    def acts(self, model, layer, normalized):
        """JumpReLU activations [pos, F] from `blocks.{layer}.ln2.hook_normalized` [pos, d]."""
        pre = (normalized * model.blocks[layer].ln2.w) @ self.W_enc[layer].T + self.b_enc[layer]
        return pre * (pre > self.thr[layer])


def reference_steer(model, raw, tokens, ivs, freeze_attention, fixed_acts=None):
    """Logits [pos, d_vocab] with `ivs` = [(layer, [positions], feature, value)], one by one.

    Current activations are read in this pass, or taken from `fixed_acts` [n_layers, pos, F]."""
    n_layers = model.cfg.n_layers
    frozen = {}
    if freeze_attention:
        _, cache = model.run_with_cache(tokens[None])
        frozen = {n: t for n, t in cache.items() if n.endswith("hook_pattern")}
    add = {}

    def read(t, hook):
        layer = int(hook.name.split(".")[1])
        acts = raw.acts(model, layer, t[0]) if fixed_acts is None else fixed_acts[layer]
        for k, positions, f, v in ivs:
            if k != layer:
                continue
            for p in positions:
                for target in range(k, n_layers):
                    add.setdefault(target, torch.zeros_like(t[0]))
                    add[target][p] += (v - acts[p, f]) * raw.W_dec[k][f, target - k]
        return t

    def write(t, hook):
        layer = int(hook.name.split(".")[1])
        return t + add[layer][None] if layer in add else t

    hooks = [(n, lambda t, hook: frozen[hook.name]) for n in frozen]
    hooks += [(f"blocks.{k}.ln2.hook_normalized", read) for k in range(n_layers)]
    hooks += [(f"blocks.{k}.hook_mlp_out", write) for k in range(n_layers)]
    with torch.no_grad():
        return model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]


@torch.no_grad()
def clean_acts(model, raw, tokens):
    _, cache = model.run_with_cache(tokens[None])
    return torch.stack(
        [raw.acts(model, k, cache[f"blocks.{k}.ln2.hook_normalized"][0]) for k in range(model.cfg.n_layers)]
    )


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def setup(model_dir, clt_dir, clt, backend):
    model = tl_clt.load_qwen3(model_dir, backend=backend)
    tokens = to_tokens(model, PROMPT)
    raw = RawCLT(clt_dir, model.cfg.n_layers)
    with torch.no_grad():
        clean = model(tokens[None])[0]
    return model, tokens, raw, clean


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory, tokenizer, backend):
    root = tmp_path_factory.mktemp("one_layer")
    model = tl_clt.load_qwen3(
        synthetic.make_qwen3_folder(
            root / "tiny-qwen3", tokenizer=tokenizer, num_hidden_layers=1, initializer_range=0.1, seed=1
        ),
        backend=backend,
    )
    clt_dir = synthetic.make_random_clt_folder(
        root / "c", n_layers=1, d_model=64, n_features=64, density=0.2, seed=1
    )
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    return model, clt, RawCLT(clt_dir, 1)


@pytest.fixture(scope="module")
def graph(setup, clt):
    model = setup[0]
    return tl_clt.attribute(
        model, clt, PROMPT, max_n_logits=4, max_feature_nodes=40, batch_size=64, verbose=False
    )


def _close(a, b, scale=1.0):
    torch.testing.assert_close(a, b, atol=2e-5 * scale, rtol=1e-5)


# ------------------------------------------------------------------------ semantics
@pytest.mark.parametrize("mode", ["frozen", "unfrozen", "direct"])
def test_setting_features_to_their_own_activation_is_a_noop(setup, clt, mode):
    model, tokens, raw, clean = setup
    acts = clean_acts(model, raw, tokens)
    keys = acts.nonzero()[:: max(1, len(acts.nonzero()) // 30)]  # ~30 features, all layers
    assert len({k[0] for k in keys.tolist()}) == model.cfg.n_layers
    ivs = [Intervention(k, p, f, float(acts[k, p, f])) for k, p, f in keys.tolist()]
    out = steer(model, clt, PROMPT, ivs, freeze_attention=mode == "frozen", direct_effects=mode == "direct")
    _close(out, clean)
    same = scale(keys, 1.0, tl_clt.feature_activations(model, clt, PROMPT))
    out = steer(model, clt, PROMPT, same)
    _close(out, clean)


@pytest.mark.parametrize("form", ["int", "negative", "open_slice", "step_slice"])
@pytest.mark.parametrize("freeze", [True, False])
def test_ablation_on_one_layer_model_equals_hand_computed_decoder_delta(one_layer, form, freeze):
    model, clt, raw = one_layer
    tokens = to_tokens(model, PROMPT)
    n = len(tokens)
    acts = clean_acts(model, raw, tokens)[0]  # [pos, F]
    p, f = divmod(int(acts[1:].argmax()) + acts.shape[1], acts.shape[1])  # strongest, pos >= 1
    assert acts[p, f] > 0
    pos = {"int": p, "negative": p - n, "open_slice": slice(p, None), "step_slice": slice(1, None, 2)}[form]
    hit = list(range(n))[pos] if isinstance(pos, slice) else [p]
    expected_delta = torch.zeros(n, model.cfg.d_model)
    for q in hit:
        expected_delta[q] -= acts[q, f] * raw.W_dec[0][f, 0]
    assert expected_delta.abs().sum() > 0

    def subtract(t, hook):
        return t + expected_delta[None]

    with torch.no_grad():
        hooks = [("blocks.0.hook_mlp_out", subtract)]
        expected = model.run_with_hooks(tokens[None], fwd_hooks=hooks)
        clean = model(tokens[None])
    out = steer(model, clt, PROMPT, [Intervention(0, pos, f, 0.0)], freeze_attention=freeze)
    _close(out, expected[0])
    assert (out - clean[0]).abs().max() > 1e-3


@pytest.mark.parametrize("freeze", [True, False])
def test_current_activation_is_read_in_the_steered_pass(setup, clt, freeze):
    """Layer-1 targets are set from layer-1 activations that layer-0 steering already changed."""
    model, tokens, raw, clean = setup
    acts = clean_acts(model, raw, tokens)
    f0 = acts[0, 3].nonzero()[:3].squeeze(-1).tolist()
    f1 = int(acts[1, -1].argmax())
    ivs = [Intervention(0, 3, f, 0.0) for f in f0] + [
        Intervention(0, slice(5, None), 11, 4.0),
        Intervention(1, -1, f1, 2.5),
        Intervention(2, slice(2, 6), 7, 1.0),
    ]
    n = len(tokens)
    ref_ivs = [
        (
            iv.layer,
            list(range(n))[iv.pos] if isinstance(iv.pos, slice) else [iv.pos % n],
            iv.feature,
            iv.value,
        )
        for iv in ivs
    ]
    out = steer(model, clt, PROMPT, ivs, freeze_attention=freeze)
    _close(out, reference_steer(model, raw, tokens, ref_ivs, freeze))
    # deltas from the clean activations instead would give other logits
    naive = reference_steer(model, raw, tokens, ref_ivs, freeze, fixed_acts=acts)
    assert (naive[-1] - out[-1]).abs().max() > 1e-3
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=steering_hooks(model, clt, ivs, tokens=tokens, freeze_attention=freeze)),
    ):
        via_hooks = model(tokens)[0]
    _close(via_hooks, out)
    assert (out[-1] - clean[-1]).abs().max() > 1e-3


def _batch_of_steerings(acts) -> list[list[Intervention]]:
    """Steerings that differ in layers, positions (int, negative, slices, named) and features; one empty,
    one repeated, and two setting the same feature to different values."""
    f0 = acts[0, 3].nonzero()[:3].squeeze(-1).tolist()
    f1 = int(acts[1, -1].argmax())
    return [
        [Intervention(0, 3, f, 0.0) for f in f0],
        [Intervention(1, -1, f1, 2.5), Intervention(2, slice(2, 6), 7, 1.0)],
        [],
        [Intervention(0, slice(5, None), 11, 4.0), Intervention(1, -1, f1, 0.0)],
        [Intervention(1, -1, f1, -3.0)],
        [Intervention(2, "prompt", 7, 0.5), Intervention(0, 3, f0[0], 1.5)],
        [Intervention(0, 3, f, 0.0) for f in f0],
    ]


def _reference_ivs(ivs, n):
    def where(pos):
        if pos == "prompt":
            return list(range(n))
        return list(range(n))[pos] if isinstance(pos, slice) else [pos % n]

    return [(iv.layer, where(iv.pos), iv.feature, iv.value) for iv in ivs]


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_steerings_equal_the_independent_reference_one_by_one(setup, clt, freeze, batch_size):
    """`Steerer.last` runs steerings side by side along the batch; each row equals that steering computed
    alone by the reference (raw tensors, plain hooks), and the steerings really differ."""
    from tl_clt.steering import Steerer

    model, tokens, raw, clean = setup
    steerings = _batch_of_steerings(clean_acts(model, raw, tokens))
    out = Steerer(model, clt, PROMPT, freeze_attention=freeze).last(steerings, batch_size=batch_size)
    assert out.shape == (len(steerings), model.cfg.d_vocab)
    for row, ivs in zip(out, steerings, strict=True):
        _close(row, reference_steer(model, raw, tokens, _reference_ivs(ivs, len(tokens)), freeze)[-1])
    _close(out[2], clean[-1])  # the empty steering
    assert min((out[i] - out[j]).abs().max() for i in range(6) for j in range(i + 1, 6)) > 1e-3


def test_steer_many_sweeps_a_group_as_steer_does_one_by_one(setup, clt, graph):
    """The public sweep: a group at several factors (and ablated) in one call equals `steer` of each."""
    model = setup[0]
    ids = [graph.node_id(i) for i in range(6)]
    factors = (-2.0, -1.0, 0.0, 1.0, 3.0)
    steerings = [scale(ids, f, graph) for f in factors]
    out = tl_clt.steer_many(model, clt, PROMPT, steerings, batch_size=2)
    assert out.shape == (len(factors), model.cfg.d_vocab)
    for row, ivs in zip(out, steerings, strict=True):
        _close(row, steer(model, clt, PROMPT, ivs)[-1])
    _close(out[factors.index(1.0)], setup[3][-1])  # x1 is the clean prompt
    assert (out[0] - out[-1]).abs().max() > 1e-3


def test_batched_direct_effects_equal_steer_one_by_one(setup, clt):
    from tl_clt.steering import Steerer

    model, tokens, raw, _ = setup
    steerings = _batch_of_steerings(clean_acts(model, raw, tokens))
    out = Steerer(model, clt, PROMPT, direct_effects=True).last(steerings, batch_size=4)
    for row, ivs in zip(out, steerings, strict=True):
        _close(row, steer(model, clt, PROMPT, ivs, direct_effects=True)[-1])


def _count_passes(model, monkeypatch) -> list[int]:
    """The token length of each forward pass `model` runs from now on (until `monkeypatch.undo()`)."""
    lengths: list[int] = []
    forward = model.forward

    def counting(tokens, *a, **k):
        lengths.append(tokens.shape[-1])
        return forward(tokens, *a, **k)

    monkeypatch.setattr(model, "forward", counting)
    return lengths


@pytest.mark.parametrize("mode", ["frozen", "unfrozen", "direct"])
def test_tail_passes_equal_whole_passes(setup, clt, backend, mode, monkeypatch):
    """Steerings that touch no position before p run only the positions from p, on a KV cache of the
    clean prompt before it: the same logits. HookedTransformer: the cache comes from the clean pass
    itself where frozen values are needed, and serves any start. TransformerBridge: a Hugging Face cache
    filled by a plain pass over the first p tokens, per start."""
    from tl_clt.steering import Steerer

    model, tokens, raw, _ = setup
    acts = clean_acts(model, raw, tokens)
    n = len(tokens)
    f1 = int(acts[1, -1].argmax())
    steerings = [
        [Intervention(1, -1, f1, 0.0)],
        [Intervention(0, n - 3, 11, 4.0), Intervention(2, slice(n - 2, None), 7, 1.0)],
        [Intervention(2, "generated", 7, 1.0)],  # touches nothing
        [],
    ]
    kw = dict(freeze_attention=mode == "frozen", direct_effects=mode == "direct")
    whole = Steerer(model, clt, PROMPT, **kw)
    whole.tail_passes = False
    expected = whole.last(steerings, batch_size=4)
    lengths = _count_passes(model, monkeypatch)
    got = Steerer(model, clt, PROMPT, **kw).last(steerings, batch_size=4)
    monkeypatch.undo()
    _close(got, expected)
    assert (expected[0] - expected[1]).abs().max() > 1e-3
    clean = [n] if mode != "unfrozen" else []  # the pass that gives the frozen values
    if backend == "hooked":  # one pass over the prompt (the clean one where frozen) fills the KV cache,
        assert lengths == [n, 3], lengths  # then one pass over the last 3
    else:  # a plain pass over the first n - 3 fills the cache (before the clean pass), then the last 3
        assert lengths == [n - 3, *clean, 3], lengths
    lengths = _count_passes(model, monkeypatch)
    one_by_one = Steerer(model, clt, PROMPT, **kw).last(steerings[:2], batch_size=1)
    monkeypatch.undo()
    _close(one_by_one, expected[:2])
    if backend == "hooked":  # one cache, two starts (the last token; the last 3)
        assert lengths == [n, 1, 3], lengths
    else:  # a cache per start
        assert lengths == [n - 1, *clean, 1, n - 3, 3], lengths


@pytest.mark.bridge
def test_bridge_without_a_working_cache_runs_whole_passes(model_dir, clt, monkeypatch):
    """A bridge whose attention never sees the cache (as transformer-lens' bridge under transformers 5
    without `bridge_cache_kwargs`): the prefix is refused, whole passes run, and the logits are right."""
    from contextlib import contextmanager

    from tl_clt import prefix_cache
    from tl_clt.steering import Steerer

    model = load_qwen3(model_dir, backend="bridge")
    n = len(to_tokens(model, PROMPT))
    steerings = [[Intervention(1, -1, 3, 0.0)], [Intervention(2, -1, 7, 2.0)]]
    expected = torch.stack([steer(model, clt, PROMPT, ivs)[-1] for ivs in steerings])

    @contextmanager
    def cache_dropped(model):
        def drop(module, args, kwargs):
            return args, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}

        handles = [block.attn.register_forward_pre_hook(drop, with_kwargs=True) for block in model.blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    monkeypatch.setattr(prefix_cache, "bridge_cache_kwargs", cache_dropped)
    lengths = _count_passes(model, monkeypatch)
    st = Steerer(model, clt, PROMPT)
    _close(st.last(steerings, batch_size=2), expected)
    assert not st.tail_passes
    assert lengths == [n - 1, n, n], lengths  # the refused fill, the clean pass, one whole pass


@pytest.mark.bridge
def test_bridge_tail_passes_warn_nothing(model_dir, clt):
    """Tail passes name the bridge's cache `past_key_values` (what the bridge reads); transformers 5 warns
    that the name is deprecated, once per pass, and each call's guard would show it again: silenced
    inside the guard, while the user's own passes still show it."""
    import warnings

    model = load_qwen3(model_dir, backend="bridge")
    steerings = [[Intervention(1, -1, 3, 0.0)], [Intervention(2, -1, 7, 2.0)]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl_clt.steer_many(model, clt, PROMPT, steerings, batch_size=2)
        tl_clt.steer_many(model, clt, PROMPT, steerings, batch_size=1, freeze_attention=False)
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]


def test_batched_steerings_are_all_checked_before_any_pass(setup, clt, monkeypatch):
    from tl_clt import steering

    model = setup[0]
    ran = []
    monkeypatch.setattr(steering, "run_steered", lambda *a, **k: ran.append(1))
    st = steering.Steerer(model, clt, PROMPT)
    with pytest.raises(ValueError, match="feature 99999 is out of range"):
        st.last([[Intervention(0, 1, 2, 0.0)]] * 5 + [[Intervention(0, 1, 99999, 0.0)]], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        st.last([[]], batch_size=0)
    assert ran == []
    assert st.last([]).shape == (0, model.cfg.d_vocab)


@pytest.mark.parametrize("factor", [0.0, 3.0])
def test_direct_effects_reproduce_the_graphs_logit_edges(setup, clt, graph, factor):
    """In direct-effect mode, setting a feature to k*a moves each de-meaned logit by (k-1)*edge."""
    model, _, _, clean = setup
    base = clean[-1] - clean[-1].mean()
    rows = [graph.logit_index(i) for i in range(graph.n_logits)]
    edges = graph.adjacency[rows, : graph.n_features]  # [n_logits, n_features]
    order = edges.abs().sum(0).argsort(descending=True)
    picked = order[:8].tolist() + order[-2:].tolist()  # strong and weak edges
    assert len({int(graph.feature_keys[i, 1]) for i in picked}) > 1  # several positions
    scale_ = float(edges.abs().max())
    indirect_differs = False
    for i in picked:
        key = tuple(graph.feature_keys[i].tolist())
        ivs = scale([key], factor, graph)
        out = steer(model, clt, PROMPT, ivs, direct_effects=True)[-1]
        change = (out - out.mean() - base)[graph.logit_tokens]
        _close(change, (factor - 1) * edges[:, i], scale_)
        full = steer(model, clt, PROMPT, ivs, freeze_attention=False)[-1]
        full_change = (full - full.mean() - base)[graph.logit_tokens]
        indirect_differs |= not torch.allclose(full_change, change, atol=1e-4 * scale_)
    assert indirect_differs, "direct-effect mode should differ from full steering somewhere"
    # effects add up: the model is linear in direct-effect mode
    keys = [tuple(graph.feature_keys[i].tolist()) for i in picked[:4]]
    out = steer(model, clt, PROMPT, ablate(keys), direct_effects=True)[-1]
    _close((out - out.mean() - base)[graph.logit_tokens], -edges[:, picked[:4]].sum(1), scale_)


def test_frozen_and_unfrozen_attention_differ_only_when_they_should(setup, clt):
    model, tokens, raw, clean = setup
    acts = clean_acts(model, raw, tokens)
    last = model.cfg.n_layers - 1

    def both(ivs):
        return [steer(model, clt, PROMPT, ivs, freeze_attention=fr) for fr in (True, False)]

    # last layer: nothing downstream reads attention, at any position
    for pos in (2, -1):
        f = int(acts[last, pos].argmax())
        frozen, free = both([Intervention(last, pos, f, 0.0)])
        _close(frozen, free)
        assert (frozen - clean).abs().max() > 1e-3
    # layer 0, early position: later positions' keys/values and queries change
    f = int(acts[0, 2].argmax())
    frozen, free = both([Intervention(0, 2, f, 5.0)])
    assert (frozen[-1] - free[-1]).abs().max() > 1e-3
    # causality holds either way: positions before the intervention are untouched
    _close(frozen[:2], clean[:2])
    _close(free[:2], clean[:2])
    # only the last position is steered: earlier positions' logits are exact in both modes
    frozen, free = both([Intervention(0, -1, f, 5.0)])
    _close(frozen[:-1], clean[:-1])
    _close(free[:-1], clean[:-1])


# ------------------------------------------------------------------------ helpers
def test_scale_and_ablate_accept_node_ids_and_keys(setup, clt, graph):
    model = setup[0]
    key = tuple(graph.feature_keys[0].tolist())
    node = "F:{}:{}:{}".format(*key)
    act = float(graph.activation_values[graph.selected_features[0]])
    assert scale([node], 2.0, graph) == [Intervention(*key, 2.0 * act)]
    assert scale(key, 2.0, graph) == scale([node], 2.0, graph)
    from_acts = scale([key], 2.0, tl_clt.feature_activations(model, clt, PROMPT))[0]
    assert from_acts.value == pytest.approx(2.0 * act, rel=1e-5)
    assert ablate([node, key]) == [Intervention(*key, 0.0)] * 2
    neg = (key[0], key[1] - graph.n_pos, key[2])
    assert scale([neg], 2.0, graph) == scale([key], 2.0, graph)
    with pytest.raises(KeyError, match="not active"):
        scale([(0, 0, 0)], 2.0, graph)  # position 0 (the sink) is never in a graph
    with pytest.raises(ValueError, match="error node"):
        ablate(["E:0:3"])
    with pytest.raises(ValueError, match="not a node id"):
        ablate(["F:1:2"])


def test_invalid_interventions_raise_clear_errors(setup, clt):
    model, tokens, _, _ = setup
    n = len(tokens)
    cases = [
        (Intervention(clt.n_layers, 1, 0, 0.0), "layer 3 is out of range"),
        (Intervention(-1, 1, 0, 0.0), "layer -1 is out of range"),
        (Intervention(0, 1, clt.n_features, 0.0), "feature 96 is out of range"),
        (Intervention(0, n, 0, 0.0), f"pos {n} is out of range"),
        (Intervention(0, -n - 1, 0, 0.0), "out of range"),
        (Intervention(0, 1, 0, float("nan")), "value is nan"),
        (Intervention(0, slice(None, None, -1), 0, 0.0), "step forward"),
        (Intervention(0, slice(n + 1, None), 0, 0.0), "outside a prompt"),
    ]
    for iv, message in cases:
        with pytest.raises(ValueError, match=message):
            steer(model, clt, PROMPT, [iv])
    with pytest.raises(ValueError, match="needs tokens="):
        steering_hooks(model, clt, [Intervention(0, 1, 0, 0.0)])
    hooks = steering_hooks(model, clt, [Intervention(0, 1, 0, 0.0)], tokens=tokens)
    with pytest.raises(ValueError, match="built for tokens= of"), model.hooks(fwd_hooks=hooks):
        model(tokens[:-1])
    # without frozen values, positions resolve against whatever runs; out of range is still clear
    hooks = steering_hooks(model, clt, [Intervention(0, 5, 0, 0.0)], freeze_attention=False)
    with pytest.raises(ValueError, match="model ran on 3 tokens"), model.hooks(fwd_hooks=hooks):
        model(tokens[:3])


def _snapshot(model):
    return (
        {n: (len(h.fwd_hooks), len(h.bwd_hooks)) for n, h in model.hook_dict.items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        dict(model.cfg.__dict__),
        model.training,
    )


def test_nothing_is_left_behind_also_when_a_hook_raises(setup, clt, monkeypatch):
    model, tokens, _, _ = setup
    param = next(model.blocks[1].mlp.parameters())  # W_gate (HT) or gate_proj's weight (bridge)
    param.requires_grad_(False)
    try:
        before = _snapshot(model)
        assert not any(sum(v) for v in before[0].values())
        ivs = [Intervention(0, 2, 1, 0.0), Intervention(1, -1, 4, 3.0)]
        steer(model, clt, PROMPT, ivs)
        tl_clt.generate(model, clt, PROMPT, ivs, max_new_tokens=2)
        assert _snapshot(model) == before

        calls = []
        real_encode = clt.encode_features  # what the steering hooks call at each steered layer

        def encode_then_fail(x, layer, features):
            calls.append(layer)
            if layer == 1:
                raise RuntimeError("boom in layer 1")
            return real_encode(x, layer, features)

        monkeypatch.setattr(clt, "encode_features", encode_then_fail)
        for run in (
            lambda: steer(model, clt, PROMPT, ivs, freeze_attention=False),
            lambda: tl_clt.generate(model, clt, PROMPT, ivs, max_new_tokens=2),
        ):
            calls.clear()
            with pytest.raises(RuntimeError, match="boom"):
                run()
            assert calls == [0, 1]  # it failed midway, after layer 0's hook ran
            assert _snapshot(model) == before
        monkeypatch.undo()

        def user_hook(t, hook):
            raise RuntimeError("user hook")

        hooks = steering_hooks(model, clt, ivs, tokens=tokens) + [("blocks.2.hook_resid_pre", user_hook)]
        with pytest.raises(RuntimeError, match="user hook"), model.hooks(fwd_hooks=hooks):
            model(tokens)
        assert _snapshot(model) == before
    finally:
        param.requires_grad_(True)


# ------------------------------------------------------------------------ generation
def _manual_generate(model, clt, ivs, n_new, freeze):
    tokens = to_tokens(model, PROMPT)
    for _ in range(n_new):
        nxt = steer(model, clt, tokens, ivs, freeze_attention=freeze)[-1].argmax()
        tokens = torch.cat([tokens, nxt[None]])
    return tokens


def test_open_ended_slices_keep_acting_during_generate(setup, clt):
    model, tokens, _, _ = setup
    n, n_new = len(tokens), 4
    found = None
    for f in range(0, clt.n_features, 5):  # a feature whose steering of new tokens shows
        ivs = [Intervention(1, slice(3, None), f, 5.0), Intervention(0, 2, 9, 0.0)]
        out = tl_clt.generate(
            model, clt, PROMPT, ivs, max_new_tokens=n_new, stop_at_eos=False, return_type="tokens"
        )
        closed = [Intervention(1, slice(3, n), f, 5.0), Intervention(0, 2, 9, 0.0)]
        if not torch.equal(
            out,
            tl_clt.generate(
                model, clt, PROMPT, closed, max_new_tokens=n_new, stop_at_eos=False, return_type="tokens"
            ),
        ):
            found = ivs
            break
    assert found is not None, "no feature's open-ended steering changed the generation"
    assert len(out) == n + n_new
    torch.testing.assert_close(out, _manual_generate(model, clt, found, n_new, False))
    frozen = tl_clt.generate(
        model,
        clt,
        PROMPT,
        found,
        max_new_tokens=2,
        freeze_attention=True,
        stop_at_eos=False,
        return_type="tokens",
    )
    torch.testing.assert_close(frozen, _manual_generate(model, clt, found, 2, True))


def test_generate_resolves_negative_positions_against_the_prompt(setup, clt):
    model, tokens, _, _ = setup
    n = len(tokens)
    kw = dict(max_new_tokens=3, stop_at_eos=False, return_type="tokens")
    a = tl_clt.generate(model, clt, PROMPT, [Intervention(0, -1, 3, 6.0)], **kw)
    b = tl_clt.generate(model, clt, PROMPT, [Intervention(0, n - 1, 3, 6.0)], **kw)
    torch.testing.assert_close(a, b)
    text = tl_clt.generate(
        model, clt, PROMPT, [Intervention(0, n - 1, 3, 6.0)], max_new_tokens=3, stop_at_eos=False
    )
    assert text == model.tokenizer.decode(b[1:].tolist()) and text.startswith(PROMPT)
    s1, s2 = (
        tl_clt.generate(model, clt, PROMPT, [], temperature=1.0, top_k=20, seed=3, **kw) for _ in range(2)
    )
    torch.testing.assert_close(s1, s2)


def test_prediction_table(setup, clt):
    model, tokens, _, clean = setup
    after = steer(model, clt, PROMPT, [Intervention(1, -1, 4, 8.0)])
    table = tl_clt.prediction_table(model, clean, after, k=4)
    p0, p1 = torch.softmax(clean[-1], -1), torch.softmax(after[-1], -1)
    assert [t.token_id for t in table.before] == p0.topk(4).indices.tolist()
    assert [t.token_id for t in table.after] == p1.topk(4).indices.tolist()
    for t in table.after:
        assert t.prob == pytest.approx(float(p1[t.token_id]))
        assert t.other_prob == pytest.approx(float(p0[t.token_id]))
    text = str(table)
    assert len(text.splitlines()) == 2 + 4
    assert f"{table.after[0].prob:.3f}" in text and repr(table.after[0].token) in text
    html = table._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 5
