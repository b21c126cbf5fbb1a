"""What both benchmark runners share: the command line, timing, peak RSS and the result record.

Imported by `ours_runner.py` (tl_clt, TransformerLens 3) and `ct_runner.py` (circuit-tracer,
TransformerLens 2.x, another venv), so it may import only the standard library and torch.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
RESULT_TAG = "BENCH_RESULT "


def parse_args(
    description: str, extra: list[tuple[str, str]] = (), options: list[tuple[str, str | None, str]] = ()
) -> argparse.Namespace:
    """The runners' shared command line (all of it is set by bench.py), plus `extra` flags and `options`
    (flag, default, help) taking a value."""
    ap = argparse.ArgumentParser(description=description)
    for flag, help_text in extra:
        ap.add_argument(flag, action="store_true", help=help_text)
    for flag, default, help_text in options:
        ap.add_argument(flag, default=default, help=help_text)
    ap.add_argument("--model", type=Path, required=True, help="Qwen3 HF folder")
    ap.add_argument("--clt", type=Path, required=True, help="CLT folder (split safetensors format)")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids, sink token first")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype")
    ap.add_argument(
        "--clt-dtype", default="same", choices=["same", "disk", *sorted(DTYPES)], help="CLT dtype"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--max-n-logits", type=int, default=10)
    ap.add_argument("--desired-logit-prob", type=float, default=0.95)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="graphs built; the best time is reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--save-graph", type=Path, default=None, help="write the graph's tensors here")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the last graph into this file")
    ap.add_argument(
        "--torch-profile", type=Path, default=None, help="torch.profiler table of the last graph (text file)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def matmul_rate(
    dtype: torch.dtype, n: int | None = None, repeats: int = 5, device: str = "cpu", clock=time.perf_counter
) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` on this machine now (best of `repeats`): the roofline.

    n: 2048 on a CPU (512 for bf16 / fp16, which this CPU multiplies at ~1 GFLOP/s: 2048 took minutes),
    8192 on a GPU (smaller products there are too short to reach its rate).
    `clock=time.process_time` gives the rate per CPU second (robust to a shared machine's time slicing)."""
    if n is None:
        n = 8192 if device != "cpu" else 2048 if dtype in (torch.float32, torch.float64) else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = clock()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return 2 * n**3 / max(best, 1e-9)


def token_list(args: argparse.Namespace) -> list[int]:
    return [int(t) for t in args.tokens.split(",")]


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _gpu_in_use() -> bool:
    """A CUDA device exists and this process has used it."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def gpu_allocated_mib() -> float | None:
    """GPU memory held by tensors now (None without a GPU in use)."""
    if _gpu_in_use():
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() / 2**20
    return None


def timed(fn: Callable, *a, **kw):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def repeat_graphs(args: argparse.Namespace, build: Callable[[], object]) -> tuple[object, list[float]]:
    """Build the graph `args.repeats` times (the last one under cProfile if asked); returns it and times."""
    times, graph = [], None
    args.cpu_times = []
    for i in range(args.repeats):
        cpu0 = time.process_time()
        if args.torch_profile is not None and i == args.repeats - 1:
            graph, sec = _torch_profiled(build, args.torch_profile)
        elif args.profile is not None and i == args.repeats - 1:
            import cProfile

            prof = cProfile.Profile()
            graph, sec = timed(prof.runcall, _synced(build))
            prof.dump_stats(str(args.profile))
        else:
            graph, sec = timed(_synced(build))
        times.append(sec)
        args.cpu_times.append(time.process_time() - cpu0)
    return graph, times


def _torch_profiled(build: Callable[[], object], path: Path) -> tuple[object, float]:
    """(graph, seconds) of one build under torch.profiler; writes its ops table, the GPU's time first."""
    from torch.profiler import ProfilerActivity, profile

    gpu = _gpu_in_use()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        graph, sec = timed(_synced(build))
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=50)
    path.write_text(f"{sec:.3f} s under the profiler\n{table}")
    return graph, sec


def _synced(build: Callable[[], object]) -> Callable[[], object]:
    """build, returning only once the GPU's queued work is done (so that its time counts)."""

    def run():
        out = build()
        if _gpu_in_use():
            torch.cuda.synchronize()
        return out

    return run


def emit(record: dict) -> None:
    """Print the result record as one tagged JSON line (bench.py picks it out of stdout)."""
    record["peak_rss_mib"] = peak_rss_mib()
    if _gpu_in_use():
        record["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        record["gpu"] = torch.cuda.get_device_name()
    record["threads"] = torch.get_num_threads()
    sys.stdout.write(RESULT_TAG + json.dumps(record) + "\n")
    sys.stdout.flush()


def save_graph(path: Path, **tensors) -> None:
    """The graph as plain tensors (both venvs run the same torch, so bench.py can read it)."""
    torch.save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}, path)
