"""`tl-clt dashboards`: build feature dashboards from a corpus, or show one feature's card.

tl-clt dashboards build --model M --clt C --texts corpus.txt -o out/features
tl-clt dashboards build --model M --clt C --texts corpus.txt -o out/features --engine ray --workers 2
tl-clt dashboards show --clt C 12 847
"""

from __future__ import annotations

from pathlib import Path

from tl_clt import files
from tl_clt.cli.common import (
    CLIError,
    add_engine_arguments,
    add_model_arguments,
    add_running_arguments,
    check_engine_arguments,
    check_local_path,
    engine_options,
    load,
    positive_int,
    quiet_stdout,
    say,
)


def add_dashboards_parser(commands):
    p = commands.add_parser(
        "dashboards",
        help="feature dashboards: build them from a corpus, or show a feature's card",
        description="Feature dashboards in the format circuit-tracer's frontend reads "
        "(index.json.gz + layer_{l}.bin).",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_build(sub)
    _add_show(sub)
    return p


def _add_build(sub):
    p = sub.add_parser(
        "build",
        help="build dashboards of every CLT feature from a corpus",
        description="Stream a corpus through the model and the CLT encoders and write every feature's "
        "top examples, sampled activation intervals, histogram, frequency and output tokens. "
        "Interrupted builds resume from OUT/.checkpoint.",
    )
    io = p.add_argument_group("inputs and outputs")
    add_model_arguments(io)
    source = io.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--texts",
        type=Path,
        metavar="FILE",
        help="corpus file: one document per line (.txt), or JSON lines with the text in --column (.jsonl)",
    )
    source.add_argument(
        "--dataset",
        metavar="NAME_OR_PATH",
        help="a Hugging Face dataset: a folder saved with save_to_disk, or a hub name (needs network)",
    )
    io.add_argument("--split", default="train", help="dataset split (default: %(default)s)")
    io.add_argument("--column", default="text", help="text column / field (default: %(default)s)")
    io.add_argument(
        "-o", "--output", required=True, type=Path, metavar="DIR", help="the dashboards folder to write"
    )
    io.add_argument("--max-docs", type=positive_int, metavar="N", help="read at most N documents")
    io.add_argument("--transcoder-id", help="transcoder_id written in every record (default: the CLT path)")

    opts = p.add_argument_group("what to keep per feature")
    opts.add_argument(
        "--context-len", type=positive_int, default=64, metavar="T", help="tokens per context (%(default)s)"
    )
    opts.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="B", help="contexts per forward (%(default)s)"
    )
    opts.add_argument(
        "--n-top", type=positive_int, default=20, metavar="K", help="top examples (%(default)s)"
    )
    opts.add_argument(
        "--n-intervals", type=positive_int, default=8, metavar="N", help="activation intervals (%(default)s)"
    )
    opts.add_argument(
        "--n-per-interval",
        type=positive_int,
        default=5,
        metavar="K",
        help="examples per interval (%(default)s)",
    )
    opts.add_argument(
        "--checkpoint-every",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds between checkpoints (%(default)s)",
    )
    opts.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    eng = add_engine_arguments(p, "the corpus in one piece")
    eng.add_argument(
        "--shards",
        type=positive_int,
        metavar="S",
        help="with --engine ray: document ranges built on the workers (default: 4 per worker)",
    )
    add_running_arguments(p)
    p.set_defaults(func=run_build, parser=p)


def _add_show(sub):
    p = sub.add_parser("show", help="print one feature's card", description="Print one feature's card.")
    p.add_argument("--clt", metavar="NAME_OR_PATH", help="a CLT folder or hub id holding features/")
    p.add_argument("--dashboards", metavar="PATH_OR_ID", help="a dashboards folder (instead of --clt)")
    p.add_argument("layer", type=int)
    p.add_argument("feature", type=int)
    p.add_argument("--json", action="store_true", help="print the raw JSON record")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write the card as HTML")
    p.set_defaults(func=run_show, parser=p)


# ------------------------------------------------------------------------ build
def _corpus(args):
    if args.texts is not None:
        if not args.texts.is_file():
            raise CLIError(f"--texts {args.texts}: no such file")
        return args.texts
    try:
        import datasets
    except ImportError:
        raise CLIError("--dataset needs the datasets package: pip install datasets") from None
    if Path(args.dataset).is_dir():
        loaded = datasets.load_from_disk(args.dataset)
        return loaded[args.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(args.dataset, split=args.split)


def run_build(args) -> list[Path]:
    check_local_path(args.model, "--model")
    check_local_path(args.clt, "--clt")
    if args.output.exists() and not args.output.is_dir():
        raise CLIError(f"-o {args.output}: a file, not a folder")
    check_engine_arguments(args)
    if args.engine == "local" and args.shards is not None:
        raise CLIError("--shards needs --engine ray")
    return quiet_stdout(args, _build)


def _build(args) -> list[Path]:
    from tl_clt.dashboards import DashboardConfig, build_feature_dashboards

    try:
        config = DashboardConfig(
            context_len=args.context_len,
            batch_size=args.batch_size,
            n_top=args.n_top,
            n_intervals=args.n_intervals,
            n_per_interval=args.n_per_interval,
        )
    except (TypeError, ValueError) as err:
        raise CLIError(str(err)) from None
    texts = _corpus(args)
    if args.engine == "local":
        model, clt, running = *load(args), {}
    else:  # each worker loads them, and this process once the shards are merged
        model, clt = args.model, args.clt
        running = dict(dtype=args.dtype, device=args.device, backend=args.backend, shards=args.shards)
        running |= engine_options(args)
    say(args, f"building dashboards into {args.output} ({args.engine}, {args.workers} worker(s))")
    dash = build_feature_dashboards(
        model,
        clt,
        texts,
        args.output,
        column=args.column,
        max_docs=args.max_docs,
        config=config,
        resume=not args.no_resume,
        checkpoint_every=args.checkpoint_every,
        transcoder_id=args.transcoder_id,
        progress=not args.quiet,
        **running,
    )
    say(args, f"{dash}")
    return [args.output]


# ------------------------------------------------------------------------ show
def run_show(args) -> list[str]:
    from tl_clt.dashboards import FeatureDashboards

    if (args.clt is None) == (args.dashboards is None):
        raise CLIError("give either --clt or --dashboards")
    if args.html is not None:  # before any reading
        files.check_output_folder(args.html.parent, what="folder for --html")
    dash = FeatureDashboards.from_pretrained(args.clt or args.dashboards)
    if args.json:
        import json

        return [json.dumps(dash.record(args.layer, args.feature), ensure_ascii=False)]
    card = dash[args.layer, args.feature]
    if args.html is not None:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        html = f"<!doctype html><meta charset='utf-8'>{card._repr_html_()}"
        files.write_text(args.html, html, what="card HTML")
    return [repr(card)]
