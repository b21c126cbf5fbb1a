"""Feature dashboards: builder throughput next to a bare forward pass, memory as the corpus grows, one
card's read time from a local folder, and bytes read per card from a (mocked) remote. Prints markdown.

    PYTHONPATH=. python benchmarks/dashboards.py                       # medium shape (benchmarks/sizes.py)
    PYTHONPATH=. python benchmarks/dashboards.py --sizes medium,real   # + Qwen3-0.6B shape: opt-in, it
        # makes a ~18 GB CLT under .bench/ and needs the model (~2.3 GB) + the builder's state
        # (~2.8 GiB for 28 x 20480 features, 5.2 KB a feature) in memory
    PYTHONPATH=. python benchmarks/dashboards.py --docs 400 --rounds 3 --threads 2

Every measurement that needs its own memory reading runs in a fresh process (`--child ...`). The corpus
is generated text (deterministic, documents of ~4 full 64-token contexts) streamed from a generator, so
the corpus itself never sits in memory. Throughput: the builder (`build_state`) and a bare forward pass
(`model(tokens)`, the same padded batches of the same tokens) alternate `--rounds` times in one
process; the best of each is reported (the load of a shared machine drifts).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

WORDS = [
    *[
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
    ],
    *[
        "but",
        "have",
        "an",
        "they",
        "you",
        "were",
        "her",
        "she",
        "there",
        "been",
        "one",
        "all",
        "we",
        "their",
        "has",
        "would",
        "when",
        "if",
        "so",
        "no",
        "will",
    ],
    *[
        "more",
        "can",
        "out",
        "some",
        "who",
        "up",
        "into",
        "do",
        "time",
        "than",
        "them",
        "only",
        "new",
        "two",
        "may",
        "then",
        "first",
        "any",
        "like",
        "now",
        "my",
    ],
    *[
        "very",
        "also",
        "after",
        "over",
        "years",
        "well",
        "back",
        "just",
        "made",
        "where",
        "most",
        "even",
        "could",
        "such",
        "our",
        "through",
    ],
    *[
        "because",
        "its",
        "people",
        "way",
        "same",
        "many",
        "much",
        "before",
        "must",
        "those",
        "year",
        "president",
        "king",
        "queen",
        "mayor",
    ],
    *["city", "river", "music", "food", "weather"],
]


def documents(n: int, words: int = 180, seed: int = 0):
    """n generated documents (a generator: nothing is kept)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield " ".join(
            rng.choice(WORDS) + (f" {rng.randint(1900, 2030)}" if rng.random() < 0.05 else "")
            for _ in range(words)
        )


def full_documents(tokenizer, n: int, pieces: int = 4, piece_len: int = 63) -> list[str]:
    """n documents of exactly `pieces` contexts of `piece_len` tokens each (no padding: every batch but
    the last is full and every position but the sinks counts; the builder's steady state)."""
    out, want = [], pieces * piece_len
    for text in documents(4 * n + 16, words=260):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:want]
        cut = tokenizer.decode(ids)
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == want:
            out.append(cut)
        if len(out) == n:
            return out
    raise RuntimeError(f"Could not make {n} documents of {want} tokens.")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(size: str, dtype: str):
    import sizes

    import tl_clt

    mdir, cdir = sizes.build(size, ROOT / ".bench")
    model = tl_clt.load_qwen3(mdir, dtype=getattr(torch, dtype))
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(cdir, dtype=getattr(torch, dtype))
    return model, clt


