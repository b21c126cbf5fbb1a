"""What `tl_clt.mediators` (`propose_supernodes(..., mediate=k)`) costs, by how many steerings share a pass.

    PYTHONPATH=. python benchmarks/mediate.py [--sizes toy real] [--batch-sizes 1 4 16 32]
        [--candidates 48] [--steps 3] [--length 16] [--root benchmarks/.bench] [--device cpu]
        [--backend hooked|bridge] [--no-tail]

- `toy`: the seed's prompt in the shipped toy world, with the greedy search the proposals run: the source
  is the most influential word group (`whole`), the candidates `whole("say a name")`, k = 20.
- a size of `sizes.py` (`tiny`, `medium`, `real`: the Qwen3-0.6B shape, random weights; built under
  `--root` if missing): a graph of a `--length`-token prompt (256 feature nodes), the candidates its
  first `--candidates` feature nodes on the last position, the source a third of them (random weights
  carry no story: the search is given one it can find), k = `--steps` (the table prints how many were
  chosen: the search stops early when no candidate brings the output closer).

Per size and batch size: seconds, steered forward passes run (steerings / batch), milliseconds per
steering, two floors per steering (best of 3, same process, no hooks): a plain forward pass of the same
batch over the whole prompt, and over its last token only on a KV cache of the others (what a tail pass
runs: `Steerer.last` runs the positions from the first one a batch's steerings touch, here the last),
and whether the choice equals batch size 1's (the batch changes float rounding only). The first row of
each size (batch size 1) is one steering per forward pass. `--backend bridge`: the same on a
TransformerBridge (`load_qwen3(..., backend="bridge")`); `--no-tail`: every `Steerer` runs whole passes
(what-if: the time before tail passes, or on a bridge whose cache does not fill).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import sizes
import torch
from runner_common import RESULT_TAG, peak_rss_mib

import tl_clt
from tl_clt.proposals import mediators


def toy_problem(device: str, backend: str = "hooked"):
    from tl_clt.toyworld import load_toyworld, toyworld_paths
    from tl_clt.toyworld.story import SEED

    model, clt = load_toyworld()
    if backend == "bridge":
        model = tl_clt.load_qwen3(toyworld_paths(None)[0], backend="bridge")
    model, clt = model.to(device), clt.to(device)
    graph = tl_clt.attribute(model, clt, SEED.prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt, unpruned=graph)
    words = [n for n, i in proposals.info.items() if i.kind == "word"]
    top = max(words, key=lambda n: proposals.info[n].influence)
    return model, clt, graph, proposals.whole(top), proposals.whole("say a name"), 20


def size_problem(size: str, args):
    from transformers import AutoTokenizer

    mdir, cdir = sizes.build(size, Path(args.root))
    model = tl_clt.load_qwen3(str(mdir), device=args.device, dtype=torch.float32, backend=args.backend)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(str(cdir), dtype=torch.float32, device=args.device)
    tokens = torch.tensor(sizes.prompt_of_length(AutoTokenizer.from_pretrained(str(mdir)), args.length))
    graph = tl_clt.attribute(model, clt, tokens, max_feature_nodes=256, verbose=False)
    last = graph.n_pos - 1
    on_last = [graph.node_id(i) for i, k in enumerate(graph.feature_keys.tolist()) if k[1] == last]
    candidates = sorted(on_last[: args.candidates])  # sorted by id: the source's members spread among them
    source = on_last[: args.candidates // 3]
    return model, clt, graph, source, candidates, args.steps


def synced() -> float:
    """time.perf_counter() once the device has finished what was queued (CUDA runs asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def plain_forward(model, tokens, batch_size: int, repeats: int = 3) -> float:
    """Seconds of one plain forward pass (no hooks) of `batch_size` copies of `tokens`, best of `repeats`:
    the floor under a steered pass of that batch."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = synced()
            model(tokens[None].expand(batch_size, -1))
            best = min(best, synced() - t0)
    return best


def plain_tail(model, tokens, batch_size: int, repeats: int = 3) -> float:
    """Seconds of a plain forward pass of `batch_size` copies of the last token on a KV cache of the
    others, best of `repeats`: the floor under a tail pass (`Steerer.last`) of steerings on the last
    token (`tl_clt.prefix_cache`: a TransformerLens cache seen as copies on a HookedTransformer, a
    Hugging Face cache copied per pass on a TransformerBridge; NaN where the bridge's cache does not fill)."""
    from tl_clt.hooks import preserve
    from tl_clt.prefix_cache import HFPrefix, TLPrefix
    from tl_clt.sites import HOOKED_TRANSFORMER, backend_of

    last = tokens[None, -1:].expand(batch_size, -1)
    # as Steerer runs them: under the model's lock, transformers' cache warning silenced
    with torch.no_grad(), preserve(model):
        if backend_of(model) == HOOKED_TRANSFORMER:
            prefix = TLPrefix.fill(model, tokens).head(len(tokens) - 1)
        else:
            prefix = HFPrefix.fill(model, tokens, len(tokens) - 1)
            if prefix is None:
                return float("nan")
        best = float("inf")
        for _ in range(repeats):
            t0 = synced()
            prefix.run(model, last)
            best = min(best, synced() - t0)
    return best


def steering_counts(n: int, k: int, chosen: int, batch_size: int) -> tuple[int, int]:
    """(steerings, forward passes) of a `mediators` run over `n` candidates that chose `chosen` of at most
    `k`: the source's and the empty steering (one pass each), then one steering per remaining candidate
    at each step tried (a step that chose nothing was tried too, unless k or the candidates ran out)."""
    steps = chosen + (chosen < min(k, n))
    rest = [n - i for i in range(steps)]
    return 2 + sum(rest), 2 + sum(-(-r // batch_size) for r in rest)


def one_feature_steerings(
    model, clt, tokens, n: int, batch_size: int, ct_python: str | None, mdir, cdir, device: str = "cpu"
):
    """ms per steering of `n` steerings that each ablate one feature (0..n-1 of the middle layer) on the
    last position, attention, norms and MLPs frozen (circuit-tracer's `freeze_attention=True`, tl_clt's
    `direct_effects=True`): tl_clt's `steer` one by one, `steer_many` by `batch_size`, and circuit-tracer's
    `feature_intervention` (its venv, a fresh process: `ct_runner.py --steerings n`) where `ct_python`."""
    layer, last = clt.n_layers // 2, len(tokens) - 1
    steerings = [[tl_clt.Intervention(layer, last, f, 0.0)] for f in range(n)]
    tl_clt.steer(model, clt, tokens, steerings[0], direct_effects=True)  # warm-up
    t0 = synced()
    for ivs in steerings:
        tl_clt.steer(model, clt, tokens, ivs, direct_effects=True)
    ours_one = (synced() - t0) / n
    t0 = synced()
    tl_clt.steer_many(model, clt, tokens, steerings, batch_size=batch_size, direct_effects=True)
    ours_many = (synced() - t0) / n
    ct = None
    if ct_python and Path(ct_python).exists():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [
            ct_python,
            str(Path(__file__).parent / "ct_runner.py"),
            "--model",
            str(mdir),
            "--clt",
            str(cdir),
        ]
        cmd += ["--tokens", ",".join(map(str, tokens.tolist())), "--steerings", str(n), "--device", device]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout
        records = [
            json.loads(line[len(RESULT_TAG) :]) for line in out.splitlines() if line.startswith(RESULT_TAG)
        ]
        ct = sum(records[0]["steering_times"]) / n if records else None
    return ours_one, ours_many, ct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["toy", "real"], choices=["toy", *sorted(sizes.SIZES)])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 32])
    ap.add_argument("--candidates", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent / ".bench"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="hooked", choices=["hooked", "bridge"], help="load_qwen3's backend")
    ap.add_argument(
        "--no-tail", action="store_true", help="what-if: Steerer runs whole passes (as before tail passes)"
    )
    ap.add_argument(
        "--one-feature", type=int, default=16, help="steerings in the one-feature table (0: none)"
    )
    ap.add_argument(
        "--ct-python",
        default=os.environ.get("TL_CLT_CT_PYTHON", str(Path(__file__).parent.parent / ".ctvenv/bin/python")),
    )
    args = ap.parse_args()
    if args.no_tail:
        from tl_clt import steering

        init = steering.Steerer.__init__

        def whole_passes(self, *a, **kw):
            init(self, *a, **kw)
            self.tail_passes = False

        steering.Steerer.__init__ = whole_passes
    tail_text = "whole passes (--no-tail)" if args.no_tail else "tail passes"
    print(f"{torch.get_num_threads()} threads, device {args.device}, backend {args.backend}, {tail_text}")
    print(
        "size   tokens  source  candidates   k  batch  chosen  steerings  passes  seconds  ms/steering  "
        "floor ms (whole / tail)  same"
    )
    for size in args.sizes:
        problem = toy_problem(args.device, args.backend) if size == "toy" else size_problem(size, args)
        model, clt, graph, source, candidates, k = problem
        first = None
        for bs in args.batch_sizes:
            t0 = synced()
            chosen = mediators(model, clt, graph, source, candidates, k, verbose=False, batch_size=bs)
            seconds = synced() - t0
            first = chosen if first is None else first
            n, passes = steering_counts(len(candidates), k, len(chosen), bs)
            floor = plain_forward(model, graph.tokens, bs) / bs
            tail = plain_tail(model, graph.tokens, bs) / bs
            print(
                f"{size:<6} {graph.n_pos:>6}  {len(source):>6}  {len(candidates):>10}  {k:>2}  {bs:>5}  "
                f"{len(chosen):>6}  {n:>9}  {passes:>6}  {seconds:>7.2f}  {1e3 * seconds / n:>11.1f}  "
                f"{1e3 * floor:>12.1f} / {1e3 * tail:>8.1f}  {'yes' if chosen == first else 'NO'}"
            )
        if size != "toy" and args.one_feature:
            mdir, cdir = sizes.build(size, Path(args.root))
            one, many, ct = one_feature_steerings(
                model, clt, graph.tokens, args.one_feature, 16, args.ct_python, mdir, cdir, args.device
            )
            ct_text = f"{1e3 * ct:.1f}" if ct is not None else f"n/a (no {args.ct_python})"
            print(
                f"  {size}, {args.one_feature} steerings of one feature on the last position, all frozen: "
                f"ms a steering: tl_clt steer {1e3 * one:.1f}, steer_many (batch 16) {1e3 * many:.1f}, "
                f"circuit-tracer feature_intervention {ct_text}"
            )
    print(f"peak RSS {peak_rss_mib():.0f} MiB (this process)")


if __name__ == "__main__":
    main()
