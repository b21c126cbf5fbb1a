"""What the `tl-clt` subcommands share: argument types, messages, device choice, model loading."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tl_clt.loading import BACKEND_NAMES

PROG = "tl-clt"
DTYPES = ("float32", "bfloat16")


class CLIError(Exception):
    """A bad argument or input found after parsing; reported as `tl-clt <cmd>: error: ...`."""


# ------------------------------------------------------------------------ argument types
def _float_where(ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse type: a float for which `ok` holds, else the error `rule`."""

    def parse(text: str) -> float:
        value = _float(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return parse


unit_interval = _float_where(lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")  # [0, 1]
probability = _float_where(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")  # (0, 1]


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


def say(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def check_local_path(name: str, flag: str) -> None:
    """A path-like name must exist; hub ids ('owner/name') are left to the loaders."""
    from tl_clt.paths import is_hub_id

    path = Path(name).expanduser()
    if not is_hub_id(name) and not path.is_dir():
        what = "file, not a folder" if path.is_file() else "no such folder"
        raise CLIError(f"{flag} {name}: {what}; pass a local folder or a hub id 'owner/name'")


def device_of(args) -> str:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available here; use --device cpu")
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def add_model_arguments(group) -> None:
    """--model and --clt, as every subcommand takes them."""
    group.add_argument(
        "--model",
        required=True,
        metavar="NAME_OR_PATH",
        help="Qwen3 checkpoint: a local Hugging Face folder or a hub id",
    )
    group.add_argument(
        "--clt",
        required=True,
        metavar="NAME_OR_PATH",
        help="cross-layer transcoder: a local folder (config.yaml + W_enc_*/W_dec_* safetensors) or a hub id",
    )


def add_backend_argument(p) -> None:
    """--backend: load_qwen3's, default the installed TransformerLens's."""
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default=None,
        help="HookedTransformer or TransformerBridge (default: what the installed transformer-lens has: "
        "hooked on 3.x, bridge on 4.x)",
    )


def add_running_arguments(p) -> None:
    """--dtype, --device, --backend, --quiet."""
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
    add_backend_argument(run)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")


def add_engine_arguments(p, what: str):
    """--engine, --address, --workers, --cpus-per-worker, --gpus-per-worker (see tl_clt.batch.engines);
    returns their argument group."""
    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=f"local: this process, {what}; ray: Ray workers (default: %(default)s)",
    )
    eng.add_argument(
        "--address", help="Ray cluster to join ('auto', 'ray://host:10001'; default: start one here)"
    )
    eng.add_argument("--workers", type=positive_int, default=1, metavar="N", help="Ray workers (default: 1)")
    eng.add_argument(
        "--cpus-per-worker",
        type=positive_int,
        default=1,
        metavar="C",
        help="CPUs per Ray worker (default: 1)",
    )
    eng.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0,
        metavar="G",
        help="GPUs per Ray worker, e.g. 1 for one worker per GPU (default: 0)",
    )
    return eng


def check_engine_arguments(args) -> None:
    """The engine options fit together, and Ray imports when asked for (before any model is loaded)."""
    if args.engine == "local" and (args.workers != 1 or args.address or args.gpus_per_worker):
        raise CLIError("--workers, --address and --gpus-per-worker need --engine ray")
    if args.gpus_per_worker < 0:
        raise CLIError(f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker:g}")
    if args.engine == "ray":
        from tl_clt.batch.engines import require_ray

        try:
            require_ray()
        except ImportError as err:
            raise CLIError(str(err)) from None


def engine_options(args) -> dict:
    """The engine keywords of attribute_many / build_feature_dashboards from the parsed arguments."""
    return dict(
        engine=args.engine,
        workers=args.workers,
        address=args.address,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )


def load(args):
    """(model, clt) from --model/--clt/--dtype/--device/--backend, with messages on stderr."""
    import torch

    import tl_clt

    device, dtype = device_of(args), getattr(torch, args.dtype)
    backend = args.backend or tl_clt.default_backend()
    say(args, f"loading model {args.model} ({args.dtype}, {device}, {backend})")
    model = tl_clt.load_qwen3(args.model, device=device, dtype=dtype, backend=backend)
    say(args, f"loading CLT {args.clt}")
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(args.clt, device=device, dtype=dtype)
    return model, clt


def quiet_stdout(args, fn: Callable):
    """Run fn(args) with library prints (e.g. "Moving model to device") sent to stderr, or nowhere with
    --quiet, which also turns off transformers' progress bars ("Loading weights", as a bridge boots) for
    the call."""
    sink = open(os.devnull, "w") if args.quiet else sys.stderr  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sink), _no_transformers_bars(args.quiet):
            return fn(args)
    finally:
        if sink is not sys.stderr:
            sink.close()


@contextlib.contextmanager
def _no_transformers_bars(off: bool):
    """transformers' progress bars off inside when `off`, and as they were after."""
    if not off:
        yield
        return
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()