# ------------------------------------------------------------------------ children
def child_throughput(args) -> dict:
    from tl_clt.dashboards import DashboardConfig, build_state
    from tl_clt.dashboards.builder import _batches, _sink_id, padded_length
    from tl_clt.dashboards.corpus import open_corpus

    model, clt = load(args.size, args.dtype)
    config = DashboardConfig(context_len=64, batch_size=args.batch_size)
    sink = _sink_id(model)
    texts = full_documents(model.tokenizer, args.docs) if args.full else list(documents(args.docs))
    batches = [b for b, _ in _batches(open_corpus(texts), model.tokenizer, sink, config, 0, None, bool) if b]
    n_tokens = sum(len(ids) - 1 for b in batches for _, ids in b)

    def bare(stop_at_layer=None) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:  # the builder's own padding: batch_size rows of one padded length
            width = padded_length(max(len(ids) for _, ids in batch), config.context_len)
            tokens = torch.full((config.batch_size, width), sink)
            mask = torch.zeros(config.batch_size, width, dtype=torch.long)
            mask[:, 0] = 1
            for i, (_, ids) in enumerate(batch):
                tokens[i, : len(ids)] = torch.tensor(ids)
                mask[i, : len(ids)] = 1
            with torch.no_grad():
                model(tokens, attention_mask=mask, stop_at_layer=stop_at_layer)
        return time.perf_counter() - t0, time.process_time() - c0

    def builder() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        state = build_state(model, clt, texts, config, progress=False)
        assert state.n_tokens == n_tokens, (state.n_tokens, n_tokens)
        return time.perf_counter() - t0, time.process_time() - c0

    build_state(model, clt, documents(4), config, progress=False)  # warm up (first-call allocations)
    times = {"bare": [], "bare_no_unembed": [], "builder": []}
    for _ in range(args.rounds):
        times["bare"].append(bare())
        times["bare_no_unembed"].append(bare(model.cfg.n_layers))
        times["builder"].append(builder())
    return {"n_tokens": n_tokens, "times": times, "peak_rss_mib": peak_rss_mib()}


def child_memory(args) -> dict:
    from tl_clt.dashboards import DashboardConfig, build_state

    model, clt = load(args.size, args.dtype)
    base = peak_rss_mib()
    t0 = time.perf_counter()
    state = build_state(
        model, clt, documents(args.docs), DashboardConfig(batch_size=args.batch_size), progress=False
    )
    return {
        "docs": args.docs,
        "n_tokens": state.n_tokens,
        "seconds": time.perf_counter() - t0,
        "rss_after_load_mib": base,
        "peak_rss_mib": peak_rss_mib(),
        "state_mib": state.nbytes() / 2**20,
    }


def child_cards(args) -> dict:
    """Write dashboards (medium) once, then time cards and count remote bytes."""
    from tl_clt.dashboards import DashboardConfig, FeatureDashboards, build_state, write_dashboards

    out = ROOT / ".bench" / f"dashboards-{args.size}-{args.docs}docs" / "features"
    if not (out / "index.json.gz").is_file():
        model, clt = load(args.size, args.dtype)
        docs = list(documents(args.docs))
        state = build_state(model, clt, docs, DashboardConfig(batch_size=args.batch_size), progress=False)
        write_dashboards(state, model, clt, docs, out, progress=False)
    rng = random.Random(1)
    probe = FeatureDashboards.from_pretrained(out)
    keys = rng.sample(
        [(la, f) for la in range(probe.n_layers) for f in range(probe.n_features[la])], args.cards
    )
    sizes_ = [probe.index[la][1][f + 1] - probe.index[la][1][f] for la, f in keys]

    t0 = time.perf_counter()
    dash = FeatureDashboards.from_pretrained(out, cache_size=0)
    dash[keys[0]]
    cold = time.perf_counter() - t0
    per_card = []
    for key in keys:
        t0 = time.perf_counter()
        dash[key]
        per_card.append(time.perf_counter() - t0)
    return {
        "cold_first_card_s": cold,
        "card_s": per_card,
        "record_bytes": sizes_,
        "index_bytes": (out / "index.json.gz").stat().st_size,
        "remote": remote_bytes(out, keys),
        "folder_mib": sum(p.stat().st_size for p in out.iterdir()) / 2**20,
    }


