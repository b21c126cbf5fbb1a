"""`tl-clt steer`: set or scale CLT features on a prompt and print the before/after top-k table.

    tl-clt steer --model M --clt C --prompt "Fact: The president of the United States in 2010 was" \\
        --set 12:-1:847=0 --set 9:5..:12=*2 --generate 10

`--set L:POS:F=VALUE` gives feature F of layer L at position(s) POS the activation VALUE (0 ablates);
`--set L:POS:F=*K` multiplies its current activation by K. POS counts tokens of the prompt with the
`<|endoftext|>` sink token at 0: an int, a negative int (-1 = last), or a range `A..B` / `A..`
(end excluded; an open end keeps acting on generated tokens for absolute values).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from tl_clt.cli.common import (
    CLIError,
    add_model_arguments,
    add_running_arguments,
    check_local_path,
    load,
    positive_int,
    quiet_stdout,
    say,
)

_SET = re.compile(
    r"^(?P<layer>\d+):(?P<pos>-?\d+|-?\d*\.\.-?\d*):(?P<feature>\d+)=(?P<scale>\*?)(?P<value>[^=]+)$"
)


@dataclass(frozen=True)
class SetSpec:
    """One `--set`: layer, position (int or slice), feature, and an absolute value or a factor."""

    layer: int
    pos: int | slice
    feature: int
    value: float
    is_factor: bool


def set_spec(text: str) -> SetSpec:
    """argparse type for `L:POS:F=VALUE` / `L:POS:F=*K`."""
    m = _SET.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not L:POS:F=VALUE or L:POS:F=*K (e.g. 12:-1:847=0, 9:5..:12=*2)"
        )
    try:
        value = float(m["value"])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {m['value']!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a finite number")
    pos_text = m["pos"]
    if ".." in pos_text:
        start, stop = pos_text.split("..")
        pos: int | slice = slice(int(start) if start else None, int(stop) if stop else None)
    else:
        pos = int(pos_text)
    return SetSpec(int(m["layer"]), pos, int(m["feature"]), value, bool(m["scale"]))


def add_steer_parser(commands):
    p = commands.add_parser(
        "steer",
        help="set or scale CLT features and print the before/after next-token table",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("inputs")
    add_model_arguments(io)
    io.add_argument("--prompt", required=True, help="the prompt text")
    io.add_argument(
        "--set",
        dest="sets",
        action="append",
        required=True,
        type=set_spec,
        metavar="L:POS:F=VALUE",
        help="feature F of layer L at POS gets activation VALUE (or *K: K times its activation); repeatable",
    )
    how = p.add_argument_group("steering")
    how.add_argument(
        "--no-freeze-attention",
        action="store_true",
        help="let attention patterns respond to the steering (default: frozen at the prompt's values)",
    )
    how.add_argument(
        "--direct-effects",
        action="store_true",
        help="freeze every MLP output too, so only the steering deltas propagate (the graph's model)",
    )
    how.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="rows of the table")
    how.add_argument(
        "--generate",
        type=positive_int,
        default=None,
        metavar="N",
        help="also print N greedily generated tokens, without and with the steering",
    )
    add_running_arguments(p)
    p.set_defaults(func=run_steer, parser=p)
    return p


def interventions_of(specs: list[SetSpec], model, clt, tokens) -> list:
    """Interventions for the specs; factors become absolute values at each prompt position."""
    import tl_clt

    acts = None
    out = []
    n_pos = len(tokens)
    for s in specs:
        if not s.is_factor:
            out.append(tl_clt.Intervention(s.layer, s.pos, s.feature, s.value))
            continue
        if acts is None:
            acts = tl_clt.feature_activations(model, clt, tokens).to_dense()
        if not (0 <= s.layer < clt.n_layers and 0 <= s.feature < clt.n_features):
            raise ValueError(
                f"--set {s.layer}:...:{s.feature}: no such feature (the CLT has {clt.n_layers} layers "
                f"and {clt.n_features} features per layer)"
            )
        if isinstance(s.pos, slice):  # the active positions of the slice; none active is an error
            positions = [p for p in range(n_pos)[s.pos] if acts[s.layer, p, s.feature] != 0]
            if not positions:
                raise KeyError(
                    f"--set {s.layer}:{s.pos.start or ''}..{'' if s.pos.stop is None else s.pos.stop}:"
                    f"{s.feature}=*{s.value:g}: the feature is not active in this prompt at any of those "
                    "positions (activation 0), so scaling it changes nothing. Set an absolute value "
                    "(=VALUE) instead."
                )
        else:
            positions = [range(n_pos)[s.pos]]
        # the same rule as tl_clt.scale: a factor on an inactive feature is a KeyError, not a silent no-op
        out += tl_clt.scale([(s.layer, p, s.feature) for p in positions], s.value, acts)
    return out


def run_steer(args) -> list:
    if not args.prompt.strip():
        raise CLIError("--prompt is empty")
    check_local_path(args.model, "--model")
    check_local_path(args.clt, "--clt")
    return quiet_stdout(args, _steer)


def _steer(args) -> list:
    import torch

    import tl_clt
    from tl_clt.generation import check_room

    model, clt = load(args)
    tokens = tl_clt.to_tokens(model, args.prompt)
    if args.generate:  # fail before any work when the generated tokens would not fit the context
        check_room(model, len(tokens), args.generate)
    try:
        ints = interventions_of(args.sets, model, clt, tokens)
    except IndexError as err:
        raise ValueError(f"--set: a position is outside the prompt's {len(tokens)} tokens ({err})") from None
    say(args, f"steering {len(ints)} feature activation(s)")
    with torch.no_grad():
        before = model(tokens[None])[0]
    after = tl_clt.steer(
        model,
        clt,
        tokens,
        ints,
        freeze_attention=not args.no_freeze_attention,
        direct_effects=args.direct_effects,
    )
    lines = [str(tl_clt.prediction_table(model, before, after, k=args.top_k))]
    if args.generate:
        plain = tl_clt.generate(model, clt, args.prompt, [], max_new_tokens=args.generate)
        steered = tl_clt.generate(
            model,
            clt,
            args.prompt,
            ints,
            max_new_tokens=args.generate,
            freeze_attention=not args.no_freeze_attention,
        )
        lines += ["", f"without: {plain!r}", f"steered: {steered!r}"]
    return lines
