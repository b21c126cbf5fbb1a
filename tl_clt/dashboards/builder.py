"""Build feature dashboards for any CLT from a corpus, in the format circuit-tracer's frontend reads.

One call does everything (streams the corpus, resumes from its checkpoint, writes the files):

    tl_clt.build_feature_dashboards(model, clt, texts, "out/features", max_docs=100_000)

The same work in shards, for an engine that runs them on several workers (each shard a document range
of one corpus; states merge exactly, `merge(A, B)` == one run over A + B):

    from tl_clt.dashboards import DashboardConfig, DashboardState, build_state, shard_ranges, open_corpus
    from tl_clt.dashboards import write_dashboards
    corpus = open_corpus("corpus.jsonl", column="text")      # picklable: path, list or Dataset
    config = DashboardConfig(context_len=64, batch_size=32)
    ranges = shard_ranges(n_docs, n_shards)                   # [(start, stop), ...]
    states = [build_state(model, clt, corpus, config, start=a, stop=b) for a, b in ranges]  # on workers
    state = DashboardState.merge_all(states)                  # or a.merge(b), in any order
    write_dashboards(state, model, clt, corpus, "out/features")

`build_state(..., checkpoint=path)` saves the state there every `checkpoint_every` seconds and at the end,
and starts from it when it exists (an interrupted shard resumes). `DashboardState.save/load` move states
between processes without pickle. Contexts: each document is tokenized (no special tokens), cut into
pieces of `context_len - 1` tokens and `<|endoftext|>` (the attention sink) is put in front of each; sink
and padding positions are never counted. Example windows are materialised at the end from the corpus
(documents are fetched again by index), so memory stays bounded by the number of features.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_clt import files
from tl_clt.dashboards.corpus import Corpus, open_corpus
from tl_clt.dashboards.format import (
    INDEX_FILE,
    LayerWriter,
    encode_index,
    layer_filename,
)
from tl_clt.dashboards.state import PIECE_BITS, DashboardConfig, DashboardState, same_info
from tl_clt.sites import Sites

MANIFEST_FILE = "dashboards.json"
CHECKPOINT_DIR = ".checkpoint"


# ------------------------------------------------------------------------ model side
def _clt_fingerprint(clt) -> str:
    """Identity of a CLT that does not depend on where it was loaded from (its shapes and encoder biases)."""
    digest = hashlib.sha1(clt.b_enc.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    return f"{clt.n_layers}x{clt.n_features}x{clt.d_model}:{digest}"


def _info(model, clt) -> dict:
    return {"model": str(model.cfg.model_name or ""), "clt": _clt_fingerprint(clt)}


def _check_inputs(model, clt, config: DashboardConfig) -> Sites:
    """The model's Sites, once the model, the CLT and the settings fit together."""
    from tl_clt.hooks import check_compatible

    sites = check_compatible(model, clt)
    if model.tokenizer is None:
        raise ValueError(
            "The model has no tokenizer; dashboards tokenize text. Set one with model.set_tokenizer(...)."
        )
    if config.context_len > model.cfg.n_ctx:
        raise ValueError(
            f"context_len {config.context_len} is longer than the model's context ({model.cfg.n_ctx}); "
            "pass a smaller context_len."
        )
    return sites


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what byte-level BPE tokens are written in) back to bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenText:
    """Token id -> text as the frontend wants it: bytes that are not whole UTF-8 become `\\xNN`."""

    def __init__(self, tokenizer):
        self.tokenizer, self._cache = tokenizer, {}
        self._bytes = _byte_decoder()

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
            if isinstance(piece, str) and piece and all(ch in self._bytes for ch in piece):
                if piece in getattr(self.tokenizer, "all_special_tokens", ()):
                    text = piece
                else:
                    text = bytes(self._bytes[ch] for ch in piece).decode("utf-8", errors="backslashreplace")
            else:
                text = self.tokenizer.decode([int(token_id)])
            self._cache[token_id] = text
        return text


def _sink_id(model) -> int:
    from tl_clt.prompts import sink_token_id

    return sink_token_id(model)


