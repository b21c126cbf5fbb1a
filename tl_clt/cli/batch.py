"""`tl-clt batch`: attribution graphs of many prompts into a run folder, resumable, locally or on Ray."""

from __future__ import annotations

import sys
from pathlib import Path

from tl_clt.cli.attribute import add_attribution_arguments, add_pruning_arguments, attribution_settings
from tl_clt.cli.common import (
    CLIError,
    add_engine_arguments,
    add_model_arguments,
    add_running_arguments,
    check_engine_arguments,
    check_local_path,
    quiet_stdout,
    say,
)

EPILOG = """\
PROMPTS is a text file (one prompt per line), a JSONL file (one object per line: "prompt", optional "id",
other fields kept in the manifest), or with --column a Hugging Face dataset (a save_to_disk folder or a
name). A rerun of the same command skips the prompts already done; Ctrl-C stops cleanly and keeps them.

examples:
  tl-clt batch prompts.jsonl -o runs/x --model M --clt C
  tl-clt batch prompts.txt -o runs/x --model M --clt C --engine ray --workers 2
  tl-clt batch prompts.txt -o runs/x --model M --clt C --engine ray --address auto --gpus-per-worker 1
"""


def add_batch_parser(commands):
    import argparse

    p = commands.add_parser(
        "batch",
        help="attribution graphs of many prompts -> a run folder (locally or on Ray)",
        description="Attribute every prompt of a file into DIR: graphs/{id}.pt and .json, "
        "manifest.jsonl/.parquet (status, top logit, scores, timings, errors) and features.parquet "
        "(one row per prompt and feature node of its pruned graph).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "prompts", metavar="PROMPTS", help="prompts file (.txt or .jsonl) or, with --column, a dataset"
    )
    io.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="the run folder")
    add_model_arguments(io)
    io.add_argument("--column", help="dataset column holding the prompts (PROMPTS is then a dataset)")
    io.add_argument("--id-column", help="dataset column holding the ids (default: 'id' if any, else the row)")
    io.add_argument("--split", default="train", help="dataset split (default: %(default)s)")
    io.add_argument("--scan", help="model id recorded in the graph JSON (default: the model's name)")
    io.add_argument("--no-pt", action="store_true", help="write only the pruned JSON, not the full graph .pt")
    io.add_argument("--retry-failed", action="store_true", help="also rerun prompts that failed before")

    add_attribution_arguments(p)
    add_pruning_arguments(p)

    add_engine_arguments(p, "one prompt at a time")
    add_running_arguments(p)
    p.set_defaults(func=run_batch, parser=p)
    return p


def _prepare(args) -> None:
    """Checks that need no model."""
    check_local_path(args.model, "--model")
    check_local_path(args.clt, "--clt")
    if args.column is None and not Path(args.prompts).is_file():
        raise CLIError(f"PROMPTS {args.prompts}: no such file (for a dataset, name its column with --column)")
    check_engine_arguments(args)


def run_batch(args) -> list[Path]:
    _prepare(args)
    try:
        return quiet_stdout(args, _batch)
    except KeyboardInterrupt:
        print(
            f"tl-clt batch: interrupted; finished prompts are kept in {args.output}: rerun the same command "
            "to continue",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


# command-line options passed on to `tl_clt.attribute_many` under the same name
PASSED_ON = [
    "engine",
    "workers",
    "address",
    "cpus_per_worker",
    "gpus_per_worker",
    "node_threshold",
    "edge_threshold",
    "scan",
    "dtype",
    "device",
    "backend",
    "column",
    "id_column",
    "split",
    "retry_failed",
]


def _batch(args) -> list[Path]:
    import tl_clt

    say(args, f"batch: {args.prompts} -> {args.output} ({args.engine}, {args.workers} worker(s))")
    same_names = {name: getattr(args, name) for name in PASSED_ON}  # options named as attribute_many's
    tables = tl_clt.attribute_many(
        args.model,
        args.clt,
        args.prompts,
        args.output,
        **same_names,
        **attribution_settings(args),
        save_graphs=not args.no_pt,
        verbose=not args.quiet,
    )
    failed = tables.manifest[tables.manifest["status"] != "done"]
    for row in failed.itertuples():
        say(args, f"failed: {row.id}: {row.error}")
    return [args.output / "manifest.parquet", args.output / "features.parquet"]
