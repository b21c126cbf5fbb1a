"""The frozen local replacement model's backward pass as explicit batched linear maps (no autograd).

With attention patterns and every norm scale frozen and every MLP output a leaf (the CLT reconstruction
plus an error constant), the gradient of a read-out placed on the residual stream flows down through the
attention blocks only. Per layer j, for a gradient g at resid_mid_j (= the one at resid_post_j, the MLP
output being a leaf):

    g_pre_j = g + (ln1.w / scale1_j) * W_V^T ( pattern_j^T ( W_O^T g ) )      (per head, GQA heads summed)

and the gradient at MLP output j is g at resid_post_j. So a row needs, per layer, only W_V, W_O, the
frozen pattern and the ln1 factor: Q, K and MLP weights are never touched. The pass is exact (it is the
same linear map autograd applies), independent of the backend that supplied the tensors, runs in a
`compute_dtype` of its own (weights are copied in it only where the model's dtype differs), truncates
positions after the batch's last target, and skips layers above each row's target.

Edge rows are then contractions of these gradients with the sources: `act * (G . W_dec row)` for features
(decoder rows read once per graph into `DecoderRows`, within a memory budget), `G . error` for errors,
`G_emb . embedding` for tokens. `EdgeRows.rows` does it for any number of rows in memory-bounded sweeps:
every sweep computes the gradients of its rows in position-sorted sub-batches of `batch_size`, then
contracts every decoder block once with all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor


def default_compute_dtype(model_dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """float32 on a CPU (bf16/fp16 matmuls there are several times slower; float64 stays float64),
    the model's dtype on an accelerator."""
    if torch.device(device).type == "cpu":
        return torch.float64 if model_dtype == torch.float64 else torch.float32
    return model_dtype