def remote_bytes(folder: Path, keys) -> dict:
    """Bytes the reader fetches through huggingface_hub's HfFileSystem when only its HTTP range fetch
    (and the repo/file metadata calls) are replaced by reads of the local folder."""
    from unittest import mock

    from huggingface_hub import HfFileSystem
    from huggingface_hub import hf_file_system as hffs

    from tl_clt.dashboards import FeatureDashboards

    fetched = {"index": 0, "cards": 0, "requests": 0}

    def local(path: str) -> Path:
        return folder / Path(path).name

    def fetch_range(self, start, end):
        data = local(self.resolved_path.unresolve()).read_bytes()[start:end]
        fetched["index" if self.resolved_path.unresolve().endswith(".gz") else "cards"] += len(data)
        fetched["requests"] += 1
        return data

    def info(self, path, **kwargs):
        return {"name": path, "size": local(path).stat().st_size, "type": "file"}

    with (
        mock.patch.object(HfFileSystem, "_repo_and_revision_exist", lambda self, *a, **k: (True, None)),
        mock.patch.object(HfFileSystem, "info", info),
        mock.patch.object(hffs.HfFileSystemFile, "_fetch_range", fetch_range),
        mock.patch("tl_clt.dashboards.reader._cached_hub_folder", lambda *a: None),
    ):
        dash = FeatureDashboards.from_pretrained("bench/remote-clt", cache_size=0)
        for key in keys:
            dash[key]
    return fetched


def child_state(args) -> dict:
    """Seconds per `update_layer` of one batch (32 contexts x 64 tokens x 20480 features, 0.66% active,
    activations uniform in [0, 5)) once the state has seen 12 batches, given as the builder's encoder
    gives them (the counted positions' rows and where they fire): the builder's cost beyond the
    forward pass and the encoders, at the real shape's width."""
    from tl_clt.dashboards import DashboardConfig
    from tl_clt.dashboards.state import DashboardState

    torch.manual_seed(0)
    B, T, F, L = 32, 64, 20480, 2
    state = DashboardState(DashboardConfig(), L, F)
    acts = [torch.where(torch.rand(B, T, F) < 0.0066, 5 * torch.rand(B, T, F), 0.0) for _ in range(3)]
    lengths, ctx = torch.full((B,), T), torch.arange(B) << 16
    positions = (torch.arange(T) >= 1).expand(B, T).nonzero(as_tuple=True)  # the builder's counted rows

    def rows(i: int) -> tuple[torch.Tensor, torch.Tensor]:  # what the builder's encoder hands over
        values = acts[i % 3].roll(i, 0)[positions]
        return values, values > 0

    def batch(i: int, values: torch.Tensor, fires: torch.Tensor) -> None:
        for layer in range(L):
            c = ctx + ((i * B) << 16)
            state.update_layer(layer, values, c, lengths, fires=fires, positions=positions)

    for i in range(12):
        batch(i, *rows(i))
    timed = {i: rows(i) for i in range(12, 16)}
    t0 = time.perf_counter()
    for i in range(12, 16):
        batch(i, *timed[i])
    return {"update_s": (time.perf_counter() - t0) / (4 * L), "shape": [B, T, F]}


def run_child(name: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--size", extra.get("size", args.size or "medium")]
    for flag in ("docs", "mem_docs", "rounds", "batch_size", "threads", "dtype", "cards"):
        value = extra.get(flag, getattr(args, flag))
        cmd += [f"--{flag.replace('_', '-')}", str(value)]
    if args.full:
        cmd.append("--full")
    run = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ})
    if run.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ tables
