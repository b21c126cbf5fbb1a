"""The `tl-clt` command line: `tl-clt demo`, `tl-clt attribute ...` and `tl-clt steer ...`.

    tl-clt demo     # the main job on the shipped toy world: story, groups, steering table, JSON, PNG

    tl-clt attribute --model Qwen/Qwen3-1.7B-Base --clt bluelightai/clt-qwen3-1.7b-base-20k \\
        --prompt "The capital of France is" -o graph.json --png graph.png
    tl-clt steer --model ... --clt ... --prompt "..." --set 12:-1:847=0
    tl-clt dashboards build --model ... --clt ... --texts corpus.txt -o out/features

Progress and messages go to stderr; results (paths written, tables) go to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tl_clt.cli.attribute import add_attribute_parser
from tl_clt.cli.batch import add_batch_parser
from tl_clt.cli.common import PROG, CLIError
from tl_clt.cli.dashboards import add_dashboards_parser
from tl_clt.cli.demo import add_demo_parser
from tl_clt.cli.steer import add_steer_parser
from tl_clt.clt import CLTFileChangedError

# what bad input raises (files, arguments, a CLT file changed on disk while in use): one line, exit 1
INPUT_ERRORS = (OSError, ValueError, IndexError, KeyError, NotImplementedError, CLTFileChangedError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Circuit tracing on Qwen3 with cross-layer transcoders.",
    )
    from tl_clt import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_parser(commands)
    add_attribute_parser(commands)
    add_batch_parser(commands)
    add_steer_parser(commands)
    add_dashboards_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `tl-clt` with `argv` (default: sys.argv[1:]); returns 0, or exits non-zero on errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable = args.func
    try:
        results = func(args)
    except CLIError as err:
        args.parser.error(str(err))  # exits with status 2
    except INPUT_ERRORS as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1
    for line in results or []:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