def default_decoder_cache_bytes(device: torch.device | str) -> int:
    """min(8 GiB, half the memory available now): the budget for active features' decoder rows."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(8 << 30, free // 2)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return min(8 << 30, info["MemAvailable"] // 2)
    except (OSError, KeyError, ValueError):
        return 4 << 30


@dataclass
class TransposedModel:
    """Per-layer tensors of the frozen model's backward (in `dtype`), see the module docstring.

    W_O_flat[j]: [n_heads * d_head, d_model]; W_V_flat[j]: [n_kv_heads * d_head, d_model];
    patterns[j]: [n_heads, pos, pos] (query, key); ln1_factor[j]: [pos, d_model] = ln1.w / scale1.
    """

    W_O_flat: list[Tensor]
    W_V_flat: list[Tensor]
    patterns: list[Tensor]
    ln1_factor: list[Tensor]
    n_heads: int
    n_kv_heads: int
    d_head: int
    dtype: torch.dtype

    @classmethod
    def from_weights(
        cls,
        W_V: Sequence[Float[Tensor, "n_kv d_model d_head"]],
        W_O: Sequence[Float[Tensor, "n_heads d_head d_model"]],
        ln1_w: Sequence[Float[Tensor, " d_model"] | None],
        ln1_scale: Sequence[Float[Tensor, "pos 1"]],
        patterns: Sequence[Float[Tensor, "n_heads pos pos"]],
        dtype: torch.dtype,
    ) -> TransposedModel:
        """From per-layer weights in TransformerLens layouts and the clean pass's frozen values."""
        n_heads, d_head, d_model = W_O[0].shape
        n_kv = W_V[0].shape[0]
        with torch.no_grad():
            W_O_flat = [w.detach().reshape(n_heads * d_head, d_model).to(dtype).contiguous() for w in W_O]
            W_V_flat = [w.detach().transpose(1, 2).reshape(n_kv * d_head, d_model).to(dtype) for w in W_V]
            W_V_flat = [w.contiguous() for w in W_V_flat]
            factors = []
            for w, scale in zip(ln1_w, ln1_scale, strict=True):
                inv = 1 / scale.detach().to(dtype).reshape(-1, 1)
                factors.append(inv * w.detach().to(dtype) if w is not None else inv.expand(-1, d_model))
            pats = [p.detach().reshape(n_heads, *p.shape[-2:]).to(dtype) for p in patterns]
        return cls(W_O_flat, W_V_flat, pats, factors, n_heads, n_kv, d_head, dtype)

    @property
    def n_layers(self) -> int:
        return len(self.W_O_flat)

    def attention_transpose(self, j: int, g: Float[Tensor, "m p d_model"]) -> Float[Tensor, "m p d_model"]:
        """The gradient that g at resid_mid_j sends to resid_pre_j through attention j (not the skip)."""
        m, p, d = g.shape
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        z = (g.reshape(m * p, d) @ self.W_O_flat[j].T).view(m, p, H, dh)
        v = torch.einsum("hqk,mqhd->mkhd", self.patterns[j][:, :p, :p], z)
        if Hkv != H:
            v = v.reshape(m, p, Hkv, H // Hkv, dh).sum(3)
        x = v.reshape(m * p, Hkv * dh) @ self.W_V_flat[j]
        return x.view(m, p, d) * self.ln1_factor[j][:p]

    def gradients(
        self, sites: Int[Tensor, " n"], positions: Int[Tensor, " n"], readouts: Float[Tensor, "n d_model"]
    ) -> tuple[Float[Tensor, "n p top d_model"], Float[Tensor, "n p d_model"]]:
        """(G, G_emb): gradients of each row's read-out at MLP outputs 0..top-1 and at the embedding.

        Row i reads `readouts[i]` off the residual stream at position `positions[i]`, at resid_mid of layer
        `sites[i]`, or at the final resid_post for `sites[i] == n_layers`. Rows must be sorted by site,
        descending. p = max position + 1 (later positions get no gradient: attention is causal); top = the
        highest site. Rows whose site is at or below a layer get exact zeros there.
        """
        n, L = len(sites), self.n_layers
        d = readouts.shape[-1]
        p_all = int(positions.max()) + 1
        top = int(sites[0])
        sites_l, pos_l = sites.tolist(), positions.tolist()
        # rows with site >= j are the prefix [:n_ge[j]]; their last position bounds the work
        n_ge = [sum(s >= j for s in sites_l) for j in range(L + 1)]
        p_ge = [max(pos_l[: n_ge[j]], default=-1) + 1 for j in range(L + 1)]
        g = readouts.new_zeros(n, p_all, d, dtype=self.dtype)
        G = readouts.new_empty(n, p_all, top, d, dtype=self.dtype)
        rows = torch.arange(n, device=readouts.device)
        readouts = readouts.to(self.dtype)

        def inject(layer: int) -> None:
            lo = n_ge[layer + 1] if layer < L else 0
            hi = n_ge[layer]
            if hi > lo:
                g[rows[lo:hi], positions[lo:hi]] += readouts[lo:hi]

        if top == L:
            inject(L)
        for j in reversed(range(min(top, L - 1) + 1)):
            if j < top:  # g is the gradient at resid_post_j = MLP output j
                m = n_ge[j + 1]
                G[:m, :, j] = g[:m]
                G[m:, :, j] = 0
            inject(j)
            m, p = n_ge[j], p_ge[j]
            g[:m, :p] += self.attention_transpose(j, g[:m, :p])
        return G, g

    def flops(self, site: int, position: int) -> int:
        """Multiply-adds x 2 of one row's transposed pass (layers 0..site, positions 0..position)."""
        p = position + 1
        layers = min(site, self.n_layers - 1) + 1
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        d = self.W_O_flat[0].shape[1]
        per_layer = 2 * p * d * dh * (H + Hkv) + 2 * H * dh * p * (p + 1) // 2
        return layers * per_layer


@dataclass
class Layout:
    """Active features of one source layer: columns first..first+n of the edge rows, their positions and
    features, the unique features (decoder rows) and, per entry, which unique row it uses."""

    layer: int
    first: int
    positions: Tensor
    features: Tensor
    unique: Tensor
    inverse: Tensor
    spans: list[tuple[int, int, int]]  # (position, start entry, count), entries of one position


def layouts(index: Int[Tensor, "n 3"], n_layers: int) -> list[Layout]:
    """Per source layer with active features (index ordered by layer, position, feature)."""
    out = []
    for k in range(n_layers):
        cols = (index[:, 0] == k).nonzero().squeeze(-1)
        if not cols.numel():
            continue
        positions, features = index[cols, 1], index[cols, 2]
        unique, inverse = features.unique(return_inverse=True)
        pos_u, counts = positions.unique_consecutive(return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        spans = list(zip(pos_u.tolist(), starts.tolist(), counts.tolist()))
        out.append(Layout(k, int(cols[0]), positions, features, unique, inverse, spans))
    return out


@dataclass
class DecoderRows:
    """Decoder rows of the active features, read once per graph: layers whose rows fit `budget_bytes`
    stay in memory (in the storage dtype); the others are read again from the CLT when used."""

    clt: object
    layouts: list[Layout]
    budget_bytes: int
    device: torch.device
    cached: dict[int, Tensor] = field(default_factory=dict)
    bytes_read: int = 0

    def read(self, lay: Layout) -> Float[Tensor, "u n_out d_model"]:
        """The unique features' rows of one layer, [u, n_layers - layer, d_model]."""
        if lay.layer in self.cached:
            return self.cached[lay.layer]
        rows = self.clt.decoder_rows(lay.layer, lay.unique, compact=True).to(self.device)
        self.bytes_read += rows.numel() * rows.element_size()
        return rows

    def fill(self, consume=None) -> None:
        """Read every layer once (caching what fits the budget); `consume(layout, rows)` sees each."""
        used = 0
        for lay in self.layouts:
            rows = self.read(lay)
            size = rows.numel() * rows.element_size()
            if used + size <= self.budget_bytes:
                self.cached[lay.layer] = rows
                used += size
            if consume is not None:
                consume(lay, rows)

    @property
    def cached_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cached.values())


def reconstruction(
    clt, acts_by_layer: list[Tensor], decoder: DecoderRows, n_pos: int, dtype: torch.dtype
) -> Float[Tensor, "n_layers pos d_model"]:
    """The CLT's reconstruction of every MLP output (as `clt.decode`), from one read of the active rows,
    filling `decoder`'s cache on the way. acts_by_layer[k]: [pos, n_features] activations."""
    L = clt.n_layers
    out = clt.b_dec.to(dtype).view(L, 1, -1).expand(L, n_pos, clt.d_model).clone()

    def add(lay: Layout, rows: Tensor) -> None:
        a = acts_by_layer[lay.layer][:, lay.unique.to(acts_by_layer[lay.layer].device)]
        out[lay.layer :] += torch.einsum("pn,nld->lpd", a.to(dtype), rows.to(dtype))

    decoder.fill(add)
    return out


@dataclass
class RowStats:
    """What the rows cost: sub-batches (backward passes), sweeps, FLOPs done, seconds per part."""

    n_backward: int = 0
    n_sweeps: int = 0
    flops_ideal: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"gradients": 0.0, "contract": 0.0})


