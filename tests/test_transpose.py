"""The explicit transposed pass (tl_clt.transpose) against autograd through the hooked model."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT

import tl_clt
from tl_clt.attribution import FrozenRows, LinearReplacement, find_active_features
from tl_clt.frozen import clean_pass
from tl_clt.influence import PartialInfluence, normalize_rows, partial_influence
from tl_clt.prompts import to_tokens
from tl_clt.transpose import Sweep, default_compute_dtype


@pytest.fixture(scope="module")
def world(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    tokens = to_tokens(model, PROMPT)
    state = clean_pass(model, clt, tokens)
    active = find_active_features(clt, state)
    lin = LinearReplacement(model, clt, state, active, batch_size=8)
    lin.run_forward()
    return model, clt, state, active, lin


def _autograd_rows(lin, sites, positions, readouts):
    return torch.cat(
        [
            lin.rows(sites[i : i + 8], positions[i : i + 8], readouts[i : i + 8])
            for i in range(0, len(sites), 8)
        ]
    )


@pytest.mark.parametrize(
    "budget, one_sweep_per_batch, band_rows, by_target, gather_below",
    [
        (0, True, 64, False, 48),
        (1 << 30, True, 64, True, 48),
        (1 << 30, False, 1, True, 48),
        (1 << 30, False, 1, True, 0),
        (1 << 30, False, 10, True, 48),
        ("bf16", False, 10, True, 48),
        ("bf16", True, 64, True, 48),
        (1 << 30, False, 10, False, 48),
        (0, False, 1000, False, 48),
    ],
)
def test_rows_equal_autograd_rows(
    world, budget, one_sweep_per_batch, band_rows, by_target, gather_below, monkeypatch
):
    """Every feature row and the logit rows match autograd (GQA model; any decoder budget; one or many
    sub-batches per sweep; bands of one sub-batch, of several, or one band, their columns gathered into one
    product or not; decoder rows as matrices per target layer built once, in the compute dtype or, with a
    budget that only fits the bf16 rows, in bf16 cast a few rows at a time; or as the storage dtype's cache
    / reads cast per sweep)."""
    from tl_clt import transpose
    from tl_clt.transpose import DecoderByTarget, layouts

    monkeypatch.setattr(transpose, "GATHER_BELOW_WIDTH", gather_below)
    model, clt, state, active, lin = world
    if not by_target:  # as when the matrices would not fit the budget
        monkeypatch.setattr(DecoderByTarget, "bytes_needed", staticmethod(lambda *a: 1 << 62))
    if budget == "bf16":  # room for the bf16 matrices, not the float32 ones
        lays = layouts(active.index, clt.n_layers)
        budget = DecoderByTarget.bytes_needed(lays, clt.n_layers, clt.d_model, torch.bfloat16)
        assert DecoderByTarget.bytes_needed(lays, clt.n_layers, clt.d_model, torch.float32) > budget
        monkeypatch.setattr(transpose, "CAST_ROWS", 3)
    cast_blocks, cast = [], transpose.cast_row_blocks  # rows of each block cast from bf16 matrices

    def spied(*args, **kwargs):
        for r0, block in cast(*args, **kwargs):
            cast_blocks.append(len(block))
            yield r0, block

    monkeypatch.setattr(transpose, "cast_row_blocks", spied)
    fr = FrozenRows(model, clt, state, batch_size=5, compute_dtype=None, decoder_cache_bytes=budget)
    # the reconstruction (built here) reads bf16 matrices CAST_ROWS rows at a time, never cast whole
    bf16 = fr.by_target is not None and fr.by_target.dtype == torch.bfloat16
    assert bf16 <= (len(cast_blocks) > 0 and max(cast_blocks) <= 3)
    assert (fr.by_target is not None) == by_target
    if by_target:
        assert fr.by_target.dtype == (torch.bfloat16 if budget < (1 << 30) else torch.float32)
        assert fr.by_target.compute_dtype == torch.float32
    if one_sweep_per_batch:
        fr.edges.gradient_bytes = 1
    fr.edges.band_rows = band_rows
    if budget == 0:
        fr.edges.block_bytes = 1  # one position per decoder block
    assert model.cfg.n_key_value_heads < model.cfg.n_heads
    assert fr.active.index.equal(active.index)
    torch.testing.assert_close(fr.active.reconstruction, active.reconstruction, atol=1e-6, rtol=1e-5)
    idx = active.index
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))
    idx = idx[perm]
    ours = torch.zeros(len(idx), fr.n_sources)
    gathered = 0
    column_index = Sweep.column_index

    def counted(self, *args):
        nonlocal gathered
        gathered += 1
        return column_index(self, *args)

    monkeypatch.setattr(Sweep, "column_index", counted)
    fr.fill_rows(idx[:, 0], idx[:, 1], fr.feature_readout(idx[:, 0], idx[:, 1], idx[:, 2]), out=ours)
    # many bands in a sweep: their columns above a layer are gathered into one product
    assert (gathered > 0) == (not one_sweep_per_batch and band_rows <= 10 and gather_below > 0)
    ref = _autograd_rows(lin, idx[:, 0], idx[:, 1], lin.feature_readout(idx[:, 0], idx[:, 1], idx[:, 2]))
    scale = ref.abs().max()
    assert scale > 0 and (ours != 0).any()
    torch.testing.assert_close(ours, ref, atol=2e-6 * float(scale), rtol=0)
    W_U = model.W_U.detach()
    directions = (W_U[:, :4] - W_U.mean(1, keepdim=True)).T
    ours = torch.zeros(4, fr.n_sources)
    n, last = torch.full((4,), clt.n_layers), torch.full((4,), len(state.tokens) - 1)
    fr.fill_rows(n, last, fr.logit_readout(directions), out=ours)
    ref = lin.rows(n, last, lin.logit_readout(directions))
    torch.testing.assert_close(ours, ref, atol=2e-6 * float(ref.abs().max()), rtol=0)
    assert (fr.decoder_bytes_cached == 0) == (budget == 0)


def test_compute_dtype_leaves_the_model_alone_and_float64_agrees(model_dir, clt):
    """compute_dtype changes the arithmetic only: float64 rows agree with float32 ones to float32 precision,
    and the model keeps its dtype and parameters."""
    model = tl_clt.load_qwen3(model_dir, backend=None)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    g32 = tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, verbose=False)
    g64 = tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, verbose=False, compute_dtype=torch.float64)
    assert g32.meta["compute_dtype"] == "float32" and g64.meta["compute_dtype"] == "float64"
    scale = g64.adjacency.abs().max()
    torch.testing.assert_close(g32.adjacency, g64.adjacency, atol=1e-5 * float(scale), rtol=0)
    assert all(v.dtype == torch.float32 and v.equal(before[k]) for k, v in model.named_parameters())


def test_bf16_model_computes_in_float32_on_cpu(model_dir, clt):
    """A bf16 model on a CPU is attributed in float32 by default, closer to float64 than bf16 arithmetic."""
    model = tl_clt.load_qwen3(model_dir, dtype=torch.bfloat16, backend=None)
    kw = dict(max_n_logits=3, verbose=False)
    auto = tl_clt.attribute(model, clt, PROMPT, **kw)
    bf16 = tl_clt.attribute(model, clt, PROMPT, compute_dtype=torch.bfloat16, **kw)
    f64 = tl_clt.attribute(model, clt, PROMPT, compute_dtype=torch.float64, **kw)
    assert auto.meta["compute_dtype"] == "float32"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    err_auto = (auto.adjacency - f64.adjacency).abs().max()
    err_bf16 = (bf16.adjacency - f64.adjacency).abs().max()
    assert err_auto < 1e-5 * f64.adjacency.abs().max() < err_bf16


def test_default_compute_dtype_is_float32_on_every_device():
    """float32 unless the model is float64, whatever the device (a bf16 model on a GPU included: there bf16
    arithmetic measured no faster, benchmarks/README.md "GPU"); the function takes no device to consult."""
    for model_dtype, expected in [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        assert default_compute_dtype(model_dtype) == expected


@pytest.mark.parametrize("block_rows", [1, 2, 1000])
def test_reconstruction_of_bf16_rows_cast_in_blocks(monkeypatch, block_rows):
    """`reconstruction` from rows stored in bf16 (cast a block of rows at a time: 1 row, 2 rows with a
    part-filled last block, all at once) equals the float64 sum over features of activation x decoder
    row, plus b_dec, to float32's rounding."""
    from types import SimpleNamespace

    import tl_clt.clt
    import tl_clt.transpose as transpose

    gen = torch.Generator().manual_seed(5)
    L, d, n_pos, F = 3, 8, 4, 9
    b_dec = torch.randn(L, d, generator=gen)
    acts = [torch.relu(torch.randn(n_pos, F, generator=gen)) for _ in range(L)]
    lays, rows = [], {}
    for k in range(L):
        unique = torch.tensor([0, 2, 3, 5, 8])[: 5 - k]  # 5, 4, 3 features: odd counts for 2-row blocks
        lays.append(SimpleNamespace(layer=k, unique=unique))
        rows[k] = torch.randn(len(unique), L - k, d, generator=gen).to(torch.bfloat16)
    decoder = SimpleNamespace(fill=lambda consume: [consume(lay, rows[lay.layer]) for lay in lays])
    clt = SimpleNamespace(n_layers=L, d_model=d, b_dec=b_dec)
    monkeypatch.setattr(tl_clt.clt, "CAST_BLOCK_BYTES", block_rows * L * d * 4)
    ours = transpose.reconstruction(clt, acts, decoder, n_pos, torch.float32)
    ref = b_dec.double()[:, None, :].expand(L, n_pos, d).clone()
    for lay in lays:
        a = acts[lay.layer][:, lay.unique].double()  # [pos, u]
        for i in range(len(lay.unique)):
            ref[lay.layer :] += a[:, i][None, :, None] * rows[lay.layer][i].double()[:, None, :]
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)


