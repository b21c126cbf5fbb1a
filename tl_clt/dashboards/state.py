"""DashboardState: the builder's bounded, exactly mergeable summary of a corpus, per CLT feature.

For every feature of every layer (memory grows with the number of features, never with the corpus):
- `n_active`: tokens where it is non-zero; `n_tokens` (shared): tokens seen (sink and padding excluded);
- `hist`: counts of its non-zero activations in `n_fine = n_bins * bin_resolution` bins of width
  `2**level` (bin i holds [i, i+1) * 2**level). `level` is the smallest power of two, at least
  `LEVEL0`, that holds the largest activation; when it rises, bins are summed pairwise. Bins are
  floor(act * 2**-level) in exact float arithmetic, so the counts do not depend on the order of the data;
- `top_*`: the `n_top` contexts with the highest activation, one example per context (its most active
  token), ordered by (activation desc, context id, position);
- `res_*`: per activation interval (`n_intervals` equal slices of the bins), a bottom-k sample of its
  occurrences by a hash key of (seed, layer, feature, context, position): a uniform random sample that
  depends only on the data, not on how it was split;
- `*_win`: the feature's activations on the window around each kept example (float16; NaN outside
  the context), so no second forward pass is needed.
Sums, maxima and "the k smallest under a total order" are associative and commutative, so
`a.merge(b)` equals the state of one run over both shards' documents, bit for bit, as long as the
model gives each context the same activations in both runs. The builder sees to that by running
every context in a forward pass of a fixed shape for its padded length (`builder.padded_length`);
checked bit for bit on CPU (1 and 2 threads). On hardware where that does not hold, merged states
differ from one run only by that float rounding.

Context ids are `doc * 2**16 + piece` (a document longer than `context_len - 1` tokens is split into
pieces; position 0 of every context is the `<|endoftext|>` attention sink and is never counted).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_clt import files

STATE_FORMAT = "tl_clt.DashboardState/1"
EMPTY_KEY = 2**62
LEVEL0 = -40
PIECE_BITS = 16
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class DashboardConfig:
    """What the builder keeps per feature and how it reads the corpus (all sizes are counts).

    context_len: tokens per context, the sink included (longer documents are split);
    batch_size: contexts per forward pass; n_top: top examples (one per context);
    n_intervals / n_per_interval: activation intervals and examples sampled from each;
    before / after: tokens shown before / after the chosen token; n_bins: histogram bins;
    bin_resolution: finer bins kept per histogram bin (the histogram's upper end is within
    `1 + 2 / (bin_resolution - 2)` of the largest activation); n_quantiles: length of `quantile_values`;
    n_logits: top / bottom output tokens; seed: of the interval samples.
    """

    context_len: int = 64
    batch_size: int = 32
    n_top: int = 20
    n_intervals: int = 8
    n_per_interval: int = 5
    before: int = 16
    after: int = 8
    n_bins: int = 32
    bin_resolution: int = 8
    n_quantiles: int = 100
    n_logits: int = 10
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{f.name} must be an int, got {value!r}.")
            low = 0 if f.name in ("before", "after", "seed", "n_per_interval") else 1
            if f.name == "context_len":
                low = 2
            if value < low:
                raise ValueError(f"{f.name} must be at least {low}, got {value}.")
        if self.n_fine % self.n_intervals:
            raise ValueError(
                f"n_intervals ({self.n_intervals}) must divide n_bins * bin_resolution ({self.n_fine})."
            )
        if self.bin_resolution < 4:
            raise ValueError(f"bin_resolution must be at least 4, got {self.bin_resolution}.")

    @property
    def n_fine(self) -> int:
        return self.n_bins * self.bin_resolution

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DashboardConfig:
        return cls(**data)

    def differences(self, other: DashboardConfig) -> dict:
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# ------------------------------------------------------------------------ helpers
def hash32(x: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """A 32-bit integer mix (int64 in, int64 in [0, 2**32) out); no overflow in int64 arithmetic."""
    x = x & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def sample_keys(seed: int, layer: int, feature: Tensor, ctx: Tensor, pos: Tensor) -> Tensor:
    """The sampling key of each occurrence (feature, context, position) at `layer`."""
    x = hash32(torch.full_like(ctx, (seed * 1_000_003 + layer) & _M32))
    x = hash32(x ^ (ctx & _M32))
    x = hash32(x ^ (ctx >> 32))
    x = hash32(x ^ feature)
    return hash32(x ^ pos.long())


def float_order(x: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
    """int64 in [0, 2**32) that orders as the float32 values do (no NaN)."""
    i = x.float().view(torch.int32).long()
    return (i ^ ((i >> 31) & 0x7FFFFFFF)) + 2**31  # negative floats: flip the magnitude bits


def select_per_group(major: Tensor, minor: Tensor, group_shift: int, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the first `k` entries of every group under the order (major, minor), and their rank;
    the group is `major >> group_shift`. (Two stable sorts of int64 keys.)"""
    order = torch.sort(minor, stable=True).indices
    order = order[torch.sort(major[order], stable=True).indices]
    g = major[order] >> group_shift
    n = len(g)
    is_start = torch.ones(n, dtype=torch.bool)
    is_start[1:] = g[1:] != g[:-1]
    idx = torch.arange(n)
    start = torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), 0).values
    rank = idx - start
    keep = rank < k
    return order[keep], rank[keep]


