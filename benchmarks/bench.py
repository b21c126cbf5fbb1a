"""Benchmark tl_clt against circuit-tracer 0.5.0 on the same synthetic Qwen3 models and CLTs.

    PYTHONPATH=. python benchmarks/bench.py                      # tiny and medium, every section
    PYTHONPATH=. python benchmarks/bench.py --sizes real --repeats 1 --sections main,equality

Every graph is built in a fresh subprocess (`ours_runner.py` with this Python, `ct_runner.py` with
`--ct-python`), which reports its best-of-N wall time and its own peak RSS (`ru_maxrss`). Sections:
`main` (one row per size and engine), `equality` (ours vs circuit-tracer, same settings), `length`
(prompt lengths), `nodes` (max_feature_nodes), `dtype` (tiny size: bf16 / float32 edges vs float64).
The data are made once under --root (git-ignored .bench/); the real size needs ~20 GB of disk.
Prints markdown tables with the machine load, and writes all records to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import sizes  # noqa: E402
from runner_common import RESULT_TAG  # noqa: E402

DEFAULT_NODES = {"tiny": None, "medium": None, "real": 1024, "1.7b": 1024}
NODE_SWEEP = {
    "tiny": [32, 128, None],
    "medium": [128, 512, None],
    "real": [256, 1024, 2048, 8192],
    "1.7b": [1024, 8192],
}
ENGINES = {"ours": "tl_clt", "ct": "circuit-tracer"}
GPU = [False]  # set by --device cuda: tables get a peak GPU memory column


# ------------------------------------------------------------------------ running one graph
def run_engines(engines, mdir: Path, cdir: Path, tokens: list[int], args, **opts) -> list[dict]:
    """`args.rounds` rounds of one fresh process per engine, interleaved (the load of a shared machine
    drifts); per engine, the record of its fastest round, with every round's best time and peak RSS."""
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for eng in engines:
            rec = run_engine(eng, mdir, cdir, tokens, args, **opts)
            prev = best.get(eng)
            rounds = (prev or {}).get("rounds", []) + [
                [min(rec["times"]), rec["peak_rss_mib"]] if "times" in rec else rec.get("error")
            ]
            if prev is None or _best_time(rec) < _best_time(prev):
                best[eng] = rec
            best[eng]["rounds"] = rounds
    return [best[e] for e in engines]


def _best_time(rec: dict) -> float:
    return min(rec["times"]) if "times" in rec else float("inf")


def run_engine(engine: str, mdir: Path, cdir: Path, tokens: list[int], args, **opts) -> dict:
    """Build graphs in a fresh subprocess; returns its result record (or one with an `error`)."""
    script = HERE / ("ours_runner.py" if engine == "ours" else "ct_runner.py")
    python = sys.executable if engine == "ours" else args.ct_python
    env = dict(os.environ)
    if engine == "ours":
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    else:
        env.pop("PYTHONPATH", None)
    cmd = [python, str(script), "--model", str(mdir), "--clt", str(cdir)]
    cmd += ["--tokens", ",".join(map(str, tokens)), "--batch-size", str(args.batch_size)]
    cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--max-n-logits", str(args.max_n_logits), "--desired-logit-prob", str(args.desired_logit_prob)]
    cmd += ["--dtype", opts.get("dtype", args.dtype), "--repeats", str(opts.get("repeats", args.repeats))]
    if engine == "ours":
        cmd += ["--clt-dtype", args.clt_dtype]
        if opts.get("compute_dtype") or args.compute_dtype:
            cmd += ["--compute-dtype", opts.get("compute_dtype") or args.compute_dtype]
        if args.decoder_cache_gib is not None:
            cmd += ["--decoder-cache-gib", str(args.decoder_cache_gib)]
        if args.fresh_buffers:
            cmd += ["--fresh-buffers"]
    if opts.get("nodes") is not None:
        cmd += ["--max-feature-nodes", str(opts["nodes"])]
    if opts.get("save"):
        cmd += ["--save-graph", str(opts["save"]).replace("ENGINE", engine)]
    if engine == "ours" and args.torch_profile and opts.get("profile"):
        cmd += ["--torch-profile", str(opts["profile"])]
    load_before = os.getloadavg()[0]
    record = _watch(cmd, env, args.rss_limit_gib)
    record.update(engine=engine, load_before=load_before, load_after=os.getloadavg()[0])
    return record


