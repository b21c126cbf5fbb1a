"""Benchmark `tl_clt.attribute_many`: prompts per minute with 1 and 2 Ray workers, and the engine's overhead.

    PYTHONPATH=. python benchmarks/batch.py                                 # medium throughput, tiny overhead
    PYTHONPATH=. python benchmarks/batch.py --prompts 40 --workers 1,2,4    # on a bigger machine
    PYTHONPATH=. python benchmarks/batch.py --gpus-per-worker 1 --workers 1 # one worker per GPU

Throughput (`--size`, default medium): the same prompts through the local engine (this process, 1 torch
thread) and through Ray with 1, 2, ... workers (1 CPU and 1 torch thread each). *Steady* prompts/minute
counts from the first finished prompt to the last, so loading the model in the workers is left out and
reported on its own (*start s*: from the call to the first finished prompt, minus that prompt's own time).

Overhead (`--overhead-size`, default tiny, where a graph takes milliseconds): per prompt, the time between
two consecutive finished prompts minus the worker's own time for the second (attribute, prune, score and
write the files): what the engine adds (queue, Ray calls, pickling, the manifest line). Median over the
prompts, local vs Ray with one worker.

Data are made once under --root (git-ignored .bench/) by `sizes.build`; the run folders are temporary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sizes  # noqa: E402

import tl_clt  # noqa: E402


def make_prompts(model_dir: Path, n: int, length: int) -> list[list[int]]:
    """n different prompts of `length` tokens (sink included): windows over the synthetic corpus."""
    from transformers import AutoTokenizer

    from tl_clt import synthetic

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(" ".join(synthetic._CORPUS * 4), add_special_tokens=False)["input_ids"]
    sink = tok.convert_tokens_to_ids("<|endoftext|>")
    step = max(1, (len(ids) - length) // n)
    return [[sink] + ids[i * step : i * step + length - 1] for i in range(n)]


def run_once(model_dir, clt_dir, prompts, engine: str, workers: int, args) -> dict:
    """One attribute_many run in a fresh folder; timings from the manifest records as they arrive."""
    stamps: list[tuple[float, dict]] = []
    kwargs = dict(engine=engine, max_n_logits=args.max_n_logits, batch_size=args.batch_size, verbose=False)
    if engine == "ray":
        kwargs.update(workers=workers, gpus_per_worker=args.gpus_per_worker)
    with tempfile.TemporaryDirectory(dir=args.root) as out:
        start = time.perf_counter()
        tables = tl_clt.attribute_many(
            str(model_dir),
            str(clt_dir),
            [{"prompt": p} for p in prompts],
            Path(out) / "run",
            on_record=lambda r: stamps.append((time.perf_counter(), r)),
            **kwargs,
        )
        total = time.perf_counter() - start
    assert (tables.manifest["status"] == "done").all(), tables.manifest["error"].dropna().tolist()
    times = [t for t, _ in stamps]
    own = [r["seconds_total"] for _, r in stamps]
    cpu = statistics.mean(r["cpu_seconds"] for _, r in stamps)
    gaps = [b - a - s for a, b, s in zip(times, times[1:], own[1:])]
    steady = (times[-1] - times[0]) / (len(times) - 1)
    return {
        "engine": engine,
        "workers": workers,
        "prompts": len(prompts),
        "total_s": total,
        "start_s": times[0] - start - own[0],
        "steady_prompts_per_min": 60.0 / steady,
        "worker_s_per_prompt": statistics.mean(own),
        "worker_cpu_s_per_prompt": cpu,
        # what `workers` single-threaded workers would reach with a core each and no waiting
        "cpu_bound_prompts_per_min": 60.0 * workers / cpu,
        "overhead_ms_median": 1000 * statistics.median(gaps),
        "n_workers_used": len({r["worker_pid"] for _, r in stamps}),
        "load": os.getloadavg()[0],
    }


def table(rows: list[dict], keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=HERE.parent / ".bench")
    p.add_argument("--size", default="medium", choices=sorted(sizes.SIZES))
    p.add_argument("--overhead-size", default="tiny", choices=sorted(sizes.SIZES))
    p.add_argument("--prompts", type=int, default=24, help="prompts in the throughput runs")
    p.add_argument("--overhead-prompts", type=int, default=40)
    p.add_argument("--length", type=int, default=16, help="tokens per prompt, sink included")
    p.add_argument("--workers", default="1,2", help="Ray worker counts to try")
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sections", default="throughput,overhead")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the local engine gets one core, like one Ray worker
    import ray

    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t
    cpus = ray.cluster_resources().get("CPU", 0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (Ray: {cpus:g}); "
        f"torch {torch.__version__}; ray {ray.__version__}; load {os.getloadavg()}; "
        f"ray.init {ray_start:.1f} s\n"
    )
    records = []
    sections = args.sections.split(",")
    try:
        if "throughput" in sections:
            mdir, cdir = sizes.build(args.size, args.root)
            prompts = make_prompts(mdir, args.prompts, args.length)
            rows = [run_once(mdir, cdir, prompts, "local", 1, args)]
            for w in [int(x) for x in args.workers.split(",")]:
                rows.append(run_once(mdir, cdir, prompts, "ray", w, args))
            base = next(r for r in rows if r["engine"] == "ray" and r["workers"] == 1)
            for r in rows:
                r["speedup_vs_1_ray_worker"] = r["steady_prompts_per_min"] / base["steady_prompts_per_min"]
            print(f"### Throughput, {args.size} size, {args.prompts} prompts of {args.length} tokens\n")
            keys = [
                "engine",
                "workers",
                "prompts",
                "steady_prompts_per_min",
                "speedup_vs_1_ray_worker",
                "worker_s_per_prompt",
                "worker_cpu_s_per_prompt",
                "cpu_bound_prompts_per_min",
                "start_s",
                "total_s",
                "n_workers_used",
                "load",
            ]
            print(table(rows, keys) + "\n")
            records += [{"section": "throughput", "size": args.size, **r} for r in rows]
        if "overhead" in sections:
            mdir, cdir = sizes.build(args.overhead_size, args.root)
            prompts = make_prompts(mdir, args.overhead_prompts, args.length)
            rows = [run_once(mdir, cdir, prompts, e, 1, args) for e in ("local", "ray")]
            print(
                f"### Engine overhead per prompt, {args.overhead_size} size, "
                f"{args.overhead_prompts} prompts\n"
            )
            keys = [
                "engine",
                "workers",
                "prompts",
                "worker_s_per_prompt",
                "overhead_ms_median",
                "steady_prompts_per_min",
                "start_s",
                "total_s",
                "load",
            ]
            print(table(rows, keys) + "\n")
            records += [{"section": "overhead", "size": args.overhead_size, **r} for r in rows]
    finally:
        ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
