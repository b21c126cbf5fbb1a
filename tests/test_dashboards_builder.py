"""The dashboard builder against brute force on a tiny corpus, shards merged against one run, resuming,
corpus kinds, and every record against the schemas (ours and Neuronpedia's required fields)."""

from __future__ import annotations

import gzip
import json
import math

import jsonschema
import numpy as np
import pytest
import torch

import tl_clt
from tl_clt.dashboards import (
    DashboardConfig,
    DashboardState,
    FeatureDashboards,
    build_feature_dashboards,
    build_state,
    shard_ranges,
    validate_record,
    write_dashboards,
)
from tl_clt.dashboards.builder import TokenText, padded_length, round_sig
from tl_clt.dashboards.state import LEVEL0, TENSOR_NAMES, sample_keys
from tl_clt.frozen import capture_hooks
from tl_clt.sites import sites_for

CONFIG = DashboardConfig(
    context_len=12,
    batch_size=4,
    n_top=3,
    n_intervals=4,
    n_per_interval=2,
    before=3,
    after=2,
    n_bins=8,
    bin_resolution=4,
    n_quantiles=10,
    n_logits=5,
)
SENTENCES = [
    "Fact: The president of the United States in 2010 was Barack Obama.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "In 1776 the declaration was signed; in 1969 people walked on the moon.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and words like president, king, queen, mayor.",
    "Fact: The capital of France is Paris.",
    "café naïve 東京 — ünïcödé",
]
DOCS = [SENTENCES[i % 6] * (1 + (i % 3 == 2) * 2) for i in range(17)] + ["", "cat", SENTENCES[0] * 4, "dog."]