def _influence_step_by_step(rows, logit_probs, row_nodes, n_sources):
    """The definition: propagate the weights through the whole normalised rows, step by step."""
    A = normalize_rows(rows)
    weight = torch.zeros(len(rows))
    weight[: len(logit_probs)] = logit_probs
    is_feature = row_nodes < n_sources
    total = torch.zeros(n_sources)
    for _ in range(len(rows) + 1):
        step = weight @ A
        if not step.any():
            return total
        total += step
        weight = torch.zeros(len(rows))
        weight[is_feature] = step[row_nodes[is_feature]]
    raise AssertionError("no convergence")


def test_partial_influence_equals_the_step_by_step_definition():
    gen = torch.Generator().manual_seed(1)
    n_sources, n_logits = 40, 3
    feature_nodes = torch.randperm(30, generator=gen)[:12]
    rows = torch.randn(n_logits + 12, n_sources, generator=gen)
    rows[n_logits:, feature_nodes] *= torch.rand(12, 12, generator=gen) < 0.3  # sparse feature-feature part
    # acyclic: a feature row only reads features visited before it
    order = torch.arange(12)
    rows[n_logits:, feature_nodes] *= (order[None, :] < order[:, None]).float()
    row_nodes = torch.cat([torch.arange(n_logits) + n_sources, feature_nodes])
    probs = torch.tensor([0.5, 0.3, 0.2])
    ref = _influence_step_by_step(rows, probs, row_nodes, n_sources)
    assert (ref[feature_nodes] > 0).sum() > 3
    seven_rows = 7 * 4 * n_sources  # the sum taken 7 rows at a time
    chunked = partial_influence(rows, probs, row_nodes, n_sources, chunk_bytes=seven_rows)
    torch.testing.assert_close(chunked, ref)
    ours = partial_influence(rows, probs, row_nodes, n_sources, rows.abs().sum(1))
    torch.testing.assert_close(ours, ref)


