"""Where one graph's time goes against the roofline: the transposed engine's matrix products timed one by one.

    PYTHONPATH=. python benchmarks/time_split.py --size medium [--nodes N] [--root .bench] [--threads 1]

Builds (or reuses) a size from `sizes.py`, runs one warm-up graph, then one graph (both with one
`tl_clt.Workspace`, as a many-prompt run; `--fresh-buffers`: without) with every `torch.mm`
(the passes' W_O^T and W_V^T products), `torch.bmm` / `baddbmm_` (the frozen pattern, per head) and `addmm_`
(the decoder contraction) timed and their FLOPs counted (CPU only: the calls are synchronous there). Prints a
table: FLOPs, seconds and rate per kind, the rest of the graph (setup, copies, element-wise work, Python),
and the roofline: the graph's ideal FLOPs (`graph.meta["row_flops"]`) over the 2048-sized matmul rate of
the same process. "floor" is what the ratio would be if everything but these products took no time: the
products at the rates they reach at the graph's own shapes. Then the passes' products by their number of
columns (rows reaching the layer x positions: few columns run far below the machine's rate), and the
decoder contraction's FLOPs done against its ideal (`graph.meta["row_flops_decoder"]`).
"""

from __future__ import annotations

import argparse
import time

import sizes
import torch
from runner_common import matmul_rate

import tl_clt


