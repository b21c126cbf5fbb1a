"""Feature dashboards on the toy world: tokens/s of `engine="local"` (one process) next to
`engine="ray"` with 1 and 2 workers (one CPU and one torch thread each). Prints a markdown table.

    PYTHONPATH=. python benchmarks/dashboards_engines.py [--repeat 2] [--workers 1,2]

The corpus is the toy world's (4048 sentences, `make_corpus(0)`) `--repeat` times. Rows:
- local: `build_feature_dashboards(model_dir, clt_dir, corpus, out)` end to end (load, build, write), with
  torch at 1 thread (as one Ray worker) ;
- ray cold: the same call with `engine="ray", workers=N`: starts Ray and N workers (each loads the model and
  the CLT), builds the shards, merges, writes;
- ray warm: inside `with RayEngine(workers=N)` after a warm-up build, so the workers are loaded already:
  the steady state of a long build.
Tokens are the corpus tokens the builder counted (`dashboards.json: n_tokens`); every run writes the same
files (checked: byte for byte). `uptime` is printed with the table: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2, help="copies of the toy corpus")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts")
    args = parser.parse_args()

    from tl_clt.batch import RayEngine
    from tl_clt.dashboards import build_feature_dashboards
    from tl_clt.toyworld import toyworld_paths
    from tl_clt.toyworld.corpus import make_corpus
    from tl_clt.toyworld.dashboards import TOY_CONFIG

    torch.set_num_threads(1)
    model_dir, clt_dir = (str(p) for p in toyworld_paths())
    corpus = make_corpus(0) * args.repeat
    tmp = Path(tempfile.mkdtemp(prefix="bench_dash_engines_"))
    rows, reference = [], None

    def run(name: str, n_workers: int, **engine) -> None:
        nonlocal reference
        out = tmp / name.replace(" ", "_")
        start = time.perf_counter()
        build_feature_dashboards(model_dir, clt_dir, corpus, out, config=TOY_CONFIG, progress=False, **engine)
        seconds = time.perf_counter() - start
        n_tokens = json.loads((out / "dashboards.json").read_text())["n_tokens"]
        got = files_of(out)
        reference = reference or got
        rows.append((name, n_workers, n_tokens, seconds, n_tokens / seconds, got == reference))
        print(rows[-1][:5], file=sys.stderr, flush=True)
        shutil.rmtree(out)

    try:
        run("local", 1)
        for n in [int(x) for x in args.workers.split(",")]:
            run("ray cold", n, engine="ray", workers=n)
            with RayEngine(workers=n) as engine:
                build_feature_dashboards(
                    model_dir,
                    clt_dir,
                    corpus[:64],
                    tmp / "warmup",
                    config=TOY_CONFIG,
                    engine=engine,
                    progress=False,
                )  # loads the workers, kept for the next call (same model, CLT, dtype)
                run("ray warm", n, engine=engine)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    local_rate = rows[0][4]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"toy world, {len(corpus)} documents; uptime after the runs: {load}")
    print()
    print("| engine | workers | tokens | seconds | tokens/s | vs local | same files |")
    print("|---|---|---|---|---|---|---|")
    for name, workers, n_tokens, seconds, rate, same in rows:
        ratio = rate / local_rate
        print(f"| {name} | {workers} | {n_tokens} | {seconds:.1f} | {rate:.0f} | {ratio:.2f}x | {same} |")


if __name__ == "__main__":
    main()