class EdgeRows:
    """Edge rows (all sources of a target) of the frozen model, by `TransposedModel` and `DecoderRows`.

    Sources are ordered: active features (index order), errors (layer-major, then position), tokens.
    """

    def __init__(
        self,
        model: TransposedModel,
        decoder: DecoderRows,
        activations: Float[Tensor, " n_active"],
        errors: Float[Tensor, "n_layers pos d_model"],
        embed: Float[Tensor, "pos d_model"],
        batch_size: int,
        gradient_bytes: int = 1 << 30,
        out_dtype: torch.dtype = torch.float32,
        block_bytes: int = 256 << 20,
    ):
        self.model, self.decoder = model, decoder
        self.dtype = model.dtype
        self.n_layers, self.n_pos = errors.shape[:2]
        self.d_model = errors.shape[-1]
        self.acts = activations.to(self.dtype)
        self.errors = errors.to(self.dtype)
        self.embed = embed.to(self.dtype)
        self.n_active = len(activations)
        self.batch_size = batch_size
        self.gradient_bytes = gradient_bytes
        self.block_bytes = block_bytes
        self.out_dtype = out_dtype
        self.stats = RowStats()
        self._dec_flops_per_pos = self._decoder_flops_table()

    @property
    def n_sources(self) -> int:
        return self.n_active + (self.n_layers + 1) * self.n_pos

    def _decoder_flops_table(self) -> Tensor:
        """T[s, q] = 2 * d_model * sum over active features at layer k < s, position <= q of (s - k)."""
        L, P = self.n_layers, self.n_pos
        count = torch.zeros(L, P, dtype=torch.long)
        for lay in self.decoder.layouts:
            for p, _, n in lay.spans:
                count[lay.layer, p] += n
        cum = count.cumsum(1)  # features at layer k with position <= q
        table = torch.zeros(L + 1, P, dtype=torch.long)
        for s in range(L + 1):
            for k in range(min(s, L)):
                table[s] += (s - k) * cum[k]
        return 2 * self.d_model * table

    def row_flops(self, sites: Tensor, positions: Tensor) -> int:
        """FLOPs of these rows done ideally: each row's transposed pass through the layers at and below its
        target, up to its position, plus its decoder contractions (layers below its target, positions up
        to its own); errors and tokens (d_model per source) are included."""
        total = 0
        d = self.d_model
        for s, q in zip(sites.tolist(), positions.tolist(), strict=True):
            total += self.model.flops(s, q) + int(self._dec_flops_per_pos[s, q])
            total += 2 * d * (q + 1) * (min(s, self.n_layers) + 1)
        return total

    def rows(
        self,
        sites: Int[Tensor, " n"],
        positions: Int[Tensor, " n"],
        readouts: Float[Tensor, "n d_model"],
        out: Float[Tensor, "n n_sources"] | None = None,
    ) -> Float[Tensor, "n n_sources"]:
        """Edge rows of targets read at (site, position) by `readouts` (resid-stream vectors, see
        `TransposedModel.gradients`); written into `out` (zeroed first) if given."""
        import time

        n = len(sites)
        if out is None:
            out = torch.zeros(n, self.n_sources, dtype=self.out_dtype, device=readouts.device)
        else:
            out.zero_()
        self.stats.flops_ideal += self.row_flops(sites, positions)
        order = torch.argsort(positions, stable=True)
        per_row = self.n_pos * self.n_layers * self.d_model * torch.finfo(self.dtype).bits // 8
        sweep = max(self.batch_size, self.gradient_bytes // max(per_row, 1))
        for chunk in order.split(sweep):
            t0 = time.perf_counter()
            batches = []
            for sub in chunk.split(self.batch_size):
                sub = sub[torch.argsort(sites[sub], descending=True, stable=True)]
                G, G_emb = self.model.gradients(sites[sub], positions[sub], readouts[sub])
                self._errors_and_tokens(G, G_emb, sub, out)
                batches.append((sub, sites[sub], positions[sub], G))
                self.stats.n_backward += 1
            t1 = time.perf_counter()
            self._contract_features(batches, out)
            self.stats.seconds["gradients"] += t1 - t0
            self.stats.seconds["contract"] += time.perf_counter() - t1
            self.stats.n_sweeps += 1
        return out

    def _errors_and_tokens(self, G: Tensor, G_emb: Tensor, sub: Tensor, out: Tensor) -> None:
        n, p, top, _ = G.shape
        if top:
            err = torch.einsum("npjd,jpd->njp", G, self.errors[:top, :p])
            cols = (
                self.n_active
                + torch.arange(top, device=G.device)[:, None] * self.n_pos
                + torch.arange(p, device=G.device)
            )
            out[sub[:, None], cols.reshape(1, -1)] = err.reshape(n, -1).to(out.dtype)
        tok = (G_emb * self.embed[:p]).sum(-1)
        start = self.n_active + self.n_layers * self.n_pos
        out[sub, start : start + p] = tok.to(out.dtype)

    def _contract_features(self, batches: list, out: Tensor) -> None:
        """Feature columns: act_f * G[row, p_f, k_f:top] . W_dec_{k_f}[f, :top - k_f].

        Per source layer, the decoder rows are cast once per sweep into [positions, n_max, (top-k) d]
        blocks (features of one position per slice, zero-padded; at most `block_bytes` each), and every
        sub-batch is contracted with a block in one batched matmul over positions. Rows at or below the
        layer (a prefix: sub-batches are sorted by site) are skipped; positions after a sub-batch's last.
        """
        top_all = min(max(int(s[0]) for _, s, _, _ in batches), self.n_layers)
        p_all = max(int(q.max()) for _, _, q, _ in batches) + 1
        for lay in self.decoder.layouts:
            k = lay.layer
            if k >= top_all:
                break
            spans = [sp for sp in lay.spans if sp[0] < p_all]
            if not spans:
                continue
            rows = self.decoder.read(lay)
            n_max = max(sp[2] for sp in spans)
            per_span = n_max * (top_all - k) * self.d_model * torch.finfo(self.dtype).bits // 8
            group = max(1, self.block_bytes // per_span)
            for g0 in range(0, len(spans), group):
                self._contract_block(lay, rows, spans[g0 : g0 + group], top_all, batches, out)

    def _contract_block(self, lay: Layout, rows: Tensor, spans: list, top_all: int, batches, out) -> None:
        k, d = lay.layer, self.d_model
        pos = torch.tensor([sp[0] for sp in spans])
        counts = torch.tensor([sp[2] for sp in spans])
        e0 = spans[0][1]  # entries of these spans are consecutive, ordered by position
        n_max, n_entries = int(counts.max()), int(counts.sum())
        slot_p = torch.repeat_interleave(torch.arange(len(spans)), counts)
        slot_i = torch.arange(n_entries) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        block = rows.new_zeros(len(spans), n_max, top_all - k, d, dtype=self.dtype)
        block[slot_p, slot_i] = rows[lay.inverse[e0 : e0 + n_entries], : top_all - k].to(self.dtype)
        block = block.view(len(spans), n_max, -1)
        flat = (slot_p * n_max + slot_i).to(out.device)  # where each entry lands in a [P, n_max] result
        acts = self.acts[lay.first + e0 : lay.first + e0 + n_entries]
        cols = torch.arange(lay.first + e0, lay.first + e0 + n_entries, device=out.device)
        for sub, s, q, G in batches:
            m = int((s > k).sum())  # rows above layer k: a prefix
            if m == 0:
                continue
            t = min(int(s[0]), self.n_layers)
            n_sp = int((pos <= int(q[:m].max())).sum())  # spans at positions the sub-batch reaches
            if n_sp == 0:
                continue
            A = G[:m, :, k:t].index_select(1, pos[:n_sp].to(G.device)).transpose(0, 1).reshape(n_sp, m, -1)
            res = torch.bmm(A, block[:n_sp, :, : (t - k) * d].transpose(1, 2))  # [n_sp, m, n_max]
            n_used = int(counts[:n_sp].sum())
            vals = res.transpose(0, 1).reshape(m, -1)[:, flat[:n_used]] * acts[:n_used]
            out[sub[:m, None], cols[None, :n_used]] = vals.to(out.dtype)