def _watch(cmd: list[str], env: dict, rss_limit_gib: float) -> dict:
    """Run cmd, killing it if its RSS passes the limit (the machine is shared); parse its record."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0.0
    while proc.poll() is None:
        seen = max(seen, _rss_gib(proc.pid))
        if seen > rss_limit_gib:
            proc.kill()
            proc.wait()
            return {"error": f"killed: RSS above {rss_limit_gib} GiB"}
        time.sleep(0.2)
    out, err = proc.communicate()
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    lines = err.strip().splitlines() or ["no output"]
    return {"error": lines[-1][:300], "stderr_tail": "\n".join(lines[-40:])}


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


# ------------------------------------------------------------------------ comparing graphs
def node_keys(g: dict, n_layers: int) -> list[tuple]:
    """Node keys in adjacency order: features (layer, pos, feature), errors, tokens, logits."""
    n_pos = int(g["adjacency"].shape[0] - len(g["selected_features"]) - len(g["logit_tokens"])) // (
        n_layers + 1
    )
    keys = [("F", *k) for k in g["active_features"][g["selected_features"]].tolist()]
    keys += [("E", layer, p) for layer in range(n_layers) for p in range(n_pos)]
    keys += [("T", p) for p in range(n_pos)]
    return keys + [("L", t) for t in g["logit_tokens"].tolist()]


def compare_graphs(a: dict, b: dict, n_layers: int) -> dict:
    """Same logits / active features? Max |A_a - A_b| over the common nodes, relative to max |A_a|."""
    ka, kb = node_keys(a, n_layers), node_keys(b, n_layers)
    where_b = {k: i for i, k in enumerate(kb)}
    common = [(i, where_b[k]) for i, k in enumerate(ka) if k in where_b]
    ia, ib = (torch.tensor(x) for x in zip(*common))
    A, B = a["adjacency"].double()[ia][:, ia], b["adjacency"].double()[ib][:, ib]
    diff = (A - B).abs()
    scale = A.abs().max().item()
    same_active = a["active_features"].shape == b["active_features"].shape and bool(
        (a["active_features"] == b["active_features"]).all()
    )
    act_diff = (
        (a["activation_values"].double() - b["activation_values"].double()).abs().max().item()
        if same_active
        else float("nan")
    )
    return dict(
        same_logits=a["logit_tokens"].tolist() == b["logit_tokens"].tolist(),
        same_active=same_active,
        same_selected=sorted(x for x in ka if x[0] == "F") == sorted(x for x in kb if x[0] == "F"),
        n_features=(len(a["selected_features"]), len(b["selected_features"])),
        activation_max_diff=act_diff,
        max_edge=scale,
        max_abs_diff=diff.max().item(),
        rel_max_diff=diff.max().item() / scale,
        rel_by_source={
            kind: diff[:, cols].max().item() / scale if cols.any() else 0.0
            for kind in "FET"
            for cols in [torch.tensor([ka[int(i)][0] == kind for i in ia])]
        },
        worst=_worst_block(diff, ka, ia),
    )


def _worst_block(diff: torch.Tensor, keys: list[tuple], idx: torch.Tensor) -> str:
    """Which (target kind <- source kind) block holds the largest difference."""
    t, s = divmod(int(diff.argmax()), diff.shape[1])
    return f"{keys[int(idx[t])]} <- {keys[int(idx[s])]}"


# ------------------------------------------------------------------------ sections
def tokens_for(mdir: Path, n: int) -> list[int]:
    from transformers import AutoTokenizer

    return sizes.prompt_of_length(AutoTokenizer.from_pretrained(str(mdir)), n)


def section_main(size, data, args, engines, results) -> None:
    mdir, cdir = data
    toks = tokens_for(mdir, args.length)
    for eng in ENGINES:  # graphs for the equality check (every round writes the same graph; an engine
        (Path(args.root) / f"graph-{size}-{eng}.pt").unlink(missing_ok=True)  # not run has none)
    save = Path(args.root) / f"graph-{size}-ENGINE.pt"
    profile = Path(args.root) / f"torch-profile-{size}-{args.length}-{args.dtype}-{args.batch_size}.txt"
    opts = dict(nodes=DEFAULT_NODES[size], save=save, profile=profile)
    for rec in run_engines(engines, mdir, cdir, toks, args, **opts):
        results.append(dict(section="main", size=size, nodes=DEFAULT_NODES[size], length=args.length, **rec))


def section_equality(size, data, args, engines, results) -> None:
    """Needs the graphs saved by `main` for both engines."""
    _equality(size, f"{size}, nodes={DEFAULT_NODES[size]}", "", args, results)


def _equality(size: str, case: str, tag: str, args, results) -> None:
    """Compare the graphs `graph-{size}{tag}-{ours,ct}.pt` if both exist."""
    files = [Path(args.root) / f"graph-{size}{tag}-{e}.pt" for e in ("ours", "ct")]
    if all(f.exists() for f in files):
        a, b = (torch.load(f) for f in files)
        n_layers = sizes.SIZES[size]["model"]["num_hidden_layers"]
        results.append(dict(section="equality", size=size, case=case, **compare_graphs(a, b, n_layers)))


def section_length(size, data, args, engines, results) -> None:
    mdir, cdir = data
    nodes = DEFAULT_NODES[size]
    for n in args.lengths:
        toks = tokens_for(mdir, n)
        for rec in run_engines(engines, mdir, cdir, toks, args, nodes=nodes, repeats=args.sweep_repeats):
            results.append(dict(section="length", size=size, length=n, nodes=nodes, **rec))


def section_nodes(size, data, args, engines, results) -> None:
    mdir, cdir = data
    toks = tokens_for(mdir, args.length)
    for nodes in NODE_SWEEP[size]:
        tag = f"-nodes{nodes}"
        for eng in ENGINES:
            (Path(args.root) / f"graph-{size}{tag}-{eng}.pt").unlink(missing_ok=True)
        save = Path(args.root) / f"graph-{size}{tag}-ENGINE.pt"
        opts = dict(nodes=nodes, repeats=args.sweep_repeats, save=save)
        for rec in run_engines(engines, mdir, cdir, toks, args, **opts):
            results.append(dict(section="nodes", size=size, length=args.length, nodes=nodes, **rec))
        _equality(size, f"{size}, nodes={nodes}", tag, args, results)


def section_dtype(size, data, args, engines, results) -> None:
    """Edges in float32 and bf16 (model and CLT) against float64, tiny size, weights exact in bf16."""
    if size != "tiny":
        return
    mdir, cdir = sizes.bf16_weights_copy(data[0]), data[1]
    toks = tokens_for(mdir, args.length)
    n_layers = sizes.SIZES[size]["model"]["num_hidden_layers"]
    for eng in engines:
        graphs = {}
        for dt in ("float64", "float32", "bfloat16"):
            save = Path(args.root) / f"graph-{size}-dtype-{dt}-{eng}.pt"
            save.unlink(missing_ok=True)
            rec = run_engine(
                eng, mdir, cdir, toks, args, nodes=None, dtype=dt, save=save, repeats=args.repeats
            )
            if "error" not in rec:
                graphs[dt] = torch.load(save)
                cmp = compare_graphs(graphs[dt], graphs["float64"], n_layers) if "float64" in graphs else {}
                rec.update({f"vs64_{k}": v for k, v in cmp.items()})
            results.append(dict(section="dtype", size=size, dtype=dt, length=args.length, **rec))
    for dt in ("float64", "float32", "bfloat16"):
        _equality(size, f"{size} (bf16-exact weights), {dt}", f"-dtype-{dt}", args, results)


def section_compute(size, data, args, engines, results) -> None:
    """tl_clt's compute_dtype on a bf16 model (tiny, weights exact in bf16): edges vs the float64 graph."""
    if size != "tiny" or "ours" not in engines:
        return
    mdir, cdir = sizes.bf16_weights_copy(data[0]), data[1]
    toks = tokens_for(mdir, args.length)
    n_layers = sizes.SIZES[size]["model"]["num_hidden_layers"]
    ref_file = Path(args.root) / f"graph-{size}-compute-ref.pt"
    run_engine("ours", mdir, cdir, toks, args, nodes=None, dtype="float64", save=ref_file, repeats=1)
    ref = torch.load(ref_file)
    for cdt in ("float64", "float32", "bfloat16"):
        save = Path(args.root) / f"graph-{size}-compute-{cdt}.pt"
        opts = dict(nodes=None, dtype="bfloat16", compute_dtype=cdt, save=save, repeats=args.repeats)
        rec = run_engine("ours", mdir, cdir, toks, args, **opts)
        if "error" not in rec:
            rec.update({f"vs64_{k}": v for k, v in compare_graphs(torch.load(save), ref, n_layers).items()})
        results.append(dict(section="compute", size=size, dtype="bfloat16", compute=cdt, **rec))