def _throughput(args, results: dict) -> None:
    print(
        "## Builder throughput next to a bare forward pass "
        "(same tokens, same padded batches, best of rounds)\n"
    )
    print(
        "tok/s by wall time / by CPU time of the process (the CPU figure is steadier on a shared machine)\n"
    )
    print("| size | tokens | bare forward tok/s | bare, no unembed tok/s | builder tok/s | builder / bare |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        r = results[f"throughput-{size}"] = run_child("throughput", args, size=size)
        tps = {
            k: [r["n_tokens"] / min(t[i] for t in v) for i in (0, 1)] for k, v in r["times"].items()
        }  # best round, by wall time and by CPU time
        cells = " | ".join(
            f"{tps[k][0]:.0f} / {tps[k][1]:.0f}" for k in ("bare", "bare_no_unembed", "builder")
        )
        ratio = [tps["builder"][i] / tps["bare"][i] for i in (0, 1)]
        print(f"| {size} | {r['n_tokens']} | {cells} | {ratio[0]:.2f} / {ratio[1]:.2f} |")


def _memory(args, results: dict) -> None:
    print("\n## Peak RSS as the corpus grows 10x (fresh process each; corpus streamed from a generator)\n")
    print("| size | documents | tokens | seconds | RSS after loading MiB | peak RSS MiB | state MiB |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for docs in (args.mem_docs, 10 * args.mem_docs):
            r = results[f"memory-{size}-{docs}"] = run_child("memory", args, size=size, docs=docs)
            print(
                f"| {size} | {docs} | {r['n_tokens']} | {r['seconds']:.0f} | {r['rss_after_load_mib']:.0f} | "
                f"{r['peak_rss_mib']:.0f} | {r['state_mib']:.1f} |"
            )


def _cards(args, results: dict) -> None:
    print("\n## Reading cards (medium dashboards, random features, no cache)\n")
    r = results["cards"] = run_child("cards", args, size="medium")
    ms = sorted(1000 * t for t in r["card_s"])
    rec = r["record_bytes"]
    print(f"folder: {r['folder_mib']:.1f} MiB; index.json.gz {r['index_bytes']} bytes\n")
    print("| what | value |")
    print("|---|---|")
    print(f"| cold: open + index + first card | {1000 * r['cold_first_card_s']:.1f} ms |")
    print(
        f"| one card, median / p95 / max ({len(ms)} cards) | {statistics.median(ms):.2f} / "
        f"{ms[int(0.95 * len(ms)) - 1]:.2f} / {ms[-1]:.2f} ms |"
    )
    remote = r["remote"]
    print(f"| record size, mean | {statistics.mean(rec):.0f} bytes |")
    print(
        "| remote (HfFileSystem, HTTP mocked): bytes read per card, mean | "
        f"{remote['cards'] / len(rec):.0f} bytes |"
    )
    print(f"| remote: card bytes / record bytes | {remote['cards'] / sum(rec):.3f} |")
    print(f"| remote: requests (index + cards) | {remote['requests']} for {len(rec)} cards |")


def _state(args, results: dict) -> None:
    r = results["state"] = run_child("state", args, size="medium")
    print("\n## One state update (`update_layer`) at the real shape's width, after 12 batches\n")
    shape = " x ".join(map(str, r["shape"]))
    print(f"{r['update_s'] * 1000:.0f} ms per layer for a batch of {shape} activations")


SECTIONS = {"throughput": _throughput, "memory": _memory, "cards": _cards, "state": _state}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sections", default="throughput,memory,cards,state", help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    p.add_argument("--sizes", default="medium", help="comma-separated: medium, real (default: medium)")
    p.add_argument("--docs", type=int, default=200, help="documents for the throughput runs")
    p.add_argument("--mem-docs", type=int, default=40, help="documents of the smaller memory run (then 10x)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--full",
        action="store_true",
        help="throughput on documents of exactly 4 x 63 tokens (full batches, no padding)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cards", type=int, default=200)
    p.add_argument("--json", type=Path, help="also save the raw results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        children = dict(
            throughput=child_throughput, memory=child_memory, cards=child_cards, state=child_state
        )
        print(json.dumps(children[args.child](args)))
        return

    results = {}
    print(
        f"# Feature dashboards benchmark ({args.threads} thread(s), {args.dtype}, "
        f"batch {args.batch_size} x 64)\n"
    )
    for name in args.sections.split(","):
        SECTIONS[name](args, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