# ------------------------------------------------------------------------ contexts and batches
def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _docs_tokens(corpus: Corpus, tokenizer, start: int, stop: int | None, chunk: int = 64):
    """(doc index, token ids) of documents start..stop, tokenized `chunk` at a time."""
    buffer: list[tuple[int, str]] = []
    for item in corpus.iter_docs(start, stop):
        buffer.append(item)
        if len(buffer) == chunk:
            yield from zip([i for i, _ in buffer], _tokenize(tokenizer, [t for _, t in buffer]))
            buffer = []
    yield from zip([i for i, _ in buffer], _tokenize(tokenizer, [t for _, t in buffer]))


def padded_length(n: int, context_len: int) -> int:
    """The length a context of n tokens is padded to: the next power of two >= 8, at most context_len.

    Every forward pass has the same shape for a given padded length (`batch_size` rows, unused rows
    are dummies), so a context's activations do not depend on which other contexts share its batch or
    on its row (checked bit for bit on CPU with 1 and 2 threads): shards merge exactly.
    """
    length = 8
    while length < n:
        length *= 2
    return min(length, context_len)


def _flush(buckets: dict[int, list], next_doc: int):
    items = [buckets[k] for k in sorted(buckets)]
    buckets.clear()
    for i, batch in enumerate(items or [[]]):
        yield batch, (next_doc if i == max(len(items), 1) - 1 else None)


def _batches(
    corpus: Corpus, tokenizer, sink: int, config: DashboardConfig, start: int, stop: int | None, flush_due
):
    """Batches of contexts `[(ctx id, [sink, *tokens])]` of one padded length, each with `next_doc`:
    every document before it is complete after this batch (None when some are not yet). Partly filled
    batches wait until `flush_due()` is true at a document boundary, or the end."""
    size, piece_len = config.batch_size, config.context_len - 1
    buckets: dict[int, list[tuple[int, list[int]]]] = {}
    last = start - 1
    for doc, ids in _docs_tokens(corpus, tokenizer, start, stop):
        pieces = [ids[i : i + piece_len] for i in range(0, len(ids), piece_len)]
        if doc >= 2**31:
            raise ValueError("Corpora of more than 2**31 documents are not supported; split them.")
        if len(pieces) >= 2**PIECE_BITS:
            raise ValueError(
                f"Document {doc} has {len(ids)} tokens: more than {2**PIECE_BITS - 1} contexts of "
                f"{config.context_len}; split it or raise context_len."
            )
        for p, piece in enumerate(pieces):
            tokens = [sink, *piece]
            length = padded_length(len(tokens), config.context_len)
            bucket = buckets.setdefault(length, [])
            bucket.append(((doc << PIECE_BITS) | p, tokens))
            if len(bucket) == size:
                yield buckets.pop(length), None
        last = doc
        if flush_due():
            yield from _flush(buckets, last + 1)
    yield from _flush(buckets, last + 1)


ROW_STEP = 64  # the encoders' products have a multiple of this many rows