SECTIONS = {
    "main": section_main,
    "equality": section_equality,
    "length": section_length,
    "nodes": section_nodes,
    "dtype": section_dtype,
    "compute": section_compute,
}


# ------------------------------------------------------------------------ tables
def _best(r: dict) -> str:
    return f"{min(r['times']):.3f}" if "times" in r else r.get("error", "?")


def _row(r: dict) -> dict:
    ok = "times" in r
    return {
        "engine": ENGINES[r["engine"]],
        "time/graph s (best)": _best(r),
        "1st graph s": f"{r['times'][0]:.2f}" if ok else "",
        "peak RSS MiB": f"{r['peak_rss_mib']:.0f}" if ok else "",
        **({"peak GPU MiB": f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else ""} if GPU[0] else {}),
        **({"GPU after load MiB": _mib(r.get("gpu_after_load_mib"))} if GPU[0] else {}),
        "RSS after load MiB": f"{r['rss_after_load_mib']:.0f}" if ok else "",
        "load s": f"{r['load_s']:.2f}" if ok else "",
        "active": r.get("n_active", ""),
        "feature nodes": r.get("n_selected", ""),
        "backward": r.get("n_backward", ""),
        **_roofline(r),
        "load avg": f"{r['load_before']:.1f}/{r['load_after']:.1f}",
    }


