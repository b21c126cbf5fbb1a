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
(decoder rows read once per graph by `DecoderRows`; laid out per position and target layer by
`DecoderByTarget` when that fits the memory budget, in the compute dtype or in bf16 as stored),
`G . error` for errors, `G_emb . embedding` for tokens. `EdgeRows.rows` does it for any number of rows in
memory-bounded sweeps: every sweep computes the gradients of its rows in position-sorted sub-batches of
`batch_size`, then contracts the decoder rows once with all of them, each row only at the layers below its
target (a graph's last rows only with the selected features: `features=`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_clt.clt import cast_row_blocks, consecutive_spans
from tl_clt.workspace import Workspace


def default_compute_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """float32 (float64 for a float64 model), on every device: bf16/fp16 matmuls are several times slower
    on a CPU, and on an H200 bf16 arithmetic built the real 0.6B shape's graph no faster than float32
    (0.927 vs 0.934 s), with edges off by 5.7e-3 of the largest instead of 2e-7 (tiny size, against float64
    arithmetic on the same model); it saves GPU memory (benchmarks/README.md, "GPU")."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


# DecoderByTarget's matrices stored narrower than the compute dtype are cast CAST_ROWS rows at a time (a 4 MB
# float32 block at d_model 2048) before their products: 136 GFLOP/s against 113 for float32 matrices read
# from memory, and 22 against 23 for 8-column products (benchmarks/README.md).
CAST_ROWS = 512
# A (position, target layer)'s stretches of sweep columns are gathered into one product when they are
# narrower than this on average: 4 stretches of 30 columns took 1.65 ms gathered against 2.69 one by one,
# 4 of 64 took 4.23 against 3.02 ([1000, 1024] decoder rows, float32, this 2-core machine).
GATHER_BELOW_WIDTH = 48
GRADIENT_BYTES = 64 << 20  # a sweep's gradient buffer beyond its minimum of 4 sub-batches


def available_bytes(device: torch.device | str) -> int:
    """Memory free for a graph now: the GPU's free memory, or MemAvailable on Linux (8 GiB if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 8 << 30


def buffer_bytes(
    *,
    n_pos: int,
    n_layers: int,
    d_model: int,
    n_sources: int,
    n_rows: int,
    batch_size: int,
    dtype: torch.dtype,
    gradient_bytes: int = GRADIENT_BYTES,
) -> int:
    """Bytes of a graph's large buffers besides the decoder rows (the memory model in benchmarks/README):
    one sweep's gradients at the MLP outputs (`EdgeRows.rows`), the float32 edge rows of `n_rows` targets,
    and as much again for the influence's B ([n_rows, n_rows], `PartialInfluence`) and the graph's
    adjacency, with room to spare."""
    per_row = gradient_row_bytes(n_pos, n_layers, d_model, dtype)
    sweep = min(n_rows, sweep_rows(per_row, batch_size, gradient_bytes))
    return sweep * per_row + 2 * n_rows * n_sources * 4


def n_source_columns(n_features: int, n_layers: int, n_pos: int) -> int:
    """Columns of an edge row: the active features, then an error node per (layer, position), then a
    token per position."""
    return n_features + (n_layers + 1) * n_pos


def gradient_row_bytes(n_pos: int, n_layers: int, d_model: int, dtype: torch.dtype) -> int:
    """Bytes of one row's gradients at every layer's MLP output (a column of a sweep's buffer G)."""
    return n_pos * n_layers * d_model * torch.finfo(dtype).bits // 8


def sweep_rows(per_row_bytes: int, batch_size: int, gradient_bytes: int) -> int:
    """Rows contracted together (`EdgeRows.rows`): at least 4 sub-batches (the contraction's products get
    wide enough); beyond that, `gradient_bytes` of gradients (a small buffer is cheaper: it is touched
    once per graph, then reused)."""
    return max(4 * batch_size, gradient_bytes // max(per_row_bytes, 1))


def default_decoder_cache_bytes(
    device: torch.device | str, reserve_bytes: int = 0, reusable_bytes: int = 0
) -> int:
    """min(8 GiB, half of what is available now beyond `reserve_bytes`): the budget for the active
    features' decoder rows; `reserve_bytes`: what the graph's other buffers will take (`buffer_bytes`);
    `reusable_bytes`: held already by the graph's `Workspace`, so available to it."""
    return min(8 << 30, max(0, available_bytes(device) + reusable_bytes - reserve_bytes) // 2)


@dataclass
class TransposedModel:
    """Per-layer tensors of the frozen model's backward (in `dtype`), see the module docstring.

    Gradients are kept feature-major, [d_model, rows, positions], so every step is a plain matrix product
    on contiguous memory: W_O_flat[j] [n_heads * d_head, d_model] times the gradient gives the heads'
    gradients [head, d_head, rows, positions]; the frozen pattern acts on the last axis (one batched
    matmul per head of a KV group, summed into the KV head's); W_V_T[j] [d_model, n_kv_heads * d_head]
    brings them back; ln1_factor_T[j] [d_model, pos] = ln1.w / scale1 scales them.
    patterns[j]: [n_heads, pos, pos] (query, key).
    """

    W_O_flat: list[Tensor]
    W_V_T: list[Tensor]
    patterns: list[Tensor]
    ln1_factor_T: list[Tensor]
    n_heads: int
    n_kv_heads: int
    d_head: int
    dtype: torch.dtype
    scratch: Workspace  # work buffers, see tl_clt.workspace

    @classmethod
    def from_weights(
        cls,
        W_V: Sequence[Float[Tensor, "n_kv d_model d_head"]],
        W_O: Sequence[Float[Tensor, "n_heads d_head d_model"]],
        ln1_w: Sequence[Float[Tensor, " d_model"] | None],
        ln1_scale: Sequence[Float[Tensor, "pos 1"]],
        patterns: Sequence[Float[Tensor, "n_heads pos pos"]],
        dtype: torch.dtype,
        workspace: Workspace,
    ) -> TransposedModel:
        """From per-layer weights in TransformerLens layouts and the clean pass's frozen values; work buffers
        in `workspace`."""
        n_heads, d_head, d_model = W_O[0].shape
        n_kv = W_V[0].shape[0]
        with torch.no_grad():  # views where the layout allows (nn.Linear's is a transposed one): no copy
            W_O_flat = [w.detach().reshape(n_heads * d_head, d_model).to(dtype) for w in W_O]
            W_V_T = [w.detach().permute(1, 0, 2).reshape(d_model, n_kv * d_head).to(dtype) for w in W_V]
            factors = []
            for w, scale in zip(ln1_w, ln1_scale, strict=True):
                inv = 1 / scale.detach().to(dtype).reshape(1, -1)
                f = inv * w.detach().to(dtype)[:, None] if w is not None else inv.expand(d_model, -1)
                factors.append(f.contiguous())
            pats = [p.detach().reshape(n_heads, *p.shape[-2:]).to(dtype).contiguous() for p in patterns]
        return cls(W_O_flat, W_V_T, pats, factors, n_heads, n_kv, d_head, dtype, workspace)

    @property
    def n_layers(self) -> int:
        return len(self.W_O_flat)

    def attention_transpose(self, j: int, g: Float[Tensor, "d_model n p"], m: int) -> None:
        """Add to g[:, :m] (the gradient at resid_mid_j of the first m rows) what it sends to resid_pre_j
        through attention j (the skip connection is g itself). In place."""
        d, n, p = g.shape
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        group = H // Hkv
        buf = self.scratch
        z = buf("z", (H * dh, m * p), g.dtype, g.device)
        torch.mm(self.W_O_flat[j], g.view(d, n * p)[:, : m * p], out=z)  # [H * dh, m * p]
        zv = z.view(Hkv, group, dh * m, p)
        pat = self.patterns[j].view(Hkv, group, *self.patterns[j].shape[-2:])[:, :, :p, :p]
        v = buf("v", (Hkv, dh * m, p), g.dtype, g.device)
        torch.bmm(zv[:, 0], pat[:, 0], out=v)  # pattern^T on the key axis
        for i in range(1, group):
            v.baddbmm_(zv[:, i], pat[:, i])
        x = buf("x", (d, m * p), g.dtype, g.device)
        torch.mm(self.W_V_T[j], v.view(Hkv * dh, m * p), out=x)
        g[:, :m].addcmul_(x.view(d, m, p), self.ln1_factor_T[j][:, None, :p])

    def backward(
        self,
        sites: Int[Tensor, " n"],
        positions: Int[Tensor, " n"],
        readouts: Float[Tensor, "n d_model"],
        at_mlp_out: Callable[[int, int, Tensor], None],
    ) -> Float[Tensor, "d_model n p"]:
        """Run rows down the frozen model; return the gradient at the embedding [d_model, n, p].

        Row i reads `readouts[i]` off the residual stream at position `positions[i]`, at resid_mid of layer
        `sites[i]`, or at the final resid_post for `sites[i] == n_layers`. Rows must be sorted by site,
        descending. p = max position + 1 (later positions get no gradient: attention is causal). For every
        layer j below the highest site, `at_mlp_out(j, m, g)` sees the gradient g [d_model, n, p] at MLP
        output j; its first m rows (those with site > j) are the ones that reach it.
        """
        n, L = len(sites), self.n_layers
        d = readouts.shape[-1]
        p = int(positions.max()) + 1
        top = int(sites[0])
        sites_l = sites.tolist()
        n_ge = [sum(s >= j for s in sites_l) for j in range(L + 1)]  # rows with site >= j: a prefix
        g = self.scratch("g", (d, n, p), self.dtype, readouts.device).zero_()
        rows = torch.arange(n, device=readouts.device)
        readouts_T = readouts.to(self.dtype).T

        def inject(layer: int) -> None:
            lo = n_ge[layer + 1] if layer < L else 0
            hi = n_ge[layer]
            if hi > lo:
                g[:, rows[lo:hi], positions[lo:hi]] += readouts_T[:, lo:hi]

        if top == L:
            inject(L)
        for j in reversed(range(min(top, L - 1) + 1)):
            if j < top:  # g is the gradient at resid_post_j = MLP output j
                at_mlp_out(j, n_ge[j + 1], g)
            inject(j)
            self.attention_transpose(j, g, n_ge[j])
        return g

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

    def read_dtype(self, layer: int) -> torch.dtype:
        """The dtype `read` gives for a layer (`decoder_rows(compact=True)`): a lazy decoder's file dtype
        where it is narrower than the CLT's, else the CLT's."""
        if not self.clt.lazy_decoder:
            return self.clt.dtype
        on_disk = self.clt._W_dec[layer].torch_dtype
        return on_disk if torch.finfo(on_disk).bits < torch.finfo(self.clt.dtype).bits else self.clt.dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype `read` gives (the first active layer's: a CLT's decoder files share one)."""
        return self.read_dtype(self.layouts[0].layer) if self.layouts else self.clt.dtype

    def layer_bytes(self, lay: Layout) -> int:
        """Bytes of one layer's rows as read (storage dtype)."""
        n_out = self.clt.n_layers - lay.layer
        return len(lay.unique) * n_out * self.clt.d_model * torch.finfo(self.read_dtype(lay.layer)).bits // 8

    @property
    def cached_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cached.values())


def reconstruction(
    clt, acts_by_layer: list[Tensor], decoder: DecoderRows, n_pos: int, dtype: torch.dtype
) -> Float[Tensor, "n_layers pos d_model"]:
    """The CLT's reconstruction of every MLP output (as `clt.decode`), from one read of the active rows,
    filling `decoder`'s cache on the way. acts_by_layer[k]: [pos, n_features] activations. Rows stored
    in another dtype (bf16) are cast a block at a time (`cast_row_blocks`), not as a whole layer's copy
    (0.6 GB for a layer of the 1.7B shape)."""
    L = clt.n_layers
    out = clt.b_dec.to(dtype).view(L, 1, -1).expand(L, n_pos, clt.d_model).clone()

    def add(lay: Layout, rows: Float[Tensor, "u n_out d_model"]) -> None:
        acts = acts_by_layer[lay.layer]
        a = acts[:, lay.unique.to(acts.device)].to(dtype)  # [pos, u]
        u, n_out, d = rows.shape
        flat = rows.reshape(u, n_out * d)
        if rows.dtype == dtype:
            total = a @ flat.to(out.device)
        else:
            total = torch.zeros(n_pos, n_out * d, dtype=dtype, device=out.device)
            for c, block in cast_row_blocks(flat, dtype, out.device):
                total.addmm_(a[:, c : c + len(block)], block)
        out[lay.layer :] += total.view(n_pos, n_out, d).transpose(0, 1)

    decoder.fill(add)
    return out


class DecoderByTarget:
    """The active features' decoder rows in the compute dtype, once per graph, per position and target
    layer: `mats[pos][t]` [features at pos of layers <= t, d_model] holds W_dec_{k_f}[f, t - k_f], features
    ordered by layer, then entry (so the features of layers <= t are a prefix of those of layers <= t + 1).
    A sweep's contraction multiplies these directly (no per-sweep gather of decoder blocks).
    `dtype`: the matrices' dtype, the compute dtype's or, where that would not fit the budget, the rows'
    storage dtype (bf16 beside float32 arithmetic: the 1.7B shape's 9.6 GB in float32 are 4.8 GB): the
    contraction then casts `CAST_ROWS` rows at a time into a buffer that stays in cache, as fast as products
    on float32 matrices (benchmarks/README.md). Memory: every active entry's rows in `dtype` (`nbytes`)."""

    def __init__(
        self,
        layouts: list[Layout],
        n_layers: int,
        n_pos: int,
        d_model: int,
        dtype,
        device,
        workspace: Workspace,
        compute_dtype: torch.dtype | None = None,
    ):
        self.layouts, self.n_layers, self.n_pos = layouts, n_layers, n_pos
        count = [[0] * n_pos for _ in range(n_layers)]  # entries per (layer, position)
        for lay in layouts:
            for q, _, c in lay.spans:
                count[lay.layer][q] += c
        # below[q][t]: features at q of layers <= t; offset[k][q]: where layer k's start in mats[q][t >= k]
        self.below = [[sum(count[k][q] for k in range(t + 1)) for t in range(n_layers)] for q in range(n_pos)]
        self.offset = [[self.below[q][k] - count[k][q] for q in range(n_pos)] for k in range(n_layers)]
        # entries[q]: (layout, first entry, count, row in mats[q]) of the features at q, in mats order
        self.entries: list[list[tuple[Layout, int, int, int]]] = [[] for _ in range(n_pos)]
        for lay in layouts:
            for q, e, c in lay.spans:
                self.entries[q].append((lay, e, c, self.offset[lay.layer][q]))
        sizes = [sum(self.below[q]) * d_model for q in range(n_pos)]
        self.nbytes = sum(sizes) * torch.finfo(dtype).bits // 8
        self.dtype = dtype
        self.compute_dtype = dtype if compute_dtype is None else compute_dtype
        self.scratch = workspace
        whole = workspace("decoder_by_target", (sum(sizes),), dtype, device)
        self.mats: list[list[Tensor]] = []
        a = 0
        for q in range(n_pos):
            mats = []
            for t in range(n_layers):
                n = self.below[q][t] * d_model
                mats.append(whole[a : a + n].view(-1, d_model))
                a += n
            self.mats.append(mats)

    @staticmethod
    def bytes_needed(layouts: list[Layout], n_layers: int, d_model: int, dtype: torch.dtype) -> int:
        """Bytes of the matrices for these active features."""
        n = sum(c * (n_layers - lay.layer) for lay in layouts for _, _, c in lay.spans)
        return n * d_model * torch.finfo(dtype).bits // 8

    def add(self, lay: Layout, rows: Float[Tensor, "u n_out d_model"]) -> None:
        """Place one source layer's rows (its unique features', as `DecoderRows.read` gives them)."""
        k = lay.layer
        for q, e, c in lay.spans:
            inverse = lay.inverse[e : e + c].to(rows.device)
            off = self.offset[k][q]
            if rows.dtype == self.dtype:  # gathered straight into place: one copy, not two
                for t in range(k, self.n_layers):
                    torch.index_select(rows[:, t - k], 0, inverse, out=self.mats[q][t][off : off + c])
                continue
            block = rows[inverse]  # [c, n_out, d], storage dtype
            for t in range(k, self.n_layers):
                self.mats[q][t][off : off + c].copy_(block[:, t - k])

    def reconstruction(
        self, values: Float[Tensor, " n_active"], b_dec: Float[Tensor, "n_layers d_model"]
    ) -> Float[Tensor, "n_layers pos d_model"]:
        """The CLT's reconstruction of every MLP output (as `clt.decode`), in the compute dtype. Matrices
        stored narrower (bf16) are cast CAST_ROWS rows at a time into a buffer that stays in cache, as in the
        contraction: cast whole, the 1.7B shape's 4.45 GB would become 8.9 GB of float32 copies, written
        and read again (1.5-2.3 s against 0.4-0.6 s, benchmarks/README.md)."""
        d = b_dec.shape[-1]
        out = b_dec.to(self.compute_dtype).view(self.n_layers, 1, d).expand(-1, self.n_pos, -1).clone()
        for q in range(self.n_pos):
            if not self.entries[q]:
                continue
            a = torch.cat([values[lay.first + e : lay.first + e + c] for lay, e, c, _ in self.entries[q]])
            a = a.to(out.dtype).to(out.device)
            for t in range(self.n_layers):
                for r0, block in _row_blocks(self.mats[q][t], out.dtype, self.scratch):
                    out[t, q].addmv_(block.T, a[r0 : r0 + len(block)])
        return out


@dataclass
class RowStats:
    """What the rows cost: sub-batches (backward passes), sweeps, FLOPs done, seconds per part."""

    n_backward: int = 0
    n_sweeps: int = 0
    flops_ideal: int = 0
    flops_decoder: int = 0  # the decoder contractions' part of flops_ideal
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
        gradient_bytes: int = GRADIENT_BYTES,
        out_dtype: torch.dtype = torch.float32,
        block_bytes: int = 256 << 20,
        band_rows: int = 128,
        by_target: DecoderByTarget | None = None,
        *,
        workspace: Workspace,
    ):
        self.model, self.decoder = model, decoder
        self.dtype = model.dtype
        self.n_layers, self.n_pos = errors.shape[:2]
        self.d_model = errors.shape[-1]
        self.acts = activations.to(self.dtype)
        self.errors_T = [e.to(self.dtype).T.contiguous() for e in errors]  # [d_model, pos] per layer
        self.embed_T = embed.to(self.dtype).T.contiguous()  # [d_model, pos]
        self.n_active = len(activations)
        self.batch_size = batch_size
        self.gradient_bytes = gradient_bytes
        self.block_bytes = block_bytes
        self.out_dtype = out_dtype
        self.band_rows = band_rows
        self.by_target = by_target
        self.stats = RowStats()
        self._dec_flops_per_pos = self._decoder_flops_table()
        self.scratch = workspace

    @property
    def n_sources(self) -> int:
        return n_source_columns(self.n_active, self.n_layers, self.n_pos)

    def _decoder_flops_table(self, keep: Tensor | None = None) -> list[list[int]]:
        """T[s][q] = 2 * d_model * sum over active features (those in `keep` if given) at layer k < s,
        position <= q of (s - k)."""
        L, P = self.n_layers, self.n_pos
        count = torch.zeros(L, P, dtype=torch.long)
        for lay in self.decoder.layouts:
            for p, e, n in lay.spans:
                count[lay.layer, p] += (
                    n if keep is None else int(keep[lay.first + e : lay.first + e + n].sum())
                )
        cum = count.cumsum(1)  # features at layer k with position <= q
        table = torch.zeros(L + 1, P, dtype=torch.long)
        for s in range(L + 1):
            for k in range(min(s, L)):
                table[s] += (s - k) * cum[k]
        return (2 * self.d_model * table).tolist()

    def row_flops(self, sites: Tensor, positions: Tensor, keep: Tensor | None = None) -> tuple[int, int]:
        """(all, decoder) FLOPs of these rows done ideally: each row's transposed pass through the layers at
        and below its target, up to its position, plus its decoder contractions (layers below its target,
        positions up to its own; with `keep`, only the kept features'); errors and tokens (d_model per
        source) are included in all."""
        total = decoder = 0
        d = self.d_model
        table = self._dec_flops_per_pos if keep is None else self._decoder_flops_table(keep)
        for s, q in zip(sites.tolist(), positions.tolist(), strict=True):
            dec = table[s][q]
            total += self.model.flops(s, q) + dec + 2 * d * (q + 1) * (min(s, self.n_layers) + 1)
            decoder += dec
        return total, decoder

    def rows(
        self,
        sites: Int[Tensor, " n"],
        positions: Int[Tensor, " n"],
        readouts: Float[Tensor, "n d_model"],
        out: Float[Tensor, "n n_sources"] | None = None,
        features: Int[Tensor, " k"] | None = None,
    ) -> Float[Tensor, "n n_sources"]:
        """Edge rows of targets read at (site, position) by `readouts` (resid-stream vectors, see
        `TransposedModel.backward`); written into `out` (zeroed first) if given. `features` (indices of
        active features): only their columns are computed, the other features' stay zero (for rows whose
        other columns nobody reads: the last rows of a graph, after which no influence is refreshed).

        Rows go in sweeps of at most `gradient_bytes` of gradients (at least 4 sub-batches). A sweep runs
        its rows down the model in sub-batches of `batch_size` rows of nearby positions (each only through
        the layers below its target and the positions up to the sub-batch's last), writing errors' and
        tokens' edges on the way and the gradients at the MLP outputs into one buffer G; then every decoder
        block is contracted once with all of them.
        """
        n = len(sites)
        if out is None:
            out = torch.zeros(n, self.n_sources, dtype=self.out_dtype, device=readouts.device)
        else:
            out.zero_()
        keep = None
        if features is not None:
            keep = torch.zeros(self.n_active, dtype=torch.bool)
            keep[features.cpu()] = True
        flops, flops_decoder = self.row_flops(sites, positions, keep)
        self.stats.flops_ideal += flops
        self.stats.flops_decoder += flops_decoder
        order = torch.argsort(positions.cpu(), stable=True)
        per_row = gradient_row_bytes(self.n_pos, self.n_layers, self.d_model, self.dtype)
        n_sweep = sweep_rows(per_row, self.batch_size, self.gradient_bytes)
        sites_c, positions_c = sites.cpu(), positions.cpu()
        # one buffer for G at its largest (every sweep's G is a prefix): no second round of page faults
        self.scratch(
            "G", (self.n_pos, self.n_layers, self.d_model, min(n, n_sweep)), self.dtype, readouts.device
        )
        for chunk in order.split(n_sweep):
            t0 = time.perf_counter()
            sweep = Sweep(sites_c[chunk], positions_c[chunk], self.batch_size, self.n_layers, self.band_rows)
            # the gradients at the MLP outputs; not zeroed: what the contraction reads is written
            G = self.scratch(
                "G", (sweep.n_pos, sweep.top, self.d_model, sweep.n_rows), self.dtype, readouts.device
            )
            for sub in sweep.sub_batches:
                rows = chunk[sub.rows]
                self._backward(sweep, sub, G, rows.to(out.device), readouts[rows.to(readouts.device)], out)
                self.stats.n_backward += 1
            t1 = time.perf_counter()
            self._contract_features(sweep, G, chunk[sweep.rows_by_column].to(out.device), out, keep)
            self.stats.seconds["gradients"] += t1 - t0
            self.stats.seconds["contract"] += time.perf_counter() - t1
            self.stats.n_sweeps += 1
        return out

    def _backward(self, sweep: Sweep, sub: SubBatch, G: Tensor, rows_out: Tensor, readouts, out) -> None:
        """One sub-batch: errors' and tokens' edges into `out` (its rows `rows_out`), its gradients at the
        MLP outputs into its G columns (`sub.runs`), at each layer for the rows above it only, with zeros
        after its last position up to its band's."""
        dev = out.device
        err0 = self.n_active
        positions = sub.positions.to(dev)

        def at_mlp_out(j: int, m: int, g: Tensor) -> None:
            if m == 0:
                return
            p = g.shape[2]
            for r0, r1, c0 in sub.runs:  # rows with site > j (a prefix): the only ones read at layer j
                if r0 >= m:
                    break
                w = min(r1, m) - r0
                G[:p, j, :, c0 : c0 + w].copy_(g[:, r0 : r0 + w].permute(2, 0, 1))
                if p <= sub.last:
                    G[p : sub.last + 1, j, :, c0 : c0 + w].zero_()
            err = (g[:, :m] * self.errors_T[j][:, None, :p]).sum(0)  # [m, p]
            err_cols = err0 + j * self.n_pos + torch.arange(p, device=dev)
            out[rows_out[:m, None], err_cols[None, :]] = err.to(out.dtype)

        g = self.model.backward(sub.sites.to(dev), positions, readouts, at_mlp_out)
        p = g.shape[2]
        tok = (g * self.embed_T[:, None, :p]).sum(0)  # [n, p]
        start = self.n_active + self.n_layers * self.n_pos
        out[rows_out, start : start + p] = tok.to(out.dtype)

    def _contract_features(
        self, sweep: Sweep, G: Tensor, out_rows: Tensor, out: Tensor, keep: Tensor | None = None
    ) -> None:
        """Feature columns: act_f * sum_{l = k_f}^{s - 1} W_dec_{k_f}[f, l] . G[p_f, l, :, row] for the rows
        with site s > k_f and position >= p_f.

        Source layers go in groups (decoder rows held in memory, or read once per sweep up to `block_bytes`).
        Per position, the group's features there (ordered by layer) are cast into blocks [features, target
        layer, d_model] of at most `block_bytes`; per target layer l the features of layers <= l are a prefix,
        and in every band that reaches the position the rows with site > l are a prefix of its columns (its
        rows before the position hold exact zeros there): one matrix product [features <= l, d] x [d, rows]
        per (position, block, target layer, band), no row multiplied at a layer it does not reach,
        accumulated over l in a [features, rows] result that is scaled by the activations and written once.
        `keep` (a mask over active features): only those are contracted.
        """
        if self.by_target is not None:
            return self._contract_by_target(sweep, G, out_rows, out, keep)
        top, P = sweep.top, sweep.n_pos
        layouts = [lay for lay in self.decoder.layouts if lay.layer < top]
        for group in self._layer_groups(layouts):
            rows = {lay.layer: self.decoder.read(lay) for lay in group}
            for pos in range(P):
                spans = [
                    (lay, e2, c2)
                    for lay in group
                    for q, e, c in lay.spans
                    if q == pos
                    for e2, c2 in _kept_runs(lay.first, e, c, keep)
                ]
                for chunk in self._chunks(spans, top):
                    self._contract_chunk(chunk, rows, pos, sweep, G, out_rows, out)
            del rows

    def _contract_by_target(
        self, sweep: Sweep, G: Tensor, out_rows: Tensor, out: Tensor, keep: Tensor | None = None
    ) -> None:
        """As `_contract_features`, with `DecoderByTarget`'s matrices: per (position, target layer, band)
        one product [features <= t, d] x [d, rows above t] on matrices built once per graph (with `keep`,
        the kept features' rows of them, gathered)."""
        bt = self.by_target
        for pos in range(sweep.n_pos):
            if keep is None:
                entries, local = bt.entries[pos], None
            else:
                entries, local = _kept_entries(bt.entries[pos], keep)
            n_feat = bt.below[pos][sweep.top - 1] if local is None else len(local)
            if not n_feat:
                continue
            res = self.scratch("res", (n_feat, sweep.n_rows), self.dtype, G.device).zero_()
            for t in range(sweep.top):
                A = bt.mats[pos][t]
                if local is not None:  # the kept features of layers <= t: a prefix of `local`
                    m = int(torch.searchsorted(local, bt.below[pos][t]))
                    A = torch.index_select(
                        A,
                        0,
                        local[:m].to(A.device),
                        out=self.scratch("kept rows", (m, self.d_model), A.dtype, A.device),
                    )
                _band_products(res, A, G, pos, t, sweep, self.scratch)  # A stored narrower: cast in blocks
            # features of layers >= top: no row of the sweep reaches them, their columns stay zero
            reached = [entry for entry in entries if entry[0].layer < sweep.top]
            self._write_features(res, reached, out_rows, out)

    def _layer_groups(self, layouts: list[Layout]) -> list[list[Layout]]:
        """Consecutive source layers whose rows not held by the decoder cache fit `block_bytes` together."""
        groups: list[list[Layout]] = [[]]
        size = 0
        for lay in layouts:
            extra = 0 if lay.layer in self.decoder.cached else self.decoder.layer_bytes(lay)
            if groups[-1] and size + extra > self.block_bytes:
                groups.append([])
                size = 0
            groups[-1].append(lay)
            size += extra
        return [g for g in groups if g]

    def _chunks(self, spans: list, top: int) -> list[list]:
        """Consecutive spans whose block [features, top - first layer, d_model] fits `block_bytes`."""
        item = self.d_model * torch.finfo(self.dtype).bits // 8
        chunks: list[list] = []
        for span in spans:
            if chunks:
                k0 = chunks[-1][0][0].layer
                n = sum(c for _, _, c in chunks[-1]) + span[2]
                if n * (top - k0) * item <= self.block_bytes:
                    chunks[-1].append(span)
                    continue
            chunks.append([span])
        return chunks

    def _contract_chunk(self, chunk: list, rows: dict, pos: int, sweep: Sweep, G, out_rows, out) -> None:
        top, d = sweep.top, self.d_model
        k0 = chunk[0][0].layer
        n_feat = sum(c for _, _, c in chunk)
        block = self.scratch("block", (n_feat, top - k0, d), self.dtype, G.device)
        below = [0] * (top - k0)  # features of layers <= l (a prefix), per target layer l
        off, placed = 0, []  # (layout, first entry, count, row in block)
        for lay, e, c in chunk:
            k = lay.layer
            placed.append((lay, e, c, off))
            block[off : off + c, k - k0 :] = rows[k][lay.inverse[e : e + c], : top - k]
            for t in range(k, top):
                below[t - k0] = off + c
            off += c
        res = self.scratch("res", (n_feat, sweep.n_rows), self.dtype, G.device).zero_()
        for t in range(k0, top):  # target layer
            _band_products(res, block[: below[t - k0], t - k0], G, pos, t, sweep, self.scratch)
        self._write_features(res, placed, out_rows, out)

    def _write_features(self, res: Tensor, entries, out_rows: Tensor, out: Tensor) -> None:
        """Feature columns of `out` from the contraction's result: for each (layout, first entry, count,
        row in res), res's rows [features, sweep rows] scaled by the activations, into the rows out_rows."""
        for lay, e, c, off in entries:
            acts = self.acts[lay.first + e : lay.first + e + c, None]
            dst = out[:, lay.first + e : lay.first + e + c]
            dst.index_copy_(0, out_rows, (res[off : off + c] * acts).T.to(out.dtype))


def _kept_runs(first: int, e: int, c: int, keep: Tensor | None) -> list[tuple[int, int]]:
    """(start entry, count) of the stretches of entries e..e + c of a layout (active features first + e...)
    that `keep` keeps; all of them without `keep`."""
    if keep is None:
        return [(e, c)]
    kept = keep[first + e : first + e + c].nonzero().squeeze(-1)
    return [(e + int(kept[i]), j - i) for i, j in consecutive_spans(kept)]


def _kept_entries(entries: list, keep: Tensor) -> tuple[list, Tensor]:
    """`DecoderByTarget.entries[pos]` restricted to the kept features: (layout, first entry, count, row in
    the result) per kept stretch, and the kept features' rows in the position's matrices (ascending)."""
    kept, local, n = [], [], 0
    for lay, e, c, off in entries:
        for e2, c2 in _kept_runs(lay.first, e, c, keep):
            kept.append((lay, e2, c2, n))
            local.append(torch.arange(off + e2 - e, off + e2 - e + c2))
            n += c2
    return kept, (torch.cat(local) if local else torch.zeros(0, dtype=torch.long))


def _band_products(
    res: Tensor, A: Float[Tensor, "n d"], G: Tensor, pos: int, t: int, sweep: Sweep, scratch: Workspace
) -> None:
    """res[:n, rows] += A @ G[pos, t, :, rows] over the rows above target layer t of every band that reaches
    `pos` (a prefix of each band's columns): the contraction's products at one (position, target layer).

    Stretches of columns GATHER_BELOW_WIDTH wide or more on average get a product each; narrower ones are
    gathered into one matrix first (once for all of A), so that A (up to GBs of decoder rows over a sweep)
    is read once instead of once per band: at high target layers each band has only a few rows above t,
    and a product with few columns runs at a quarter of the matmul rate or less (A is re-read from memory
    for each). A stored narrower than G (bf16) is cast CAST_ROWS rows at a time into a block that stays in
    cache, each block multiplied by every stretch before the next is cast."""
    runs = sweep.column_runs(pos, t)
    if not runs or not len(A):
        return
    if len(runs) == 1 or sum(w for _, w in runs) >= GATHER_BELOW_WIDTH * len(runs):  # a product per stretch
        for r0, a in _row_blocks(A, G.dtype, scratch):
            for start, width in runs:
                res[r0 : r0 + len(a), start : start + width].addmm_(a, G[pos, t, :, start : start + width])
        return
    idx = sweep.column_index(pos, t, G.device)
    gathered = scratch("gathered G", (G.shape[2], len(idx)), G.dtype, G.device)
    torch.index_select(G[pos, t], 1, idx, out=gathered)
    for r0, a in _row_blocks(A, G.dtype, scratch):
        part = scratch("gathered res", (len(a), len(idx)), G.dtype, G.device)
        part.addmm_(a, gathered, beta=0)  # beta 0: part's old contents are not read
        res[r0 : r0 + len(a)].index_add_(1, idx, part)


def _row_blocks(A: Tensor, dtype: torch.dtype, scratch: Workspace):
    """(first row, rows) of A in `dtype`: A whole, or CAST_ROWS rows at a time cast into one workspace
    buffer (`cast_row_blocks`)."""
    if A.dtype == dtype:
        return [(0, A)]
    buffer = scratch("cast rows", (min(CAST_ROWS, len(A)), A.shape[1]), dtype, A.device)
    return cast_row_blocks(A, dtype, block_rows=CAST_ROWS, buffer=buffer)


@dataclass
class Band:
    """Sweep rows of consecutive sub-batches (positions ascending), G's columns start..start + n by site
    descending: the rows with site > t are the prefix n_above[t]. G holds every band row up to `last`
    (positions after a row's sub-batch are zeroed: attention is causal, its rows there are exact zeros)."""

    start: int
    n: int
    last: int  # the band's last position
    n_above: list[int]  # per target layer t < top: band rows with site > t


@dataclass
class SubBatch:
    """Rows run down the model together: sweep rows `rows`, sorted by site descending. `runs`: (first row,
    end row, first G column) of its rows' consecutive G columns, in row order; `last`: the last position of
    its band (G is zeroed for its rows after its own positions)."""

    rows: Tensor
    sites: Tensor
    positions: Tensor
    runs: list[tuple[int, int, int]]
    last: int


class Sweep:
    """Rows contracted together (sweep rows 0..n_rows, with `sites` and `positions`).

    Sub-batches: `batch_size` rows in order of position, each sorted by site descending (the transposed
    pass runs the rows with site >= j at layer j, a prefix). Bands: consecutive sub-batches of at least
    `band_rows` rows (cut only where the position changes); G's columns are band-major, by site descending
    within a band, so for a target layer t the rows with site > t are a prefix of every band, and a
    (position, target layer, band) is one product with no zero columns from sites.
    """

    def __init__(self, sites: Tensor, positions: Tensor, batch_size: int, n_layers: int, band_rows: int):
        self.n_rows = len(sites)
        self.top = min(int(sites.max()), n_layers)
        self.n_pos = int(positions.max()) + 1
        # by position, then site descending: sub-batches of one position are runs of consecutive G columns
        by_site = torch.argsort(sites, descending=True, stable=True)
        by_position = by_site[torch.argsort(positions[by_site], stable=True)]
        subs = []
        for rows in by_position.split(batch_size):
            subs.append(rows[torch.argsort(sites[rows], descending=True, stable=True)])
        lasts = [int(positions[rows].max()) for rows in subs]
        bands: list[list[int]] = [[]]  # sub-batch indices
        for b in range(len(subs)):
            size = sum(len(subs[i]) for i in bands[-1])
            if bands[-1] and size >= band_rows and lasts[b] != lasts[bands[-1][-1]]:
                bands.append([])
            bands[-1].append(b)
        self.bands: list[Band] = []
        self.sub_batches: list[SubBatch] = []
        by_column = []
        col = 0
        for members in bands:
            rows = torch.cat([subs[b] for b in members])
            order = torch.argsort(sites[rows], descending=True, stable=True)
            column = torch.empty(len(rows), dtype=torch.long)
            column[order] = torch.arange(col, col + len(rows))
            band_sites = sites[rows].clamp(max=n_layers)
            n_above = [int((band_sites > t).sum()) for t in range(self.top)]
            last = max(lasts[b] for b in members)
            self.bands.append(Band(col, len(rows), last, n_above))
            i = 0
            for b in members:
                r = subs[b]
                self.sub_batches.append(
                    SubBatch(r, sites[r], positions[r], _runs(column[i : i + len(r)]), last)
                )
                i += len(r)
            by_column.append(rows[order])
            col += len(rows)
        self.rows_by_column = torch.cat(by_column)
        self._lasts = [band.last for band in self.bands]  # ascending: bands follow positions
        self._runs: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._index: dict[tuple[int, int, torch.device], Tensor] = {}

    def column_runs(self, pos: int, t: int) -> list[tuple[int, int]]:
        """(first column, width) of the maximal stretches of G columns that a (position, target layer)
        product reads: the rows above t of every band that reaches `pos` (those are the bands from the
        first whose last position is >= pos)."""
        first = bisect.bisect_left(self._lasts, pos)
        key = (first, t)
        if key not in self._runs:
            runs: list[tuple[int, int]] = []
            for band in self.bands[first:]:
                width = band.n_above[t]
                if not width:
                    continue
                if runs and sum(runs[-1]) == band.start:
                    runs[-1] = (runs[-1][0], runs[-1][1] + width)
                else:
                    runs.append((band.start, width))
            self._runs[key] = runs
        return self._runs[key]

    def column_index(self, pos: int, t: int, device) -> Int[Tensor, " m"]:
        """The columns of `column_runs(pos, t)`, one by one, on `device`."""
        key = (bisect.bisect_left(self._lasts, pos), t, torch.device(device))
        if key not in self._index:
            runs = self.column_runs(pos, t)
            self._index[key] = torch.cat([torch.arange(s, s + w) for s, w in runs]).to(device)
        return self._index[key]


def _runs(columns: Tensor) -> list[tuple[int, int, int]]:
    """(first, end, first column) of the maximal stretches of consecutive `columns`."""
    return [(i, j, int(columns[i])) for i, j in consecutive_spans(columns)]