def _growing_rows(seed: int, n_logits: int = 3, n_feature_rows: int = 20, n_sources: int = 60):
    """Rows as attribution fills them: logit rows, then feature rows in visiting order, each feature
    reading only features of lower layers (5 layers; a DAG). Returns rows, row_nodes, n_sources and
    each row's layer (the logit rows' above all)."""
    gen = torch.Generator().manual_seed(seed)
    feature_nodes = torch.randperm(n_sources - 10, generator=gen)[:n_feature_rows]
    rows = torch.randn(n_logits + n_feature_rows, n_sources, generator=gen)
    layer = torch.randint(0, 5, (n_feature_rows,), generator=gen)
    rows[n_logits:, feature_nodes] *= (layer[None, :] < layer[:, None]).float()
    rows[n_logits:, feature_nodes] *= torch.rand(n_feature_rows, n_feature_rows, generator=gen) < 0.6
    row_nodes = torch.cat([torch.arange(n_logits) + n_sources, feature_nodes])
    return rows, row_nodes, n_sources, torch.cat([torch.full((n_logits,), 5), layer])


def test_partial_influence_kept_between_refreshes_equals_the_definition_at_each():
    """The tracker keeps B between calls and reads only new rows and columns: at every refresh (rows
    growing by uneven steps, in chunks of 5 rows for the sum) it equals the step-by-step definition
    on the rows so far, also after it is given other rows or another dtype (it starts again)."""
    rows, row_nodes, n_sources, _ = _growing_rows(2)
    probs = torch.tensor([0.5, 0.3, 0.2])
    tracker = PartialInfluence(n_sources, chunk_bytes=5 * 4 * n_sources)
    for r in (3, 4, 9, 10, 17, 23):
        ref = _influence_step_by_step(rows[:r], probs, row_nodes[:r], n_sources)
        torch.testing.assert_close(tracker(rows[:r], probs, row_nodes[:r], rows[:r].abs().sum(1)), ref)
    assert tracker._BT.shape[0] >= 23 and tracker._seen == 23
    other, other_nodes, _, _ = _growing_rows(3)
    ref = _influence_step_by_step(other[:12], probs, other_nodes[:12], n_sources)
    torch.testing.assert_close(tracker(other[:12], probs, other_nodes[:12]), ref)
    # a stale B would give the first rows' answer here: the check against the definition fails then
    assert not torch.allclose(ref, _influence_step_by_step(rows[:12], probs, row_nodes[:12], n_sources))
    # rows in another dtype: B starts again in that dtype
    as_double = tracker(other[:12].double(), probs.double(), other_nodes[:12])
    assert as_double.dtype == torch.float64 and tracker._BT.dtype == torch.float64
    torch.testing.assert_close(as_double.float(), ref)
    # sized once when the number of rows is known
    sized = PartialInfluence(n_sources, capacity=23)
    sized(rows[:3], probs, row_nodes[:3])
    assert sized._BT.shape == (23, 23)