class _Encoder:
    """A CLT's encoders for the builder: pre-activations at the counted positions only, and where
    features fire there.

    Sink, padding and dummy rows are never encoded (at the real shape the encoders cost more than the
    model). The products are written into buffers kept from batch to batch (a fresh 168 MB tensor per
    layer costs a page fault per 4 KiB, about a tenth of the product), and the JumpReLU is never applied
    to the whole tensor: the state reads an activation as `pre` where `pre > threshold`, else 0, only
    where it needs one (the values of `clt.encode`, except that a zero may be +0 for -0). A row's
    product does not depend on the other rows of the batch as long as no product takes a BLAS's
    small-matrix path (MKL sums differently below 12 rows): rows are padded to a multiple of `ROW_STEP`
    (checked bit for bit on CPU: shards merge exactly)."""

    def __init__(self, clt):
        self.clt = clt
        F = clt.n_features
        zeros = torch.zeros(clt.n_layers, F, device=clt.b_enc.device)
        self.threshold = clt.threshold if clt.threshold is not None else zeros
        self.cut = self.threshold.clamp_min(0.0)  # fires: pre > threshold and the activation > 0
        self._buffers: dict = {}

    def _buffer(self, name: str, n: int, dtype, device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def __call__(self, x: torch.Tensor, layer: int, b: torch.Tensor, t: torch.Tensor):
        """(pre-activations [n, F], fires [n, F] bool, threshold [F]) of `x[b, t]` at `layer`."""
        clt, F, n = self.clt, self.clt.n_features, len(b)
        m = -(-max(n, 1) // ROW_STEP) * ROW_STEP
        rows = self._buffer("rows", m * x.shape[-1], x.dtype, x.device).view(m, x.shape[-1])
        torch.index_select(x.reshape(-1, x.shape[-1]), 0, (b * x.shape[1] + t).to(x.device), out=rows[:n])
        rows[n:] = 0.0
        pre = self._buffer("pre", m * F, x.dtype, x.device).view(m, F)
        torch.mm(rows, clt.W_enc[layer].to(x.device, x.dtype).T, out=pre)
        pre = pre[:n].add_(clt.b_enc[layer].to(x.device, x.dtype))  # as clt.pre_activations
        fires = self._buffer("fires", pre.numel(), torch.bool, x.device).view(len(b), F)
        torch.gt(pre, self.cut[layer].to(x.device, x.dtype), out=fires)
        return pre.cpu(), fires.cpu(), self.threshold[layer].to(x.dtype).cpu()


def _run_batch(
    model,
    encoder: _Encoder,
    sites: Sites,
    state: DashboardState,
    batch: list[tuple[int, list[int]]],
    pad: int,
) -> int:
    """Forward one batch through the model (to the last layer) and the CLT encoders; update the state.

    The batch is filled up to `batch_size` rows with dummy contexts (one token, never counted)."""
    device = model.cfg.device
    rows = state.config.batch_size
    lengths = torch.ones(rows, dtype=torch.long)
    lengths[: len(batch)] = torch.tensor([len(ids) for _, ids in batch])
    width = padded_length(int(lengths.max()), state.config.context_len)
    tokens = torch.full((rows, width), pad, dtype=torch.long)
    for i, (_, ids) in enumerate(batch):
        tokens[i, : len(ids)] = torch.tensor(ids)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    invalid = ~mask
    invalid[:, 0] = True
    invalid[len(batch) :] = True
    ctx = torch.full((rows,), -1, dtype=torch.int64)
    ctx[: len(batch)] = torch.tensor([c for c, _ in batch], dtype=torch.int64)

    clt = encoder.clt
    counted = (~invalid).nonzero(as_tuple=True)

    def make_hook(layer: int):
        def hook_fn(value, *, hook):
            x = sites.to_clt_input(model, clt.feature_input_hook, layer, value)
            pre, fires, threshold = encoder(x, layer, *counted)
            state.update_layer(layer, pre, ctx, lengths, threshold=threshold, fires=fires, positions=counted)
            return value

        return hook_fn

    hooks = [
        (sites.clt_input_hook(clt.feature_input_hook, layer), make_hook(layer))
        for layer in range(clt.n_layers)
    ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens.to(device), attention_mask=mask.long().to(device), stop_at_layer=model.cfg.n_layers)
    n = int((~invalid).sum())
    state.n_tokens += n
    return n


# ------------------------------------------------------------------------ shards
def shard_ranges(n_docs: int, n_shards: int) -> list[tuple[int, int]]:
    """`n_shards` contiguous document ranges covering 0..n_docs (sizes differ by at most one)."""
    if n_docs < 1 or n_shards < 1:
        raise ValueError(f"Need n_docs >= 1 and n_shards >= 1, got {n_docs}, {n_shards}.")
    n_shards = min(n_shards, n_docs)
    cuts = [round(i * n_docs / n_shards) for i in range(n_shards + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _resume(path: Path, config: DashboardConfig, info: dict, start: int) -> DashboardState:
    state = DashboardState.load(path)
    problems = []
    if state.config != config:
        problems.append(f"settings {state.config.differences(config)}")
    if not same_info(state.info, info):
        problems.append(f"model/CLT {state.info} vs {info}")
    if not state.ranges or state.ranges[0][0] != start or len(state.ranges) != 1:
        problems.append(f"documents {state.ranges} (this run starts at {start})")
    if problems:
        raise ValueError(
            f"The checkpoint {path} was made by another build ({'; '.join(problems)}). Delete it, or pass "
            "resume=False to start over."
        )
    return state


def build_state(
    model,
    clt,
    texts: Any,
    config: DashboardConfig | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    column: str = "text",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 300.0,
    resume: bool = True,
    progress: bool = True,
) -> DashboardState:
    """The DashboardState of documents start..stop (None: to the end) of `texts` (see `open_corpus`).

    With `checkpoint`, the state is saved there every `checkpoint_every` seconds (at document
    boundaries) and at the end; with `resume`, an existing checkpoint of the same build is continued.
    """
    from tl_clt.hooks import preserve

    config = config or DashboardConfig()
    corpus = open_corpus(texts, column)
    sites = _check_inputs(model, clt, config)
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"Need 0 <= start <= stop, got start={start}, stop={stop}.")
    info = _info(model, clt)
    path = (
        files.check_output_path(checkpoint, what="dashboard checkpoint") if checkpoint is not None else None
    )
    if path is not None and resume and path.is_file():
        state = _resume(path, config, info, start)
    else:
        state = DashboardState(config, clt.n_layers, clt.n_features, info)
        state.ranges, state.next_doc = [[start, start]], start
    total = None
    if stop is not None:
        total = stop - start
    elif corpus.n_docs is not None:
        total = corpus.n_docs - start
    bar = tqdm(
        total=total, initial=state.next_doc - start, unit="doc", desc="dashboards", disable=not progress
    )
    sink, t0, n_tok = _sink_id(model), time.time(), 0
    last_save = [time.time()]

    def flush_due() -> bool:  # partly filled batches run only before a checkpoint
        return path is not None and time.time() - last_save[0] > checkpoint_every

    batches = _batches(corpus, model.tokenizer, sink, config, state.next_doc, stop, flush_due)
    encoder = _Encoder(clt)
    try:
        with preserve(model):
            for batch, next_doc in batches:
                if batch:
                    n_tok += _run_batch(model, encoder, sites, state, batch, sink)
                    bar.set_postfix(tok_s=f"{n_tok / max(time.time() - t0, 1e-9):.0f}", refresh=False)
                    bar.update(max((batch[-1][0] >> PIECE_BITS) - start - bar.n, 0))
                if next_doc is not None:
                    bar.update(max(next_doc - start - bar.n, 0))
                    state.next_doc, state.ranges = next_doc, [[start, next_doc]]
                    if path is not None and time.time() - last_save[0] > checkpoint_every:
                        state.save(path)
                        last_save[0] = time.time()
    finally:
        bar.close()
    if path is not None:
        state.save(path)
    return state


# ------------------------------------------------------------------------ writing
def round_sig(x: np.ndarray, digits: int = 4) -> np.ndarray:
    """Values rounded to `digits` significant digits (each the double nearest its decimal)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    nz = np.isfinite(x) & (x != 0)
    exp = digits - 1 - np.floor(np.log10(np.abs(x[nz]))).astype(np.int64)
    up = exp >= 0
    vals = x[nz]
    res = np.empty_like(vals)
    res[up] = np.round(vals[up] * 10.0 ** exp[up]) / 10.0 ** exp[up]
    res[~up] = np.round(vals[~up] / 10.0 ** (-exp[~up])) * 10.0 ** (-exp[~up])
    out[nz] = res
    return out


def round_act(x: float) -> float:
    """Activations in examples are written to 4 significant digits."""
    return float(round_sig(np.array([x]))[0])


def _output_token_ids(model, clt, layer: int, k: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """[F, k] ids of the tokens each feature's decoder (summed over the layers it writes to, times
    ln_final.w) promotes most / least through W_U: what `tl_clt.feature_output_tokens` ranks."""
    W_U, w = model.W_U.detach(), model.ln_final.w.detach()
    k = min(k, W_U.shape[1])
    tops, bottoms = [], []
    for lo in range(0, clt.n_features, chunk):
        rows = clt.decoder_rows(layer, torch.arange(lo, min(lo + chunk, clt.n_features))).sum(1)
        scores = (rows.to(W_U.device, W_U.dtype) * w) @ W_U
        tops.append(scores.topk(k).indices.cpu())
        bottoms.append(scores.topk(k, largest=False).indices.cpu())
    return torch.cat(tops), torch.cat(bottoms)


def _needed_contexts(state: DashboardState, layers: list[int]) -> set[int]:
    ctx = torch.cat(
        [torch.cat([state.top_ctx[layer].flatten(), state.res_ctx[layer].flatten()]) for layer in layers]
    )
    return set(torch.unique(ctx[ctx >= 0]).tolist())


class ContextTexts:
    """Token ids and token texts (without the sink) of the contexts the records show."""

    def __init__(self, corpus: Corpus, tokenizer, text: TokenText, contexts: set[int], piece_len: int):
        docs: dict[int, list[int]] = {}
        for ctx in contexts:
            docs.setdefault(ctx >> PIECE_BITS, []).append(ctx & (2**PIECE_BITS - 1))
        self.ids: dict[int, list[int]] = {}
        self.text, self._strs = text, {}
        order = sorted(docs)
        for lo in range(0, len(order), 256):
            part = order[lo : lo + 256]
            texts = corpus.get(part)
            for doc, ids in zip(part, _tokenize(tokenizer, [texts[d] for d in part])):
                for piece in docs[doc]:
                    self.ids[(doc << PIECE_BITS) | piece] = ids[piece * piece_len : (piece + 1) * piece_len]

    def strings(self, ctx: int) -> list[str]:
        out = self._strs.get(ctx)
        if out is None:
            out = self._strs[ctx] = [self.text(i) for i in self.ids[ctx]]
        return out


def _examples(config, contexts: ContextTexts, ctx, pos, act, win, seen: set[int]) -> list[dict]:
    """Example records of entries (ctx [n], pos [n], act [n], window [n, W] with NaN outside the
    context; act and window already rounded with `round_sig`)."""
    out = []
    offsets = np.arange(config.window) - config.before
    for i in range(len(ctx)):
        c, p = int(ctx[i]), int(pos[i])
        strs = contexts.strings(c)
        keep = ~np.isnan(win[i])
        kept_pos = (p + offsets)[keep]
        if kept_pos.max() > len(strs):
            raise ValueError(
                f"Document {c >> PIECE_BITS} has fewer tokens than when the state was built: the corpus or "
                "the tokenizer changed. Write dashboards with the corpus and model the state was built from."
            )
        acts = win[i][keep].tolist()
        center = int(p - kept_pos[0])
        acts[center] = float(act[i])
        out.append(
            {
                "tokens": strs[kept_pos[0] - 1 : kept_pos[-1]],
                "tokens_acts_list": acts,
                "train_token_ind": center,
                "is_repeated_datapoint": c in seen,
            }
        )
        seen.add(c)
    return out


class _LayerArrays:
    """One layer of a state as numpy arrays (fast per-feature access while writing)."""

    def __init__(self, state: DashboardState, layer: int):
        self.top = [state.top_act[layer].numpy(), state.top_ctx[layer].numpy(), state.top_pos[layer].numpy()]
        self.res = [state.res_act[layer].numpy(), state.res_ctx[layer].numpy(), state.res_pos[layer].numpy()]
        self.top[0], self.res[0] = round_sig(self.top[0]), round_sig(self.res[0])
        self.top_win = np.where(np.isnan(w := state.top_win[layer].float().numpy()), np.nan, round_sig(w))
        self.res_win = np.where(np.isnan(w := state.res_win[layer].float().numpy()), np.nan, round_sig(w))
        self.exact_res_act = state.res_act[layer].numpy()


def feature_record(
    state: DashboardState,
    layer: int,
    feature: int,
    contexts: ContextTexts,
    top_logits: list[str],
    bottom_logits: list[str],
    transcoder_id: str,
    arrays: _LayerArrays | None = None,
) -> dict:
    """The JSON record of one feature from a (merged) state and the tokens of its contexts."""
    c, s = state.config, state.summary(layer, feature)
    a = arrays or _LayerArrays(state, layer)
    seen: set[int] = set()
    groups = []
    act, ctx, pos = (x[feature] for x in a.top)
    n_top = int((ctx >= 0).sum())
    if n_top:
        examples = _examples(
            c, contexts, ctx[:n_top], pos[:n_top], act[:n_top], a.top_win[feature, :n_top], seen
        )
        groups.append({"quantile_name": "Top activations", "examples": examples})
    width = 2.0 ** int(state.level[layer, feature])
    fine = state.hist[layer, feature].numpy()
    n = max(int(state.n_active[layer, feature]), 1)
    for band in range(c.n_intervals - 1, -1, -1):
        act, ctx, pos = (x[feature, band] for x in a.res)
        kept = np.nonzero(ctx >= 0)[0]
        if len(kept) == 0:
            continue
        kept = kept[np.argsort(-a.exact_res_act[feature, band, kept], kind="stable")]
        lo, hi = band * state.band_width, (band + 1) * state.band_width
        share = int(fine[lo:hi].sum()) / n
        name = f"Activations {lo * width:.3g} to {hi * width:.3g} ({100 * share:.3g}% of activations)"
        examples = _examples(
            c, contexts, ctx[kept], pos[kept], act[kept], a.res_win[feature, band, kept], seen
        )
        groups.append({"quantile_name": name, "examples": examples})
    return {
        "index": feature,
        "layer": layer,
        "transcoder_id": transcoder_id,
        "examples_quantiles": groups,
        "top_logits": top_logits,
        "bottom_logits": bottom_logits,
        "act_min": s["act_min"],
        "act_max": s["act_max"],
        "quantile_values": s["quantile_values"],
        "histogram": s["histogram"],
        "activation_frequency": s["frequency"],
    }


def _layer_groups(state: DashboardState, max_contexts: int) -> Iterator[list[int]]:
    """Consecutive layers whose contexts together stay under `max_contexts` (at least one layer)."""
    group: list[int] = []
    count = 0
    for layer in range(state.n_layers):
        n = len(_needed_contexts(state, [layer]))
        if group and count + n > max_contexts:
            yield group
            group, count = [], 0
        group.append(layer)
        count += n
    if group:
        yield group


def write_dashboards(
    state: DashboardState,
    model,
    clt,
    texts: Any,
    out_dir: str | os.PathLike,
    *,
    column: str = "text",
    transcoder_id: str | None = None,
    max_contexts: int = 1_000_000,
    progress: bool = True,
) -> Path:
    """Write `index.json.gz` and `layer_{l}.bin` (and a `dashboards.json` manifest) into `out_dir`.

    `texts` must be the corpus the state was built from (documents are fetched again by index for the
    example windows), at most `max_contexts` contexts' tokens held at a time. Each file is written to
    a temp file and renamed; the index comes last, so a folder with an index is complete.
    """
    corpus = open_corpus(texts, column)
    if state.info.get("clt") != _clt_fingerprint(clt):
        raise ValueError(f"This state was built for another CLT ({state.info.get('clt')}), not this one.")
    if not state.ranges or state.n_tokens == 0:
        raise ValueError("The state has seen no tokens: build it on a non-empty corpus first.")
    out = files.check_output_folder(out_dir, what="dashboards folder")
    out.mkdir(parents=True, exist_ok=True)
    text = TokenText(model.tokenizer)
    transcoder_id = transcoder_id or str(getattr(clt, "path", None) or "clt")
    piece_len = state.config.context_len - 1
    entries: dict[int, tuple[str, list[int]]] = {}
    bar = tqdm(total=state.n_layers * state.n_features, unit="feature", desc="writing", disable=not progress)
    try:
        for layers in _layer_groups(state, max_contexts):
            contexts = ContextTexts(corpus, model.tokenizer, text, _needed_contexts(state, layers), piece_len)
            for layer in layers:
                top_ids, bottom_ids = _output_token_ids(model, clt, layer, state.config.n_logits)
                arrays = _LayerArrays(state, layer)
                writer = LayerWriter(out, layer)
                try:
                    for f in range(state.n_features):
                        tops = [text(i) for i in top_ids[f].tolist()]
                        bottoms = [text(i) for i in bottom_ids[f].tolist()]
                        record = feature_record(
                            state, layer, f, contexts, tops, bottoms, transcoder_id, arrays
                        )
                        writer.add(record)
                        bar.update()
                except BaseException as err:
                    writer.abort(err)
                    raise
                entries[layer] = (layer_filename(layer), writer.close())
    finally:
        bar.close()
    manifest = {
        "format": "circuit-tracer feature dashboards (index.json.gz + layer_{l}.bin)",
        "generator": "tl_clt.build_feature_dashboards",
        "config": state.config.to_dict(),
        "n_tokens": state.n_tokens,
        "documents": state.ranges,
        "corpus": corpus.describe(),
        "model": str(state.info.get("model") or "").rstrip("/").rsplit("/", 1)[-1],
        "clt": state.info.get("clt"),
        "transcoder_id": transcoder_id,
    }
    files.write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=1), what="dashboards manifest")
    index = encode_index([entries[layer] for layer in range(state.n_layers)])
    files.write_bytes(out / INDEX_FILE, index, what="dashboards index")
    return out
