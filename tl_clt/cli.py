"""The `tl-clt` command line: `tl-clt attribute ...` (more subcommands plug into `build_parser`).

    tl-clt attribute --model Qwen/Qwen3-1.7B-Base --clt bluelightai/clt-qwen3-1.7b-base-20k \\
        --prompt "The capital of France is" -o graph.json --png graph.png

Progress and messages go to stderr; the paths written go to stdout, one per line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PROG = "tl-clt"
DTYPES = ("float32", "bfloat16")


class CLIError(Exception):
    """A bad argument or input found after parsing; reported as `tl-clt <cmd>: error: ...`."""


# ------------------------------------------------------------------------ argument types
def unit_interval(text: str) -> float:
    """A float in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def probability(text: str) -> float:
    """A float in (0, 1]."""
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value != value:  # NaN
        raise argparse.ArgumentTypeError("must be a number, got NaN")
    return value


# ------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Circuit tracing on Qwen3 with cross-layer transcoders.",
    )
    from tl_clt import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_attribute_parser(commands)
    return parser


def add_attribute_parser(commands) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "attribute",
        help="attribution graph of one prompt -> graph JSON (+ picture)",
        description="Compute the attribution graph of a prompt, prune it and write the graph JSON "
        "that the circuit-tracer frontend and Neuronpedia read (and optionally a picture).",
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--model",
        required=True,
        metavar="NAME_OR_PATH",
        help="Qwen3 checkpoint: a local Hugging Face folder or a hub id",
    )
    io.add_argument(
        "--clt",
        required=True,
        metavar="NAME_OR_PATH",
        help="cross-layer transcoder: a local folder (config.yaml + W_enc_*/W_dec_* safetensors) or a hub id",
    )
    io.add_argument("--prompt", required=True, help="the prompt text to attribute")
    io.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="GRAPH.json",
        help="where to write the graph JSON (parent folders are created)",
    )
    io.add_argument(
        "--png",
        type=Path,
        metavar="PICTURE",
        help="also draw the pruned graph here (needs matplotlib; .png, .svg, .pdf ...)",
    )
    io.add_argument(
        "--pt",
        type=Path,
        metavar="GRAPH.pt",
        help="also save the full, unpruned graph (AttributionGraph.load reads it)",
    )
    io.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="also add the graph to a frontend data folder (DIR/<slug>.json and DIR/graph-metadata.json)",
    )
    io.add_argument("--slug", help="graph name in the frontend (default: from the output name)")
    io.add_argument("--scan", help="model id recorded in the graph (default: the model's name)")

    attr = p.add_argument_group("attribution")
    attr.add_argument(
        "--max-feature-nodes",
        type=positive_int,
        default=None,
        metavar="N",
        help="compute rows for at most N features, the most influential first (default: all active features)",
    )
    attr.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="B",
        help="graph rows per backward pass; more is faster and uses more memory (default: %(default)s)",
    )
    attr.add_argument(
        "--max-n-logits",
        type=positive_int,
        default=10,
        metavar="K",
        help="at most K output tokens become logit nodes (default: %(default)s)",
    )
    attr.add_argument(
        "--desired-logit-prob",
        type=probability,
        default=0.95,
        metavar="P",
        help="take top tokens until their probabilities sum to P, in (0, 1] (default: %(default)s)",
    )

    prune = p.add_argument_group("pruning (fractions of influence on the logits, in [0, 1])")
    prune.add_argument(
        "--node-threshold",
        type=unit_interval,
        default=0.8,
        metavar="T",
        help="keep the nodes that carry this share of the influence (default: %(default)s)",
    )
    prune.add_argument(
        "--edge-threshold",
        type=unit_interval,
        default=0.98,
        metavar="T",
        help="keep the edges that carry this share of the influence (default: %(default)s)",
    )

    run = p.add_argument_group("running")
    run.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of the model and the CLT (default: %(default)s)",
    )
    run.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device (default: cuda when available, else cpu)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=run_attribute, parser=p)
    return p