def _mib(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


def _roofline(r: dict) -> dict:
    """Rows' FLOPs (tl_clt's count of the graph's backward work), the matmul rate measured in the same
    process and compute dtype, and time / (FLOPs / rate). circuit-tracer's ratio uses the FLOPs and rate
    of the tl_clt run of the same case (`_attach_flops`)."""
    if "row_flops" not in r or "times" not in r:
        return {"GFLOP": "", "rate GFLOP/s": "", "ratio": "", "CPU s": "", "CPU ratio": ""}
    cpu = "cpu_times" in r and "matmul_rate_cpu" in r
    return {
        "GFLOP": f"{r['row_flops'] / 1e9:.1f}",
        "rate GFLOP/s": f"{r['matmul_rate'] / 1e9:.0f} {r.get('compute_dtype', '')}".strip(),
        "ratio": f"{min(r['times']) / (r['row_flops'] / r['matmul_rate']):.2f}",
        "CPU s": f"{min(r['cpu_times']):.2f}" if "cpu_times" in r else "",
        "CPU ratio": f"{min(r['cpu_times']) / (r['row_flops'] / r['matmul_rate_cpu']):.2f}" if cpu else "",
    }


def _attach_flops(results: list[dict]) -> None:
    """Give circuit-tracer records the FLOPs and rate of tl_clt's record of the same case."""
    key = lambda r: (r["section"], r["size"], r.get("length"), r.get("nodes"), r.get("dtype"))  # noqa: E731
    ours = {key(r): r for r in results if r.get("engine") == "ours" and "row_flops" in r}
    for r in results:
        if r.get("engine") == "ct" and key(r) in ours:
            r.setdefault("row_flops", ours[key(r)]["row_flops"])
            r.setdefault("matmul_rate", ours[key(r)]["matmul_rate"])
            if "matmul_rate_cpu" in ours[key(r)]:
                r.setdefault("matmul_rate_cpu", ours[key(r)]["matmul_rate_cpu"])


def markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _vs_float64(r: dict) -> dict:
    """The time and the edge differences against the float64 graph of one dtype / compute-dtype run."""
    return dict(
        time=_best(r),
        same_active_as_f64=r.get("vs64_same_active", ""),
        max_edge_diff_vs_f64=f"{r['vs64_max_abs_diff']:.2e}" if "vs64_max_abs_diff" in r else "",
        relative=f"{r['vs64_rel_max_diff']:.2e}" if "vs64_rel_max_diff" in r else "",
        **{f"rel from {k}": f"{v:.1e}" for k, v in r.get("vs64_rel_by_source", {}).items()},
    )


def tables(results: list[dict]) -> str:
    _attach_flops(results)
    out = []
    main = [dict(size=r["size"], **_row(r)) for r in results if r["section"] == "main"]
    out += ["## Time per graph, peak RSS (fresh process), active features, backward passes", markdown(main)]
    eq = [
        dict(
            case=r.get("case", r["size"]),
            same_logits=r["same_logits"],
            same_active=r["same_active"],
            same_selected=r["same_selected"],
            activation_max_diff=f"{r['activation_max_diff']:.2e}",
            max_edge=f"{r['max_edge']:.3g}",
            max_abs_diff=f"{r['max_abs_diff']:.2e}",
            rel_max_diff=f"{r['rel_max_diff']:.2e}",
            **{f"rel from {k}": f"{v:.1e}" for k, v in r["rel_by_source"].items()},
            worst=r["worst"],
        )
        for r in results
        if r["section"] == "equality"
    ]
    out += ["## Graph equality (tl_clt vs circuit-tracer, same settings)", markdown(eq)]
    for sec, key in (("length", "length"), ("nodes", "nodes")):
        rows = [dict(size=r["size"], **{key: str(r[key])}, **_row(r)) for r in results if r["section"] == sec]
        out += [f"## Scaling with {'prompt length (tokens, sink included)' if key == 'length' else key}"]
        out += [markdown(rows)]
    dt = [
        dict(
            engine=ENGINES[r["engine"]],
            dtype=r["dtype"],
            **_vs_float64(r),
        )
        for r in results
        if r["section"] == "dtype"
    ]
    out += ["## dtypes (tiny): max |edge - float64 edge| over common nodes, relative to max |edge|"]
    out += [markdown(dt)]
    comp = [
        dict(
            model="bfloat16",
            compute_dtype=r["compute"],
            **_vs_float64(r),
        )
        for r in results
        if r["section"] == "compute"
    ]
    out += ["## compute_dtype (tiny, bf16 model): max |edge - float64-model edge|, relative to max |edge|"]
    out += [markdown(comp)]
    kept = []  # a heading is kept only with its table
    for i, x in enumerate(out):
        if x and not (x.startswith("## ") and (i + 1 == len(out) or not out[i + 1])):
            kept.append(x)
    return "\n\n".join(kept)


def machine() -> str:
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    cpu = platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}; {up}"