@pytest.mark.parametrize("break_order", [False, True])
def test_partial_influence_solved_layer_by_layer_equals_the_definition(break_order):
    """Given the rows' layers, the tracker solves from the top layer down (one pass over B) and
    equals the step-by-step definition at every refresh; when an edge between two features of one
    layer shows up (a CLT could not make it), it notices, goes step by step from then on, and still
    equals the definition."""
    rows, row_nodes, n_sources, layers = _growing_rows(4)
    probs = torch.tensor([0.5, 0.3, 0.2])
    if break_order:  # the last row reads an earlier row's feature of its own layer (still a DAG)
        same = (layers[3:22] == layers[22]).nonzero()[:, 0] + 3
        assert len(same)  # row 22 comes in at the last refresh: the order breaks there
        rows[22, row_nodes[int(same[-1])]] = 0.7
    tracker = PartialInfluence(n_sources)
    solved_by_layers = []
    for r in (3, 8, 14, 23):
        ref = _influence_step_by_step(rows[:r], probs, row_nodes[:r], n_sources)
        assert (ref[row_nodes[3:r]] > 0).sum() >= min(r - 3, 3)
        got = tracker(rows[:r], probs, row_nodes[:r], row_layers=layers[:r])
        torch.testing.assert_close(got, ref)
        solved_by_layers.append(tracker.layered)
    assert solved_by_layers == ([True, True, True, False] if break_order else [True] * 4)