# ------------------------------------------------------------------------ attribute
def _say(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _check_picture_path(path: Path) -> None:
    """Fail before the long computation when the picture cannot be written."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CLIError('--png needs matplotlib: pip install "tl-clt[viz]"') from None
    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise CLIError(
            f"--png {path}: unknown picture type {path.suffix!r}; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )


def _check_local_path(name: str, flag: str) -> None:
    """A path-like name must exist; hub ids ('owner/name') are left to the loaders."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1 or path.exists()
    if looks_local and not path.is_dir():
        what = "file, not a folder" if path.is_file() else "no such folder"
        raise CLIError(f"{flag} {name}: {what}; pass a local folder or a hub id 'owner/name'")


def _device(args) -> str:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available here; use --device cpu")
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _prepare(args) -> None:
    """All checks that need no model, so mistakes fail in a second."""
    if not args.prompt.strip():
        raise CLIError("--prompt is empty")
    _check_local_path(args.model, "--model")
    _check_local_path(args.clt, "--clt")
    if args.output.suffix.lower() != ".json":
        raise CLIError(f"-o {args.output}: the graph file must end in .json")
    if args.png is not None:
        _check_picture_path(args.png)
    from tl_clt.export import check_slug, slugify

    try:
        args.slug = check_slug(args.slug) if args.slug else slugify(args.output.stem)
    except ValueError as err:
        raise CLIError(f"--slug: {err}") from None
    for path in (args.output, args.png, args.pt):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


def run_attribute(args) -> list[Path]:
    """Load, attribute, prune, write; returns the paths written."""
    _prepare(args)
    # libraries print to stdout (e.g. "Moving model to device"); stdout is for the paths written
    sink = open(os.devnull, "w") if args.quiet else sys.stderr  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sink):
            return _attribute(args)
    finally:
        if sink is not sys.stderr:
            sink.close()


def _attribute(args) -> list[Path]:
    import torch

    import tl_clt

    device, dtype = _device(args), getattr(torch, args.dtype)
    _say(args, f"loading model {args.model} ({args.dtype}, {device})")
    model = tl_clt.load_qwen3(args.model, device=device, dtype=dtype)
    _say(args, f"loading CLT {args.clt}")
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(args.clt, device=device, dtype=dtype)
    _say(args, "attributing")
    graph = tl_clt.attribute(
        model,
        clt,
        args.prompt,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        verbose=not args.quiet,
    )
    written = []
    if args.pt is not None:
        graph.save(args.pt)
        written.append(args.pt)
    pruned = graph.prune(node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    settings = {
        "max_n_logits": args.max_n_logits,
        "desired_logit_prob": args.desired_logit_prob,
        "max_feature_nodes": args.max_feature_nodes,
        "batch_size": args.batch_size,
    }
    options = dict(
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        scan=args.scan,
        prompt=args.prompt,
        extra_metadata={"generation_settings": settings},
    )
    written.append(pruned.to_json(args.output, slug=args.slug, **options))
    if args.folder is not None:
        tl_clt.write_graph_folder({args.slug: pruned}, args.folder, **options)
        written.append(args.folder / f"{args.slug}.json")
    if args.png is not None:
        pruned.plot(args.png)
        written.append(args.png)
    G = pruned.to_networkx()
    _say(
        args,
        f"graph: {graph.n_features} feature rows; pruned to {G.number_of_nodes()} nodes, "
        f"{G.number_of_edges()} edges",
    )
    return written


# ------------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run `tl-clt` with `argv` (default: sys.argv[1:]); returns 0, or exits non-zero on errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable = args.func
    try:
        written = func(args)
    except CLIError as err:
        args.parser.error(str(err))  # exits with status 2
    except (FileNotFoundError, ValueError, NotImplementedError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1
    for path in written or []:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