# ------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,medium", help="comma list of tiny, medium, real, 1.7b")
    ap.add_argument("--sections", default="main,equality,length,nodes,dtype,compute")
    ap.add_argument("--engines", default="ours,ct", help="ours, ct or both")
    ap.add_argument("--repeats", type=int, default=3, help="graphs per process (best of N)")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per engine, interleaved")
    ap.add_argument("--sweep-repeats", type=int, default=None, help="best of N in the sweeps")
    ap.add_argument("--length", type=int, default=16, help="prompt tokens (sink included)")
    ap.add_argument("--lengths", default="8,16,32,64")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    ap.add_argument(
        "--clt-dtype",
        default="same",
        choices=["same", "disk"],
        help="tl_clt's CLT dtype: the model's (circuit-tracer always does this) or as on disk (bf16)",
    )
    ap.add_argument("--compute-dtype", default=None, help="tl_clt compute_dtype (default: automatic)")
    ap.add_argument("--decoder-cache-gib", type=float, default=None, help="tl_clt decoder_cache_bytes in GiB")
    ap.add_argument(
        "--fresh-buffers",
        action="store_true",
        help="tl_clt without a Workspace: fresh work memory per graph (default: the repeats share one)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both engines)")
    ap.add_argument("--data-device", default="cpu", help="where the streamed CLT's random numbers are drawn")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of both engines (0: default)")
    ap.add_argument(
        "--max-feature-nodes",
        default=None,
        help="max_feature_nodes of the main and length sections (default: tiny/medium all, else 1024)",
    )
    ap.add_argument("--max-n-logits", type=int, default=10)
    ap.add_argument("--desired-logit-prob", type=float, default=0.95)
    ap.add_argument(
        "--ct-python", default=os.environ.get("TL_CLT_CT_PYTHON", str(ROOT / ".ctvenv/bin/python"))
    )
    ap.add_argument("--root", default=str(ROOT / ".bench"), help="data and graphs (git-ignored)")
    ap.add_argument("--rss-limit-gib", type=float, default=18.0, help="kill a run above this RSS")
    ap.add_argument(
        "--torch-profile", action="store_true", help="main: torch.profiler table of tl_clt's last graph"
    )
    ap.add_argument("--json", default=None, help="write all records here (default: ROOT/results.json)")
    ap.add_argument("--tables-from", default=None, help="only print the tables of a --json file")
    args = ap.parse_args()
    if args.tables_from:
        saved = json.loads(Path(args.tables_from).read_text())
        GPU[0] = saved["args"].get("device", "cpu") != "cpu"
        print(f"machine: {saved['machine']}\n\n{tables(saved['results'])}")
        return
    args.lengths = [int(x) for x in args.lengths.split(",")]
    GPU[0] = args.device != "cpu"
    if args.max_feature_nodes is not None:
        nodes = None if args.max_feature_nodes.lower() == "none" else int(args.max_feature_nodes)
        DEFAULT_NODES.update({k: nodes for k in DEFAULT_NODES})
    args.sweep_repeats = args.sweep_repeats or args.repeats
    engines = args.engines.split(",")
    Path(args.root).mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    results: list[dict] = []
    for size in args.sizes.split(","):
        data = sizes.build(size, Path(args.root), device=args.data_device)
        for name in tqdm(args.sections.split(","), desc=size):
            SECTIONS[name](size, data, args, engines, results)
    after = machine()
    path = Path(args.json or Path(args.root) / "results.json")
    path.write_text(json.dumps(dict(machine=after, args=vars(args), results=results), indent=1))
    print(f"\nmachine after: {after}\n\n{tables(results)}\n\nrecords: {path}")
    for r in results:  # a failed run's own words
        if "stderr_tail" in r:
            print(f"\n{r['engine']} failed ({r.get('section')}, {r.get('size')}):\n{r['stderr_tail']}")


if __name__ == "__main__":
    main()