def test_graphs_refresh_influence_layer_by_layer_and_select_as_step_by_step(model_dir, clt, monkeypatch):
    """In a real graph every refresh is solved layer by layer (no edge breaks the CLT's layer order),
    and the features visited are those the step-by-step sum visits, with the same edges."""
    import tl_clt.attribution as attribution

    model = tl_clt.load_qwen3(model_dir, backend=None)
    kw = dict(max_feature_nodes=25, update_interval=1, batch_size=4, max_n_logits=3, verbose=False)
    fast = tl_clt.attribute(model, clt, PROMPT, **kw)
    assert fast.meta["influence_by_layers"] is True
    assert fast.n_features == 25 < len(fast.active_features)

    class StepByStep(PartialInfluence):
        def __call__(self, rows, logit_probs, row_nodes, abs_sums=None, row_layers=None):
            return super().__call__(rows, logit_probs, row_nodes, abs_sums)  # layers not given

    monkeypatch.setattr(attribution, "PartialInfluence", StepByStep)
    slow = tl_clt.attribute(model, clt, PROMPT, **kw)
    assert slow.meta["influence_by_layers"] is False
    assert torch.equal(fast.selected_features, slow.selected_features)
    torch.testing.assert_close(fast.adjacency, slow.adjacency, rtol=0, atol=0)
    every = tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, verbose=False)
    assert every.meta["influence_by_layers"] is None


@pytest.fixture(scope="module")
def engines_model(model_dir, backend):
    return tl_clt.load_qwen3(model_dir, backend=backend)


def _targets(model, clt):
    """One target of every kind: a token, a logit difference, a Direction, an active feature."""
    g = tl_clt.attribute(model, clt, PROMPT, max_n_logits=2, verbose=False)
    a, b = g.logit_tokens.tolist()[:2]
    W_U = model.W_U.detach()
    mass = g.adjacency[: g.n_features].abs().sum(1)
    feature = tuple(g.feature_keys[int(mass.argmax())].tolist())
    direction = tl_clt.Direction(
        "random", torch.randn(W_U.shape[0], generator=torch.Generator().manual_seed(3))
    )
    return [a, tl_clt.logit_diff(a, b), direction, feature]


@pytest.mark.parametrize("kind", ["top logits", "every target kind", "max_feature_nodes"])
def test_transposed_graph_equals_autograd_graph(engines_model, clt, kind):
    """Whole graphs of both engines agree (every row, the visiting order with max_feature_nodes), on both
    backends and for every target kind."""
    model = engines_model
    kw = dict(max_n_logits=3, verbose=False, batch_size=7)
    if kind == "every target kind":
        kw["targets"] = _targets(model, clt)
    if kind == "max_feature_nodes":
        kw.update(max_feature_nodes=20, update_interval=1)
    ours = tl_clt.attribute(model, clt, PROMPT, engine="transposed", **kw)
    ref = tl_clt.attribute(model, clt, PROMPT, engine="autograd", **kw)
    assert ours.meta["engine"] == "transposed" and ref.meta["engine"] == "autograd"
    assert ours.selected_features.equal(ref.selected_features) and ours.n_features > 5
    assert ours.logit_token_strs == ref.logit_token_strs
    scale = float(ref.adjacency.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours.adjacency, ref.adjacency, atol=2e-6 * scale, rtol=0)


def test_user_hooks_run_on_the_autograd_engine(model_dir, clt):
    """A model with forward hooks of the user's: 'auto' falls back to autograd (the hooks are part of the
    graph, as on main), 'transposed' refuses and names the hooks; nothing is left behind."""
    model = tl_clt.load_qwen3(model_dir, backend=None)

    def double(tensor, *, hook):
        return 2 * tensor

    model.add_hook("blocks.1.hook_attn_out", double)
    try:
        with pytest.warns(tl_clt.UserHookWarning):
            g = tl_clt.attribute(model, clt, PROMPT, max_n_logits=2, verbose=False)
        assert g.meta["engine"] == "autograd" and g.meta["user_hooks"] == ["blocks.1.hook_attn_out"]
        with pytest.warns(tl_clt.UserHookWarning), pytest.raises(ValueError, match="blocks.1.hook_attn_out"):
            tl_clt.attribute(model, clt, PROMPT, max_n_logits=2, verbose=False, engine="transposed")
        assert len(model.hook_dict["blocks.1.hook_attn_out"].fwd_hooks) == 1
    finally:
        model.reset_hooks()
    plain = tl_clt.attribute(model, clt, PROMPT, max_n_logits=2, verbose=False)
    assert plain.meta["engine"] == "transposed"
    # the hook doubles attention 1's output: the graph of the hooked model differs
    assert plain.adjacency.shape != g.adjacency.shape or not torch.allclose(plain.adjacency, g.adjacency)


