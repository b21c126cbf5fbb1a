"""Count the tensor-to-Python reads (`int()`, `float()`, `bool()`, `.item()`, `.tolist()`) of one `attribute`
call, by source line. On a GPU each read of a device tensor waits for the device's queue: this finds them on a
CPU run.

    PYTHONPATH=. python benchmarks/scalar_reads.py --size real --nodes 8192 [--root .bench] [--most 15]
"""

from __future__ import annotations

import argparse
import collections
import time
import traceback
from pathlib import Path

import sizes
import torch

import tl_clt

READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")


def count_reads(fn) -> collections.Counter:
    """Run fn() with every tensor-to-Python read counted by (read, file, line, function)."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        original = originals[name]

        def read(self, *a, **kw):
            frame = traceback.extract_stack(limit=2)[0]
            counts[(name, Path(frame.filename).name, frame.lineno, frame.name)] += 1
            return original(self, *a, **kw)

        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, counted(name))
        fn()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes.size_arguments(ap, batch_size=256)
    ap.add_argument("--most", type=int, default=15)
    args = ap.parse_args()
    model, clt, tokens = sizes.loaded(args)

    def graph():
        kw = dict(max_feature_nodes=args.nodes, batch_size=args.batch_size, verbose=False)
        return tl_clt.attribute(model, clt, tokens, **kw)

    graph()  # warm-up: one-time reads (loading, first use) are not counted
    t0 = time.perf_counter()
    counts = count_reads(graph)
    seconds = time.perf_counter() - t0
    print(f"{args.size}, {args.length} tokens, max_feature_nodes {args.nodes}: {seconds:.1f} s (counted)")
    print("\n| reads | read | file:line | function |\n|---|---|---|---|")
    for (name, file, line, func), n in counts.most_common(args.most):
        print(f"| {n} | {name} | {file}:{line} | {func} |")
    print(f"\ntotal: {sum(counts.values())} reads")


if __name__ == "__main__":
    main()
