"""Measure how exactly graph edges match interventions in the frozen model, and time one graph.

Usage: python benchmarks/exactness.py [--layers 4] [--d-model 64] [--features 96] [--seed 0]
Prints the max |edge - measured effect| over every (source, target) pair of sampled sources, relative
to the largest edge, for feature, error and token sources; and the wall time of `attribute`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")

from frozen_reference import FrozenReference, target_rows  # noqa: E402

import tl_clt  # noqa: E402
from tl_clt import synthetic  # noqa: E402

PROMPT = "Fact: The president of the United States in 2010 was"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--features", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    tmp = Path(tempfile.mkdtemp())
    heads = max(1, args.d_model // 16)
    mdir = synthetic.make_qwen3_folder(
        tmp / "m",
        seed=args.seed,
        num_hidden_layers=args.layers,
        hidden_size=args.d_model,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=16,
        intermediate_size=2 * args.d_model,
        initializer_range=0.1,
    )
    cdir = synthetic.make_random_clt_folder(
        tmp / "c", args.layers, args.d_model, args.features, seed=args.seed, model_name=str(mdir)
    )
    model = tl_clt.load_qwen3(mdir, dtype=dtype)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(cdir, dtype=dtype)
    tl_clt.attribute(model, clt, PROMPT, verbose=False)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        graph = tl_clt.attribute(model, clt, PROMPT, batch_size=64, verbose=False)
        times.append(time.perf_counter() - t0)
    ref = FrozenReference(
        model, cdir, tl_clt.to_tokens(model, PROMPT), graph.active_features, graph.activation_values.to(dtype)
    )
    rows = target_rows(graph)
    scale = graph.adjacency.abs().max().item()
    sources = {
        "feature": range(graph.n_features),
        "error": [(layer, p) for layer in range(graph.n_layers) for p in range(1, graph.n_pos)],
        "token": range(graph.n_pos),
    }
    worst = {}
    for kind, items in sources.items():
        errs = [
            (graph.adjacency[rows, col].double() - measured.double()).abs().max().item()
            for col, measured in (ref.double_source(graph, kind, s) for s in items)
        ]
        worst[kind] = max(errs)
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, {args.features} features/layer, "
        f"{args.dtype}; prompt {graph.n_pos} tokens; {graph.n_features} active features; "
        f"{graph.n_logits} logits"
    )
    print(f"time per graph (best of 3): {min(times) * 1000:.1f} ms")
    print(f"largest |edge|: {scale:.4g}")
    print("source kind | max |edge - measured| | relative to largest edge")
    for kind, err in worst.items():
        print(f"{kind:11s} | {err:.3e}             | {err / scale:.3e}")


if __name__ == "__main__":
    main()