def test_engine_option_is_checked(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    with pytest.raises(ValueError, match="engine must be one of"):
        tl_clt.attribute(model, clt, PROMPT, engine="fast", verbose=False)
    with pytest.raises(ValueError, match="decoder_cache_bytes"):
        tl_clt.attribute(model, clt, PROMPT, decoder_cache_bytes=-1, verbose=False)


def test_the_sweep_buffer_is_what_buffer_bytes_says(world):
    """The gradient buffer G a run of rows allocates equals the sweep part of `buffer_bytes` (n_sources=0
    leaves out the edge rows and the influence matrix), for a sweep of 4 sub-batches and for fewer rows: it
    is allocated once at every layer, also when the rows' sites stop below the top layer."""
    from tl_clt.transpose import buffer_bytes

    model, clt, state, active, _ = world
    fr = FrozenRows(model, clt, state, batch_size=3, compute_dtype=None, decoder_cache_bytes=0)
    fr.edges.gradient_bytes = 1  # sweeps of 4 sub-batches
    top, last = clt.n_layers - 1, len(state.tokens) - 1
    for n in (20, 5):  # more rows than one sweep, then fewer
        sites, positions = torch.full((n,), top), torch.full((n,), last)
        readouts = torch.randn(n, model.cfg.d_model)
        fr.edges.scratch = type(fr.edges.scratch)()
        fr.fill_rows(sites, positions, readouts, out=torch.zeros(n, fr.n_sources))
        G = fr.edges.scratch._buffers["G"]
        expected = buffer_bytes(
            n_pos=len(state.tokens), n_layers=clt.n_layers, d_model=model.cfg.d_model, n_sources=0, n_rows=n,
            batch_size=3, dtype=fr.dtype, gradient_bytes=1,
        )  # fmt: skip
        assert G.numel() * G.element_size() == expected


def test_the_default_decoder_budget_leaves_room_for_the_graphs_buffers(world, monkeypatch):
    """With no decoder_cache_bytes, the budget is half of the available memory beyond what the rows,
    influence and a sweep's gradients will take, at most 8 GiB."""
    from tl_clt import attribution, transpose

    model, clt, state, active, _ = world
    monkeypatch.setattr(transpose, "available_bytes", lambda device: 10 << 30)
    assert transpose.default_decoder_cache_bytes("cpu") == 5 << 30
    assert transpose.default_decoder_cache_bytes("cpu", 4 << 30) == 3 << 30
    # what the graph's workspace holds already is available to it
    assert transpose.default_decoder_cache_bytes("cpu", 4 << 30, reusable_bytes=2 << 30) == 4 << 30
    assert transpose.default_decoder_cache_bytes("cpu", 11 << 30) == 0
    monkeypatch.setattr(transpose, "available_bytes", lambda device: 100 << 30)
    assert transpose.default_decoder_cache_bytes("cpu", 1 << 30) == 8 << 30
    seen = []
    monkeypatch.setattr(
        attribution, "default_decoder_cache_bytes", lambda d, r, reusable_bytes: seen.append(r) or 1 << 30
    )
    graph = tl_clt.attribute(
        model, clt, PROMPT, max_feature_nodes=7, max_n_logits=3, batch_size=4, verbose=False
    )
    n_active, P, L = int(graph.meta["n_active_features"]), len(state.tokens), clt.n_layers
    n_sources, n_rows = n_active + (L + 1) * P, 3 + 7
    per_row = P * L * model.cfg.d_model * 4  # float32 compute on CPU
    sweep_rows = min(n_rows, max(4 * 4, transpose.GRADIENT_BYTES // per_row))  # 4 sub-batches of 4 rows
    assert seen == [sweep_rows * per_row + 2 * n_rows * n_sources * 4]


def _ideal_flops_by_hand(cfg, active_index, sites, positions) -> tuple[int, int]:
    """benchmarks/README.md's FLOP count, row by row: the VJP through the layers at and below the target
    (W_O^T, W_V^T; the causal pattern), the decoder contractions of every active feature below the target
    at or before its position, errors and tokens (d_model per source)."""
    L, d, H, Hkv, dh = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    feats = active_index.tolist()
    total = decoder = 0
    for s, q in zip(sites, positions, strict=True):
        P = q + 1
        vjp = (min(s, L - 1) + 1) * (2 * P * d * dh * (H + Hkv) + H * dh * P * (P + 1))
        dec = sum(2 * d * (s - k) for k, p, _ in feats if k < s and p <= q)
        total += vjp + dec + 2 * d * P * (min(s, L) + 1)
        decoder += dec
    return total, decoder


def test_the_ideal_flop_count_is_the_documented_formula(world, model_dir, clt):
    """The roofline's numerator (`graph.meta["row_flops"]`, benchmarks/README.md) equals the formula counted
    by hand: for any rows, and for a whole graph (every feature row once, plus the logit rows)."""
    model, clt, state, active, _ = world
    fr = FrozenRows(model, clt, state, batch_size=5, compute_dtype=None, decoder_cache_bytes=None)
    gen = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(active.index), generator=gen)[:40]
    sites = active.index[pick, 0].tolist() + [model.cfg.n_layers] * 3
    positions = active.index[pick, 1].tolist() + [len(state.tokens) - 1, 0, 3]
    got = fr.edges.row_flops(torch.tensor(sites), torch.tensor(positions))
    assert got == _ideal_flops_by_hand(model.cfg, active.index, sites, positions)
    graph = tl_clt.attribute(model, clt, PROMPT, verbose=False)
    rows = graph.active_features[graph.selected_features]
    n = len(graph.logit_tokens)
    sites = rows[:, 0].tolist() + [model.cfg.n_layers] * n
    positions = rows[:, 1].tolist() + [graph.n_pos - 1] * n
    total, decoder = _ideal_flops_by_hand(model.cfg, graph.active_features, sites, positions)
    assert (graph.meta["row_flops"], graph.meta["row_flops_decoder"]) == (total, decoder)
    assert 0 < decoder < total


def _contraction_flops(fr, sites, positions, readouts) -> tuple[int, int]:
    """(FLOPs the decoder contraction's products did, its ideal part of `row_flops`) for these rows."""
    done = 0
    addmm_ = torch.Tensor.addmm_

    def counted(self, a, b, **kw):
        nonlocal done
        done += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return addmm_(self, a, b, **kw)

    before = fr.edges.stats.flops_decoder
    torch.Tensor.addmm_ = counted
    try:
        fr.fill_rows(sites, positions, readouts, out=torch.zeros(len(sites), fr.n_sources))
    finally:
        torch.Tensor.addmm_ = addmm_
    return done, fr.edges.stats.flops_decoder - before


@pytest.mark.parametrize("band_rows", [1, 1000])
def test_the_contraction_multiplies_no_zeros_of_rows_at_one_position(world, band_rows):
    """Rows at one position (the real shape's case: every selected feature at the last token) are contracted
    with exactly their ideal FLOPs, whatever their sites: G's columns are by site within a band, so each
    (position, target layer) multiplies only the rows above it. Rows at many positions do at least that."""
    model, clt, state, active, _ = world
    fr = FrozenRows(model, clt, state, batch_size=3, compute_dtype=None, decoder_cache_bytes=1 << 30)
    fr.edges.band_rows = band_rows
    gen = torch.Generator().manual_seed(2)
    n, last = 23, len(state.tokens) - 1
    sites = torch.randint(1, clt.n_layers + 1, (n,), generator=gen)
    readouts = torch.randn(n, model.cfg.d_model, generator=gen)
    done, ideal = _contraction_flops(fr, sites, torch.full((n,), last), readouts)
    assert len(set(sites.tolist())) > 2 and ideal > 0 and done == ideal
    positions = torch.randint(1, last + 1, (n,), generator=gen)
    done, ideal = _contraction_flops(fr, sites, positions, readouts)
    assert ideal > 0 and done >= ideal


@pytest.mark.parametrize(
    "by_target, band_rows", [(True, 1), (True, 1000), ("bf16", 1), (False, 1), (False, 1000)]
)
def test_rows_for_some_features_equal_the_full_rows_there_and_zero_elsewhere(
    world, by_target, band_rows, monkeypatch
):
    """`features=` (the graph's last rows, whose other feature columns nobody reads) gives the full rows'
    values in those features' columns and in every error and token column, exact zeros in the other features'
    columns, and counts only the kept features' contractions as ideal FLOPs (the formula over them)."""
    from tl_clt import transpose
    from tl_clt.transpose import DecoderByTarget, layouts

    model, clt, state, active, _ = world
    budget = 1 << 30
    if not by_target:
        monkeypatch.setattr(DecoderByTarget, "bytes_needed", staticmethod(lambda *a: 1 << 62))
    if by_target == "bf16":  # matrices in bf16, cast 3 rows at a time
        lays = layouts(active.index, clt.n_layers)
        budget = DecoderByTarget.bytes_needed(lays, clt.n_layers, clt.d_model, torch.bfloat16)
        monkeypatch.setattr(transpose, "CAST_ROWS", 3)
    fr = FrozenRows(model, clt, state, batch_size=4, compute_dtype=None, decoder_cache_bytes=budget)
    assert (fr.by_target is not None) == bool(by_target)
    assert by_target != "bf16" or fr.by_target.dtype == torch.bfloat16
    fr.edges.band_rows = band_rows
    gen = torch.Generator().manual_seed(4)
    n_active = len(active.index)
    rows = torch.randperm(n_active, generator=gen)[:17]
    idx = active.index[rows]
    readouts = fr.feature_readout(idx[:, 0], idx[:, 1], idx[:, 2])
    full = torch.zeros(len(idx), fr.n_sources)
    fr.fill_rows(idx[:, 0], idx[:, 1], readouts, out=full)
    kept = torch.sort(torch.randperm(n_active, generator=gen)[: n_active // 3]).values
    before = fr.edges.stats.flops_decoder
    part = torch.full((len(idx), fr.n_sources), float("nan"))
    fr.fill_rows(idx[:, 0], idx[:, 1], readouts, out=part, features=kept)
    others = torch.ones(fr.n_sources, dtype=torch.bool)
    others[kept] = False
    others[n_active:] = False
    assert (full[:, kept] != 0).sum() > 10 and (full[:, others] != 0).any()
    torch.testing.assert_close(part[:, kept], full[:, kept], atol=1e-6 * float(full.abs().max()), rtol=0)
    assert part[:, n_active:].equal(full[:, n_active:])
    assert (part[:, others] == 0).all()
    _, decoder = _ideal_flops_by_hand(model.cfg, active.index[kept], idx[:, 0].tolist(), idx[:, 1].tolist())
    assert fr.edges.stats.flops_decoder - before == decoder > 0


def test_decoder_matrices_are_the_same_from_float32_and_bf16_rows(world, clt_dir):
    """`DecoderByTarget` gathers rows already in the compute dtype straight into place (an eager float32 CLT)
    and casts rows kept in bf16 (a lazy one, read compact): the same matrices, entry for entry, and each
    entry is W_dec_k[f, t - k] of its feature (checked against the CLT's own rows)."""
    from tl_clt.clt import CrossLayerTranscoder

    model, lazy, state, _, _ = world
    eager = CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32, lazy_decoder=False)
    assert lazy.decoder_rows(0, torch.tensor([0]), compact=True).dtype == torch.bfloat16
    assert eager.decoder_rows(0, torch.tensor([0]), compact=True).dtype == torch.float32
    built = [
        FrozenRows(model, c, state, batch_size=4, compute_dtype=None, decoder_cache_bytes=1 << 30).by_target
        for c in (lazy, eager)
    ]
    assert all(b is not None for b in built)
    mats = [torch.cat([m for per_pos in b.mats for m in per_pos]) for b in built]
    assert mats[0].shape == mats[1].shape and len(mats[0]) > 50
    assert mats[0].equal(mats[1])
    bt = built[1]
    for q, entries in enumerate(bt.entries):
        for lay, e, c, off in entries:
            features = lay.features[e : e + c]
            for t in range(lay.layer, bt.n_layers):
                want = eager.decoder_rows(lay.layer, features)[:, t - lay.layer]
                assert bt.mats[q][t][off : off + c].equal(want)