# What Neuronpedia's graph uploader requires of feature details (its feature-details-schema.json,
# draft-07), restated here from its documented fields.
NEURONPEDIA_REQUIRED = {
    "type": "object",
    "required": ["index", "examples_quantiles"],
    "properties": {
        "index": {"type": "number"},
        "examples_quantiles": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["quantile_name", "examples"],
                "properties": {
                    "quantile_name": {"type": "string"},
                    "examples": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["tokens_acts_list", "tokens"],
                            "properties": {
                                "tokens_acts_list": {"type": "array", "items": {"type": "number"}},
                                "tokens": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
        "top_logits": {"type": "array", "items": {"type": "string"}},
        "bottom_logits": {"type": "array", "items": {"type": "string"}},
    },
}


@pytest.fixture(scope="module")
def tiny(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir)
    return model, clt


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    model, clt = tiny
    out = tmp_path_factory.mktemp("dash") / "features"
    state = build_state(model, clt, DOCS, CONFIG, progress=False)
    write_dashboards(state, model, clt, DOCS, out, progress=False)
    return state, FeatureDashboards.from_pretrained(out), out


# ------------------------------------------------------------------------ brute force
def context_activations(model, clt, toks: list[int], width: int) -> torch.Tensor:
    """[L, len(toks), F] activations of one context, run alone right-padded to `width` tokens."""
    padded = torch.tensor(toks + [toks[0]] * (width - len(toks)))[None]
    mask = (torch.arange(width) < len(toks)).long()[None]
    store: dict = {}
    with torch.no_grad(), model.hooks(fwd_hooks=capture_hooks(model, clt, sites_for(model), store)):
        model(padded, attention_mask=mask)
    return torch.stack([clt.encode(store["mlp_in"][k][0, : len(toks)], k) for k in range(clt.n_layers)])


def brute_occurrences(model, clt, docs, config):
    """Every (layer, feature, act, ctx, pos) of the corpus, one context at a time (each alone, padded
    to its length's power of two as the builder pads), plus per-context dense activations."""
    sink = model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    piece = config.context_len - 1
    occ, dense, n_tokens = [], {}, 0
    for d, text in enumerate(docs):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        for p in range(0, len(ids), piece):
            ctx = d * 2**16 + p // piece
            toks = [sink] + ids[p : p + piece]
            acts = context_activations(model, clt, toks, padded_length(len(toks), config.context_len))
            dense[ctx] = (acts, toks[1:])
            n_tokens += len(toks) - 1
            for layer, t, f in (acts[:, 1:] > 0).nonzero().tolist():
                occ.append((layer, f, float(acts[layer, t + 1, f]), ctx, t + 1))
    return occ, dense, n_tokens


def expected_record(config, occ_lf, dense, n_tokens, layer, feature, text, logits):
    """The record of one feature, computed from all its occurrences with plain Python."""
    n = len(occ_lf)
    record = {"index": feature, "layer": layer}
    if n == 0:
        record.update(
            examples_quantiles=[], act_min=0.0, act_max=0.0, quantile_values=[], histogram=[0] * config.n_bins
        )
        record["activation_frequency"] = 0.0
        record.update(logits)
        return record
    top = max(a for _, _, a, _, _ in occ_lf)
    e = LEVEL0
    while top >= config.n_fine * 2.0**e:
        e += 1
    w = 2.0**e
    fine = [math.floor(a / w) for _, _, a, _, _ in occ_lf]
    j = math.floor(top / w) // config.n_bins + 1
    hist = [sum(1 for b in fine if i * j <= b < (i + 1) * j) for i in range(config.n_bins)]
    acts_sorted = sorted(a for _, _, a, _, _ in occ_lf)
    quantiles = []
    for i in range(1, config.n_quantiles + 1):
        a = acts_sorted[math.ceil(i * n / config.n_quantiles) - 1]
        quantiles.append((math.floor(a / w) + 1) * w)
    seen: set[int] = set()

    def example(ctx, pos, act):
        acts, ids = dense[ctx]
        lo, hi = max(1, pos - config.before), min(len(ids), pos + config.after)
        window = acts[layer, lo : hi + 1, feature].to(torch.float16).float().numpy()
        values = round_sig(window).tolist()
        values[pos - lo] = float(round_sig(np.array([act]))[0])
        out = {
            "tokens": [text(i) for i in ids[lo - 1 : hi]],
            "tokens_acts_list": values,
            "train_token_ind": pos - lo,
            "is_repeated_datapoint": ctx in seen,
        }
        seen.add(ctx)
        return out

    best: dict[int, tuple] = {}
    for _, _, a, ctx, pos in occ_lf:  # each context's best token (first position on ties)
        if ctx not in best or a > best[ctx][0]:
            best[ctx] = (a, pos)
    tops = sorted(((-a, ctx, pos) for ctx, (a, pos) in best.items()))[: config.n_top]
    groups = [{"quantile_name": "Top activations", "examples": [example(c, p, -na) for na, c, p in tops]}]
    bw = config.n_fine // config.n_intervals
    for band in range(config.n_intervals - 1, -1, -1):
        members = [(a, ctx, pos) for (_, _, a, ctx, pos), b in zip(occ_lf, fine) if b // bw == band]
        if not members:
            continue
        keys = sample_keys(
            config.seed,
            layer,
            torch.tensor([feature] * len(members)),
            torch.tensor([c for _, c, _ in members]),
            torch.tensor([p for _, _, p in members]),
        ).tolist()
        sample = sorted(
            zip(keys, [c for _, c, _ in members], [p for _, _, p in members], [a for a, _, _ in members])
        )
        sample = sorted(sample[: config.n_per_interval], key=lambda s: -s[3])
        share = sum(1 for b in fine if b // bw == band) / n
        lo, hi = band * bw * w, (band + 1) * bw * w
        name = f"Activations {lo:.3g} to {hi:.3g} ({100 * share:.3g}% of activations)"
        groups.append({"quantile_name": name, "examples": [example(c, p, a) for _, c, p, a in sample]})
    record.update(
        examples_quantiles=groups,
        act_min=0.0,
        act_max=config.n_bins * j * w,
        quantile_values=quantiles,
        histogram=hist,
        activation_frequency=n / n_tokens,
    )
    record.update(logits)
    return record


def test_builder_equals_brute_force(tiny, built):
    model, clt = tiny
    state, dash, _ = built
    occ, dense, n_tokens = brute_occurrences(model, clt, DOCS, CONFIG)
    assert state.n_tokens == n_tokens and len(occ) > 1000
    for acts, ids in list(dense.values())[:5]:  # padding changes activations by rounding only
        alone = tl_clt.feature_activations(model, clt, ids).to_dense()
        torch.testing.assert_close(alone[:, 1:], acts[:, 1:], atol=1e-5, rtol=1e-5)
    assert sum(len(v[1]) > CONFIG.context_len - 1 for v in dense.values()) == 0
    assert len({c >> 16 for c in dense}) < len(dense)  # some documents span several contexts
    text = TokenText(model.tokenizer)
    by_feature: dict[tuple[int, int], list] = {}
    for o in occ:
        by_feature.setdefault((o[0], o[1]), []).append(o)
    checked = {"dead": 0, "groups": 0}
    for layer in range(clt.n_layers):
        for feature in range(clt.n_features):
            ranked = tl_clt.feature_output_tokens(model, clt, layer, feature, k=CONFIG.n_logits)
            bottom = tl_clt.feature_output_tokens(
                model, clt, layer, feature, k=CONFIG.n_logits, largest=False
            )
            logits = {
                "top_logits": [text(t.token_id) for t in ranked],
                "bottom_logits": [text(t.token_id) for t in bottom],
            }
            want = expected_record(
                CONFIG, by_feature.get((layer, feature), []), dense, n_tokens, layer, feature, text, logits
            )
            got = dash.record(layer, feature)
            assert got.pop("transcoder_id")
            assert got == want, (layer, feature)
            checked["dead"] += not want["examples_quantiles"]
            checked["groups"] += len(want["examples_quantiles"])
    assert checked["groups"] > 3 * clt.n_layers * clt.n_features  # most features have several groups


def test_every_record_validates(built):
    _, dash, _ = built
    schema_np = jsonschema.Draft7Validator(NEURONPEDIA_REQUIRED)
    for layer in range(dash.n_layers):
        for feature in range(dash.n_features[layer]):
            record = dash.record(layer, feature)
            validate_record(record)
            schema_np.validate(record)


def test_the_index_is_what_the_frontend_reads(built):
    _, dash, out = built
    index = json.loads(gzip.decompress((out / "index.json.gz").read_bytes()))
    assert [e["filename"] for e in index] == [f"layer_{i}.bin" for i in range(3)]
    for entry in index:
        data = (out / entry["filename"]).read_bytes()
        assert entry["offsets"][0] == 0 and entry["offsets"][-1] == len(data) and len(entry["offsets"]) == 97
        start, end = entry["offsets"][5], entry["offsets"][6]
        n = int.from_bytes(data[start : start + 4], "little")
        assert n == end - start - 4  # 4-byte length, then exactly the zlib body


def test_shards_merge_exactly(tiny, built):
    model, clt = tiny
    whole, _, _ = built
    parts = [
        build_state(model, clt, DOCS, CONFIG, start=a, stop=b, progress=False)
        for a, b in [(0, 5), (5, 13), (13, 21)]
    ]
    for merged in (
        parts[0].merge(parts[1]).merge(parts[2]),
        parts[2].merge(parts[0].merge(parts[1])),
        DashboardState.merge_all(parts),
    ):
        assert_states_equal(merged, whole)
    assert shard_ranges(21, 3) == [(0, 7), (7, 14), (14, 21)]
    with pytest.raises(ValueError, match="The states overlap"):
        parts[0].merge(parts[0])
    other = build_state(model, clt, DOCS[:3], DashboardConfig(context_len=12, batch_size=4), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        other.merge(parts[1])


def assert_states_equal(a: DashboardState, b: DashboardState) -> None:
    assert a.ranges == b.ranges and a.n_tokens == b.n_tokens and a.config == b.config
    for name in TENSOR_NAMES:  # every tensor a state saves
        x, y = getattr(a, name), getattr(b, name)
        if name.endswith("_win"):  # bit for bit, NaNs included
            x, y = x.view(torch.int16), y.view(torch.int16)
        assert torch.equal(x, y), name


def test_resume_after_an_interruption(tiny, built, tmp_path, monkeypatch):
    import tl_clt.dashboards.builder as builder

    model, clt = tiny
    whole, _, _ = built
    real_run, calls = builder._run_batch, []

    def interrupted_run(*args):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_run(*args)

    ckpt = tmp_path / "state.safetensors"
    monkeypatch.setattr(builder, "_run_batch", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        build_state(model, clt, DOCS, CONFIG, checkpoint=ckpt, checkpoint_every=0.0, progress=False)
    monkeypatch.setattr(builder, "_run_batch", real_run)
    saved = DashboardState.load(ckpt)
    assert 0 < saved.next_doc < len(DOCS) and saved.ranges == [[0, saved.next_doc]]
    resumed = build_state(model, clt, DOCS, CONFIG, checkpoint=ckpt, progress=False)
    assert_states_equal(resumed, whole)
    with pytest.raises(ValueError, match="was made by another build"):
        build_state(model, clt, DOCS, DashboardConfig(context_len=12), checkpoint=ckpt, progress=False)


def test_corpus_kinds_give_the_same_state(tiny, built, tmp_path):
    import datasets

    model, clt = tiny
    whole, _, _ = built
    (tmp_path / "c.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS), encoding="utf-8")
    sources = [
        (tmp_path / "c.txt", "text"),
        (str(tmp_path / "c.jsonl"), "body"),
        (iter(DOCS), "text"),  # one-shot: spilled to disk
        (tuple(DOCS), "text"),
        (datasets.Dataset.from_dict({"body": DOCS}), "body"),
    ]
    for texts, column in sources:
        state = build_state(model, clt, texts, CONFIG, column=column, progress=False)
        assert_states_equal(state, whole)


def test_build_feature_dashboards_all_in_one(tiny, built, tmp_path):
    model, clt = tiny
    _, dash, _ = built
    out = tmp_path / "features"
    got = build_feature_dashboards(model, clt, iter(DOCS), out, config=CONFIG, progress=False)
    assert not (out / ".checkpoint").exists()
    assert sorted(p.name for p in out.iterdir()) == ["dashboards.json", "index.json.gz"] + [
        f"layer_{i}.bin" for i in range(3)
    ]
    for layer, feature in [(0, 0), (1, 50), (2, 95)]:
        assert got.record(layer, feature) == dash.record(layer, feature)
    assert json.loads((out / "dashboards.json").read_text())["n_tokens"] == built[0].n_tokens


def test_state_files_round_trip(built, tmp_path):
    state = built[0]
    state.save(tmp_path / "s.safetensors")
    assert_states_equal(DashboardState.load(tmp_path / "s.safetensors"), state)
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match="not a readable dashboard state"):
        DashboardState.load(tmp_path / "junk.safetensors")


def test_token_text_escapes_partial_bytes(tiny):
    model, _ = tiny
    text = TokenText(model.tokenizer)
    ids = model.tokenizer("café 東京 dog", add_special_tokens=False)["input_ids"]
    pieces = [text(i) for i in ids]
    joined = "".join(pieces)
    # whole characters come out as text; split multi-byte characters as \xNN the frontend re-joins
    raw = b"".join(
        bytes.fromhex(p[2:]) if p.startswith("\\x") and len(p) == 4 else p.encode() for p in pieces
    )
    assert raw.decode("utf-8") == "café 東京 dog" or "\\x" not in joined
    assert text(model.tokenizer.convert_tokens_to_ids("<|endoftext|>")) == "<|endoftext|>"


@pytest.mark.bridge
def test_a_transformer_bridge_builds_the_same_state(tiny, model_dir):
    """The builder reads the CLT inputs through the model's Sites: on a TransformerBridge of the same
    checkpoint the counts and histograms are equal, the top activations equal to float error, and the
    top examples the same contexts but where two contexts tie (a repeated sentence gives the same
    token the same activation in several contexts; float error may pick either)."""
    model, clt = tiny
    docs = DOCS[:6]
    ours = build_state(model, clt, docs, CONFIG, progress=False)
    bridge = build_state(tl_clt.load_qwen3(model_dir, backend="bridge"), clt, docs, CONFIG, progress=False)
    assert ours.n_tokens == bridge.n_tokens > 0
    for name in ("level", "hist", "n_active"):
        assert torch.equal(getattr(bridge, name), getattr(ours, name)), name
    torch.testing.assert_close(bridge.top_act, ours.top_act, rtol=1e-4, atol=1e-5)
    listed = ours.top_ctx >= 0
    same = (bridge.top_ctx == ours.top_ctx) & (bridge.top_pos == ours.top_pos)
    assert listed.sum() > 100 and (~same & listed).sum() <= 0.01 * listed.sum()


def test_update_from_pre_activations_equals_update_from_activations():
    """The builder's path (pre-activations at the counted positions only, JumpReLU read where needed)
    gives the state that masked activations over the whole batch give, windows included; thresholds
    below zero too (there a small negative activation is kept in windows but never counted)."""
    torch.manual_seed(0)
    B, T, F = 5, 12, 40
    pre = torch.randn(B, T, F) * 2
    threshold = torch.rand(F) * 2 - 0.3  # some thresholds < 0
    acts = pre.masked_fill(pre <= threshold, 0.0)
    lengths = torch.tensor([12, 7, 3, 1, 9])
    ctx = torch.tensor([0, 1, 2, -1, 3 << 16])
    pos = torch.arange(T)[None, :]
    valid = (pos >= 1) & (pos < lengths[:, None])
    positions = valid.nonzero(as_tuple=True)
    dense, compact, given = (DashboardState(CONFIG, 2, F) for _ in range(3))
    for layer in range(2):
        dense.update_layer(layer, acts * (layer + 1), ctx, lengths)
        rows, cut = pre[positions] * (layer + 1), threshold * (layer + 1)
        compact.update_layer(layer, rows, ctx, lengths, threshold=cut, positions=positions)
        fires = rows > cut.clamp_min(0.0)
        given.update_layer(layer, rows, ctx, lengths, threshold=cut, fires=fires, positions=positions)
    assert int(dense.n_active.sum()) == int(((acts > 0) & valid[..., None]).sum()) * 2 > 0
    assert bool((threshold < 0).any()) and bool(((acts < 0) & valid[..., None]).any())
    assert torch.isfinite(dense.top_win.float()).any()
    for state in (compact, given):
        assert_states_equal(state, dense)
    with pytest.raises(ValueError, match="goes with `positions`"):
        dense.update_layer(0, acts, ctx, lengths, fires=acts > 0)