class ProductTimer:
    """Wraps torch.mm, torch.bmm, Tensor.baddbmm_ and Tensor.addmm_ while active: seconds, FLOPs per kind of
    the calls made inside `EdgeRows.rows` (the rows' passes and contractions; setup's products are not)."""

    KINDS = {"mm": "passes: W_O^T, W_V^T", "bmm": "pattern^T", "addmm_": "decoder contraction"}

    COLUMN_BUCKETS = (0, 128, 256, 512, 1024)  # the passes' products by their columns (rows x positions)

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self.flops = dict.fromkeys(self.KINDS, 0)
        self.calls = dict.fromkeys(self.KINDS, 0)
        self.passes = {b: [0, 0.0, 0] for b in self.COLUMN_BUCKETS}  # bucket: [calls, seconds, FLOPs]

    def _timed(self, kind, fn, flops):
        def wrapped(*args, **kwargs):
            if not self.in_rows:  # setup's products (the encoders' blocks) are not the passes'
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds, n = time.perf_counter() - t0, flops(*args)
            self.seconds[kind] += seconds
            self.flops[kind] += n
            self.calls[kind] += 1
            if kind == "mm":
                bucket = self.passes[max(b for b in self.COLUMN_BUCKETS if b <= args[1].shape[1])]
                bucket[0], bucket[1], bucket[2] = bucket[0] + 1, bucket[1] + seconds, bucket[2] + n
            return out

        return wrapped

    def __enter__(self) -> ProductTimer:
        from tl_clt.transpose import EdgeRows

        self.in_rows = False
        rows = self._rows = EdgeRows.rows

        def counted_rows(edge_rows, *args, **kwargs):
            self.in_rows = True
            try:
                return rows(edge_rows, *args, **kwargs)
            finally:
                self.in_rows = False

        EdgeRows.rows = counted_rows
        self._saved = (torch.mm, torch.bmm, torch.Tensor.baddbmm_, torch.Tensor.addmm_)
        torch.mm = self._timed("mm", torch.mm, lambda a, b, **_: 2 * a.shape[0] * a.shape[1] * b.shape[1])
        bmm_flops = lambda a, b, **_: 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]  # noqa: E731
        torch.bmm = self._timed("bmm", torch.bmm, bmm_flops)
        baddbmm_flops = lambda s, a, b, **_: bmm_flops(a, b)  # noqa: E731
        torch.Tensor.baddbmm_ = self._timed("bmm", torch.Tensor.baddbmm_, baddbmm_flops)
        torch.Tensor.addmm_ = self._timed(
            "addmm_", torch.Tensor.addmm_, lambda s, a, b, **_: 2 * a.shape[0] * a.shape[1] * b.shape[1]
        )
        return self

    def __exit__(self, *exc) -> None:
        from tl_clt.transpose import EdgeRows

        torch.mm, torch.bmm, torch.Tensor.baddbmm_, torch.Tensor.addmm_ = self._saved
        EdgeRows.rows = self._rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes.size_arguments(ap, batch_size=64)
    ap.add_argument("--clt-dtype", default="float32", choices=("float32", "disk"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--fresh-buffers", action="store_true", help="no tl_clt.Workspace (default: the graphs share one)"
    )
    ap.add_argument("--band-rows", type=int, default=None, help="what-if: EdgeRows' band_rows (default 128)")
    ap.add_argument("--sweep-mib", type=int, default=None, help="what-if: EdgeRows' gradient_bytes in MiB")
    args = ap.parse_args()
    if args.band_rows or args.sweep_mib:
        from tl_clt import transpose

        init = transpose.EdgeRows.__init__

        def what_if(self, *a, **kw):
            init(self, *a, **kw)
            self.band_rows = args.band_rows or self.band_rows
            self.gradient_bytes = (args.sweep_mib << 20) if args.sweep_mib else self.gradient_bytes

        transpose.EdgeRows.__init__ = what_if
    if args.threads:
        torch.set_num_threads(args.threads)
    model, clt, tokens = sizes.loaded(args, torch.float32 if args.clt_dtype == "float32" else None)

    workspace = None if args.fresh_buffers else tl_clt.Workspace()  # as in a many-prompt run

    def graph():
        kw = dict(max_feature_nodes=args.nodes, batch_size=args.batch_size, verbose=False)
        return tl_clt.attribute(model, clt, tokens, **kw, workspace=workspace)

    graph()  # warm-up
    before = matmul_rate(torch.float32)
    with ProductTimer() as timer:
        t0 = time.perf_counter()
        g = graph()
        total = time.perf_counter() - t0
    after = matmul_rate(torch.float32)
    rate = max(before, after)  # a moment of contention is not the machine's limit
    ideal = g.meta["row_flops"]
    roofline = ideal / rate
    products = sum(timer.seconds.values())
    print(
        f"{args.size}, {args.length} tokens, {len(g.selected_features)} feature nodes, "
        f"batch {args.batch_size}, {'fresh buffers' if args.fresh_buffers else 'one workspace'}, "
        f"{torch.get_num_threads()} threads: graph {total:.3f} s (setup {g.meta['seconds_setup']:.3f} s), "
        f"2048 matmul rate {rate / 1e9:.1f} GFLOP/s (before / after the graph: {before / 1e9:.1f} / "
        f"{after / 1e9:.1f})"
    )
    print("\n| part | calls | GFLOP | s | GFLOP/s | share of the graph |\n|---|---|---|---|---|---|")
    for kind, what in ProductTimer.KINDS.items():
        s, f = timer.seconds[kind], timer.flops[kind]
        print(f"| {what} | {timer.calls[kind]} | {f / 1e9:.2f} | {s:.3f} | {f / max(s, 1e-9) / 1e9:.1f} | "
              f"{s / total:.0%} |")  # fmt: skip
    print(f"| everything else (setup, copies, element-wise, Python) | | | {total - products:.3f} | | "
          f"{(total - products) / total:.0%} |")  # fmt: skip
    print(f"| **graph** | | {ideal / 1e9:.2f} ideal | {total:.3f} | {ideal / total / 1e9:.1f} | 100% |")
    print(
        f"\nroofline {roofline:.3f} s (ideal FLOPs / 2048 rate): ratio {total / roofline:.2f}; "
        f"floor {products / roofline:.2f} (the products alone, at the rates they reach here)"
    )
    print("\n| passes' products by columns (rows x positions) | calls | GFLOP | s | GFLOP/s |")
    print("|---|---|---|---|---|")
    edges = ProductTimer.COLUMN_BUCKETS
    for lo, hi in zip(edges, edges[1:] + (None,), strict=True):
        calls, s, f = timer.passes[lo]
        if calls:
            print(f"| {lo}-{hi - 1 if hi else ''} | {calls} | {f / 1e9:.2f} | {s:.3f} | {f / s / 1e9:.1f} |")
    dec = g.meta["row_flops_decoder"]
    print(
        f"decoder contraction: {timer.flops['addmm_'] / 1e9:.2f} GFLOP done, {dec / 1e9:.2f} ideal "
        f"({timer.flops['addmm_'] / dec:.2f}x): the excess is zeros of band rows before a position"
    )


if __name__ == "__main__":
    main()