def levels_needed(max_act: Float[Tensor, " n"], n_fine: int) -> Int[Tensor, " n"]:
    """Smallest integer e with max_act < n_fine * 2**e (for max_act > 0)."""
    m = max_act.double().clamp(min=1e-300)
    e = torch.floor(torch.log2(m / n_fine)).long() + 1
    e = torch.where(m >= n_fine * torch.pow(2.0, e.double()), e + 1, e)
    return torch.where(m < n_fine * torch.pow(2.0, (e - 1).double()), e - 1, e)


def fine_bins(act: Tensor, level: Tensor, n_fine: int) -> Tensor:
    """floor(act * 2**-level), exact (a power-of-two scaling), clamped to the last bin."""
    scaled = torch.ldexp(act.double(), -level.double())
    return scaled.floor().long().clamp(0, n_fine - 1)


# ------------------------------------------------------------------------ the state
TENSOR_NAMES = (  # every tensor a state holds, saves and merges
    "level",
    "hist",
    "n_active",
    "top_act",
    "top_ctx",
    "top_pos",
    "top_win",
    "res_key",
    "res_act",
    "res_ctx",
    "res_pos",
    "res_win",
)


class DashboardState:
    """Per-feature statistics of the documents in `ranges` (see the module docstring).

    Tensors are stacked over layers: `level` [L, F], `hist` [L, F, n_fine], `n_active` [L, F],
    `top_{act,ctx,pos}` [L, F, n_top], `top_win` [L, F, n_top, window], `res_{key,act,ctx,pos}`
    [L, F, n_intervals, n_per_interval], `res_win` [..., window]. `ranges`: the [start, stop) document
    ranges covered; `next_doc`: where a running shard goes on; `info`: model and CLT names.
    With the default config a state takes 5.2 KB per feature (2.8 GiB for 28 x 20480 features).
    """

    def __init__(self, config: DashboardConfig, n_layers: int, n_features: int, info: dict | None = None):
        c = config
        self.config, self.n_layers, self.n_features = c, n_layers, n_features
        self.info = dict(info or {})
        self.n_tokens = 0
        self.ranges: list[list[int]] = []
        self.next_doc: int | None = None
        L, F, W = n_layers, n_features, c.window
        self.level = torch.full((L, F), LEVEL0, dtype=torch.int32)
        self.hist = torch.zeros(L, F, c.n_fine, dtype=torch.int32)
        self.n_active = torch.zeros(L, F, dtype=torch.int64)
        self.top_act = torch.zeros(L, F, c.n_top)
        self.top_ctx = torch.full((L, F, c.n_top), -1, dtype=torch.int64)
        self.top_pos = torch.zeros(L, F, c.n_top, dtype=torch.int32)
        self.top_win = torch.full((L, F, c.n_top, W), float("nan"), dtype=torch.float16)
        shape = (L, F, c.n_intervals, c.n_per_interval)
        self.res_key = torch.full(shape, EMPTY_KEY, dtype=torch.int64)
        self.res_act = torch.zeros(shape)
        self.res_ctx = torch.full(shape, -1, dtype=torch.int64)
        self.res_pos = torch.zeros(shape, dtype=torch.int32)
        self.res_win = torch.full((*shape, W), float("nan"), dtype=torch.float16)

    def __repr__(self) -> str:
        return (
            f"DashboardState({self.n_layers} layers x {self.n_features} features, {self.n_tokens} tokens, "
            f"documents {self.ranges})"
        )

    @property
    def band_width(self) -> int:
        return self.config.n_fine // self.config.n_intervals

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in TENSOR_NAMES)

    # ---------------------------------------------------------------- one batch
    def update_layer(
        self,
        layer: int,
        acts: Float[Tensor, "batch pos n_features"] | Float[Tensor, "n n_features"],
        ctx: Int[Tensor, " batch"],
        lengths: Int[Tensor, " batch"],
        valid: Bool[Tensor, "batch pos"] | None = None,
        *,
        threshold: Float[Tensor, " n_features"] | None = None,
        fires: Bool[Tensor, "n n_features"] | None = None,
        positions: tuple[Int[Tensor, " n"], Int[Tensor, " n"]] | None = None,
    ) -> None:
        """Add one layer's activations of a batch of contexts. Only positions where `valid` is true
        count (default: 1 <= pos < lengths[b]; position 0 is the attention sink).

        The builder's path: `positions` (b, t) [n] are the counted positions and `acts` [n, F] holds
        the values there only (in (b, t) order); with `threshold`, `acts` are pre-activations and a
        feature's activation is `acts` where `acts > threshold`, else 0 (the masked tensor is never
        written); `fires` [n, F]: where the activation is positive, if the caller has it already."""
        c = self.config
        if positions is None:
            if fires is not None:
                raise ValueError("`fires` [n, F] goes with `positions` (the counted positions); pass both.")
            n_batch, n_pos = acts.shape[:2]
            if valid is None:
                pos = torch.arange(n_pos)[None, :]
                valid = (pos >= 1) & (pos < lengths[:, None])
            positions = valid.nonzero(as_tuple=True)
            acts = acts[positions]
        else:
            n_batch, n_pos = len(lengths), int(lengths.max())
        if fires is None:
            fires = acts > (0.0 if threshold is None else threshold.clamp_min(0.0))
        row, f = fires.nonzero(as_tuple=True)
        if len(f) == 0:
            return
        b, t = positions[0][row], positions[1][row]
        values = acts[row, f].float()
        batch_max = torch.zeros(self.n_features).scatter_reduce_(0, f, values, "amax")
        fired = (batch_max > 0).nonzero().squeeze(-1)
        need = levels_needed(batch_max[fired], c.n_fine).to(torch.int32)
        rise = need > self.level[layer, fired]
        if rise.any():
            self._raise_levels(layer, fired[rise], need[rise])
        self.n_active[layer] += torch.bincount(f, minlength=self.n_features)
        bins = fine_bins(values, self.level[layer, f], c.n_fine)
        flat, where = self.hist[layer].view(-1), f * c.n_fine + bins
        flat.scatter_add_(0, where, torch.ones_like(bins, dtype=flat.dtype))
        if int(flat[where].max()) > 2**31 - 2**24:
            raise OverflowError(
                "A histogram bin passed 2**31 - 2**24 counts; build on fewer tokens per state."
            )
        row_of = torch.zeros(n_batch, n_pos, dtype=torch.int64)
        row_of[positions] = torch.arange(len(positions[0]))
        batch = _Batch(acts, row_of, lengths, threshold)
        self._sample_batch(layer, batch, ctx, b, t, f, values, bins)
        self._top_batch(layer, batch, ctx, b, t, f, values)

    def _window(self, batch: _Batch, b: Tensor, t: Tensor, f: Tensor) -> Tensor:
        """[n, window] float16 activations of feature f around (b, t); NaN outside the context."""
        c = self.config
        pos = t[:, None] + torch.arange(-c.before, c.after + 1)
        outside = (pos < 1) | (pos >= batch.lengths[b][:, None])
        rows = batch.row_of[b[:, None], pos.clamp_(0, batch.row_of.shape[1] - 1)]
        vals = batch.acts.reshape(-1)[rows * batch.acts.shape[1] + f[:, None]]
        if batch.threshold is not None:
            vals = torch.where(vals > batch.threshold[f][:, None], vals, 0.0)
        vals = vals.float().clamp_(-65504.0, 65504.0).to(torch.float16)
        return vals.masked_fill_(outside, float("nan"))

    def _sample_batch(self, layer, batch, ctx, b, t, f, values, bins) -> None:
        c = self.config
        band = bins // self.band_width
        key = sample_keys(c.seed, layer, f, ctx[b], t)
        threshold = self.res_key[layer, f, band, -1]
        keep = key <= threshold
        if not keep.any():
            return
        b, t, f, band, key, values = b[keep], t[keep], f[keep], band[keep], key[keep], values[keep]
        win = _Windows(self, batch, b, t, f)  # made only for the occurrences that are kept
        self._insert_samples(layer, f, key, values, ctx[b], t.to(torch.int32), win)

    def _top_batch(self, layer, batch, ctx, b, t, f, values) -> None:
        """Each context's best token per feature (the first on ties) is offered to the top examples."""
        key = b * self.n_features + f
        size = len(ctx) * self.n_features
        best = torch.zeros(size).scatter_reduce_(0, key, values, "amax")
        cand = (values == best[key]) & (values >= self.top_act[layer, f, -1])
        if not cand.any():
            return
        idx = cand.nonzero().squeeze(-1)
        first = torch.full((size,), 2**62, dtype=torch.long).scatter_reduce_(0, key[idx], t[idx], "amin")
        idx = idx[t[idx] == first[key[idx]]]
        b, t, f = b[idx], t[idx], f[idx]
        win = _Windows(self, batch, b, t, f)  # made only for the examples that are kept
        self._insert_top(layer, f, values[idx], ctx[b], t.to(torch.int32), win)

    # ---------------------------------------------------------------- kept examples
    def _insert_top(self, layer, f, act, ctx, pos, win) -> None:
        """Offer entries to the top examples of their features; keep the n_top best of each. `win`: the
        entries' windows, a tensor or a `_Windows` (made for the kept entries only)."""
        feats = torch.unique(f)
        old_ctx = self.top_ctx[layer, feats]
        fi, ki = (old_ctx >= 0).nonzero(as_tuple=True)
        group = torch.cat([feats[fi], f])
        act = torch.cat([self.top_act[layer, feats][fi, ki], act])
        ctx = torch.cat([old_ctx[fi, ki], ctx])
        pos = torch.cat([self.top_pos[layer, feats][fi, ki], pos])
        major = (group << 32) | float_order(-act)  # (feature, activation desc)
        kept, rank = select_per_group(major, (ctx << 16) | pos.long(), 32, self.config.n_top)
        win = _kept_windows(self.top_win[layer, feats][fi, ki], win, kept)
        self.top_act[layer, feats] = 0.0
        self.top_ctx[layer, feats] = -1
        self.top_pos[layer, feats] = 0
        self.top_win[layer, feats] = float("nan")
        g = group[kept]
        self.top_act[layer, g, rank] = act[kept]
        self.top_ctx[layer, g, rank] = ctx[kept]
        self.top_pos[layer, g, rank] = pos[kept]
        self.top_win[layer, g, rank] = win

    def _insert_samples(self, layer, f, key, act, ctx, pos, win) -> None:
        """Offer occurrences to the interval samples (interval from act at the current level)."""
        c = self.config
        band = fine_bins(act, self.level[layer, f], c.n_fine) // self.band_width
        group = f * c.n_intervals + band
        touched = torch.unique(group)
        tf, tb = touched // c.n_intervals, touched % c.n_intervals
        old_key = self.res_key[layer, tf, tb]
        gi, ki = (old_key != EMPTY_KEY).nonzero(as_tuple=True)
        tf_i, tb_i = tf[gi], tb[gi]
        group = torch.cat([touched[gi], group])
        key = torch.cat([old_key[gi, ki], key])
        act = torch.cat([self.res_act[layer, tf_i, tb_i, ki], act])
        ctx = torch.cat([self.res_ctx[layer, tf_i, tb_i, ki], ctx])
        pos = torch.cat([self.res_pos[layer, tf_i, tb_i, ki], pos])
        kept, rank = select_per_group((group << 32) | key, (ctx << 16) | pos.long(), 32, c.n_per_interval)
        win = _kept_windows(self.res_win[layer, tf_i, tb_i, ki], win, kept)
        self._clear_samples(layer, tf, tb)
        g = group[kept]
        gf, gb = g // c.n_intervals, g % c.n_intervals
        self.res_key[layer, gf, gb, rank] = key[kept]
        self.res_act[layer, gf, gb, rank] = act[kept]
        self.res_ctx[layer, gf, gb, rank] = ctx[kept]
        self.res_pos[layer, gf, gb, rank] = pos[kept]
        self.res_win[layer, gf, gb, rank] = win

    def _clear_samples(self, layer, feats, bands=None) -> None:
        index = (layer, feats) if bands is None else (layer, feats, bands)
        self.res_key[index] = EMPTY_KEY
        self.res_act[index] = 0.0
        self.res_ctx[index] = -1
        self.res_pos[index] = 0
        self.res_win[index] = float("nan")

    def _raise_levels(self, layer: int, feats: Tensor, new: Tensor) -> None:
        """Coarsen the bins of `feats` to levels `new` (sum bins pairwise) and re-sort their samples."""
        c = self.config
        shift = (new - self.level[layer, feats]).long().clamp(0, 62)
        target = torch.arange(c.n_fine)[None, :] >> shift[:, None]
        hist = self.hist[layer, feats]
        self.hist[layer, feats] = torch.zeros_like(hist).scatter_add_(1, target, hist)
        self.level[layer, feats] = new
        keys = self.res_key[layer, feats]
        fi, bi, ki = (keys != EMPTY_KEY).nonzero(as_tuple=True)
        if len(fi) == 0:
            return
        entries = (
            feats[fi],
            keys[fi, bi, ki],
            self.res_act[layer, feats][fi, bi, ki],
            self.res_ctx[layer, feats][fi, bi, ki],
            self.res_pos[layer, feats][fi, bi, ki],
            self.res_win[layer, feats][fi, bi, ki],
        )
        self._clear_samples(layer, feats)
        self._insert_samples(layer, *entries)

    # ---------------------------------------------------------------- merging
    def copy(self) -> DashboardState:
        out = DashboardState(self.config, self.n_layers, self.n_features, self.info)
        for name in TENSOR_NAMES:
            setattr(out, name, getattr(self, name).clone())
        out.n_tokens, out.ranges, out.next_doc = self.n_tokens, [list(r) for r in self.ranges], self.next_doc
        return out

    def merge(self, other: DashboardState) -> DashboardState:
        """The state of both shards' documents together (a new state; neither input changes)."""
        self._check_mergeable(other)
        out, other = self.copy(), other.copy()
        for layer in range(self.n_layers):
            level = torch.maximum(out.level[layer], other.level[layer])
            for state in (out, other):
                rise = (level > state.level[layer]).nonzero().squeeze(-1)
                if len(rise):
                    state._raise_levels(layer, rise, level[rise])
            out.hist[layer] += other.hist[layer]
            out.n_active[layer] += other.n_active[layer]
            k = other.top_ctx[layer] >= 0
            if k.any():
                f, i = k.nonzero(as_tuple=True)
                out._insert_top(
                    layer,
                    f,
                    other.top_act[layer][f, i],
                    other.top_ctx[layer][f, i],
                    other.top_pos[layer][f, i],
                    other.top_win[layer][f, i],
                )
            k = other.res_key[layer] != EMPTY_KEY
            if k.any():
                f, bi, i = k.nonzero(as_tuple=True)
                out._insert_samples(
                    layer,
                    f,
                    other.res_key[layer][f, bi, i],
                    other.res_act[layer][f, bi, i],
                    other.res_ctx[layer][f, bi, i],
                    other.res_pos[layer][f, bi, i],
                    other.res_win[layer][f, bi, i],
                )
        out.n_tokens += other.n_tokens
        out.ranges = _union(out.ranges + other.ranges)
        out.next_doc = None
        return out

    @staticmethod
    def merge_all(states: list[DashboardState]) -> DashboardState:
        """All states merged (pairwise, as a balanced tree)."""
        states = list(states)
        if not states:
            raise ValueError("merge_all needs at least one DashboardState.")
        while len(states) > 1:
            states = [a.merge(b) for a, b in zip(states[::2], states[1::2])] + states[len(states) // 2 * 2 :]
        return states[0]

    def _check_mergeable(self, other: DashboardState) -> None:
        if not isinstance(other, DashboardState):
            raise TypeError(f"Can only merge a DashboardState, got {type(other).__name__}.")
        if self.config != other.config:
            raise ValueError(
                f"These states were built with other settings {self.config.differences(other.config)}; "
                "build every shard with the same DashboardConfig."
            )
        if (self.n_layers, self.n_features) != (other.n_layers, other.n_features):
            raise ValueError(
                f"These states are for CLTs of other shapes ({self.n_layers}x{self.n_features} vs "
                f"{other.n_layers}x{other.n_features})."
            )
        if not same_info(self.info, other.info):
            raise ValueError(f"These states are for other model/CLT pairs ({self.info} vs {other.info}).")
        for a, b in ((a, b) for a in self.ranges for b in other.ranges):
            if a[0] < b[1] and b[0] < a[1]:
                raise ValueError(
                    f"The states overlap (documents {a} and {b}): each document may be counted once; "
                    "build shards over disjoint document ranges."
                )

    # ---------------------------------------------------------------- files (no pickle)
    def save(self, path: str | os.PathLike) -> Path:
        """Write the state to one safetensors file (atomically, through `tl_clt.files`; streamed from
        the state's tensors, so saving a checkpoint needs no second copy of the state in memory)."""
        meta = {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "n_layers": self.n_layers,
            "n_features": self.n_features,
            "n_tokens": self.n_tokens,
            "ranges": self.ranges,
            "next_doc": self.next_doc,
            "info": self.info,
        }
        tensors = {n: getattr(self, n).contiguous() for n in TENSOR_NAMES}
        return files.write_safetensors(
            path, tensors, metadata={"state": json.dumps(meta)}, what="dashboard state"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> DashboardState:
        """A state written by `save` (ValueError for anything else)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No dashboard state at {path}.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("state", "{}"))
                if meta.get("format") != STATE_FORMAT:
                    raise ValueError(f"{path} is not a {STATE_FORMAT} file (it says {meta.get('format')!r}).")
                state = cls(
                    DashboardConfig.from_dict(meta["config"]),
                    meta["n_layers"],
                    meta["n_features"],
                    meta["info"],
                )
                for name in TENSOR_NAMES:
                    t = f.get_tensor(name)
                    if t.shape != getattr(state, name).shape or t.dtype != getattr(state, name).dtype:
                        raise ValueError(
                            f"{path}: tensor {name} has shape {tuple(t.shape)} {t.dtype}, not the state's."
                        )
                    setattr(state, name, t)
        except (SafetensorError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path} is not a readable dashboard state ({type(err).__name__}: {err})."
            ) from err
        state.n_tokens, state.ranges, state.next_doc = meta["n_tokens"], meta["ranges"], meta["next_doc"]
        return state

    # ---------------------------------------------------------------- what the records show
    def summary(self, layer: int, feature: int) -> dict:
        """Histogram, range, quantiles and frequency of one feature (see the module docstring)."""
        c = self.config
        n = int(self.n_active[layer, feature])
        freq = n / self.n_tokens if self.n_tokens else 0.0
        if n == 0:
            return dict(
                histogram=[0] * c.n_bins, act_min=0.0, act_max=0.0, quantile_values=[], frequency=freq
            )
        level = int(self.level[layer, feature])
        width = math.ldexp(1.0, level)
        fine = self.hist[layer, feature].numpy().astype(np.int64)
        top_bin = int(fine_bins(self.top_act[layer, feature, :1], torch.tensor([level]), c.n_fine))
        j = top_bin // c.n_bins + 1  # histogram bins of j fine bins each: n_bins * j * width > top
        hist = fine[: c.n_bins * j].reshape(c.n_bins, j).sum(1)
        if int(hist.sum()) != n:
            raise RuntimeError(
                f"layer {layer} feature {feature}: histogram does not hold all {n} activations."
            )
        ranks = (np.arange(1, c.n_quantiles + 1) * n + c.n_quantiles - 1) // c.n_quantiles
        qbins = np.searchsorted(np.cumsum(fine), ranks)
        return dict(
            histogram=hist.tolist(),
            act_min=0.0,
            act_max=c.n_bins * j * width,
            quantile_values=((qbins + 1) * width).tolist(),
            frequency=freq,
        )


@dataclass
class _Batch:
    """One layer's tensors of a batch: activations (or pre-activations, with `threshold`) [rows, F] of
    the counted positions, the row of each (b, t) (any row where it is not counted), the lengths."""

    acts: Tensor
    row_of: Tensor
    lengths: Tensor
    threshold: Tensor | None


class _Windows:
    """The windows of a batch's entries (b, t, f), made on demand for a subset (`take(index)`)."""

    def __init__(self, state: DashboardState, batch: _Batch, b, t, f):
        self.state, self.batch, self.b, self.t, self.f = state, batch, b, t, f

    def take(self, index: Tensor) -> Tensor:
        i = index
        return self.state._window(self.batch, self.b[i], self.t[i], self.f[i])


def _kept_windows(old: Tensor, new: Tensor | _Windows, kept: Tensor) -> Tensor:
    """Windows of the kept entries of cat([old entries, new entries]) (in `kept`'s order)."""
    if isinstance(new, Tensor):
        return torch.cat([old, new])[kept]
    n_old = len(old)
    out = torch.empty(len(kept), *old.shape[1:], dtype=old.dtype)
    from_old = kept < n_old
    out[from_old] = old[kept[from_old]]
    out[~from_old] = new.take(kept[~from_old] - n_old)
    return out


def same_info(a: dict, b: dict) -> bool:
    """Same CLT (fingerprint) and the same model up to a local path / hub cache folder (see
    `tl_clt.hooks.same_model`)."""
    from tl_clt.hooks import same_model

    return a.get("clt") == b.get("clt") and same_model(a.get("model") or "", b.get("model") or "")


def _union(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
