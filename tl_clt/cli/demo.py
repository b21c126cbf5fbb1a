"""`tl-clt demo`: the main job on the shipped toy world, offline, in seconds.

    tl-clt demo                  # the seed's prompt -> prediction, groups, steering table, JSON, PNG
    tl-clt demo -o out/ --prompt "Fact: The president of the United States in 1985 was"

Loads the toy world (a 4-layer Qwen3 and its CLT, in the package), prints the model's prediction,
computes the attribution graph, proposes groups of features with `tl_clt.propose_supernodes` (when this
version has it), ablates and steers each group whole (`proposals.whole`: its members and the features
pruning left out where it sits) and prints what the model predicts then, and writes the pruned graph JSON
(for the circuit-tracer frontend / Neuronpedia) and a picture: the circuit diagram of the groups, or the
pruned graph when there are none.
"""

from __future__ import annotations

from pathlib import Path

from tl_clt.cli.common import add_backend_argument, quiet_stdout, say

PROMPT = "Fact: The president of the United States in 2010 was"


def add_demo_parser(commands):
    p = commands.add_parser(
        "demo",
        help="the main job on the shipped toy world (offline, seconds): story, groups, table, JSON, PNG",
        description="Run the seed's prompt on the toy world that ships with tl_clt: prediction, "
        "attribution graph, proposed groups of features, a steering table, the graph JSON and a picture.",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("tl-clt-demo"),
        metavar="DIR",
        help="folder for graph.json and circuit.png (created; default: %(default)s)",
    )
    p.add_argument("--prompt", default=PROMPT, help="the prompt (default: the seed's, %(default)r)")
    add_backend_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=run_demo, parser=p)
    return p


def run_demo(args) -> list[str]:
    if args.output.exists() and not args.output.is_dir():
        from tl_clt.cli.common import CLIError

        raise CLIError(f"-o {args.output}: a file, not a folder")
    args.output.mkdir(parents=True, exist_ok=True)
    return quiet_stdout(args, _demo)


def _top(model, logits, k: int = 3) -> str:
    p = logits[-1].detach().float().softmax(-1)
    top = p.topk(k)
    return ", ".join(
        f"{model.tokenizer.decode([i])!r} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices)
    )


def _groups(pruned, graph, model, clt) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({name: members in the pruned graph}, {name: what to steer: the group whole}) from
    `tl_clt.propose_supernodes` when this version has it; none otherwise."""
    import tl_clt

    propose = getattr(tl_clt, "propose_supernodes", None)
    if propose is None:
        return {}, {}
    proposals = propose(pruned, model=model, clt=clt, unpruned=graph)
    groups = {name: list(members) for name, members in proposals.items() if members}
    whole = getattr(proposals, "whole", None)
    return groups, {name: whole(name) if whole else members for name, members in groups.items()}


def _steering_table(model, clt, graph, groups: dict[str, list[str]]) -> list[str]:
    """Each group ablated and steered x-1 (`tl_clt.group_effects`): the top token after and the clean
    answer's probability."""
    import tl_clt

    table = tl_clt.group_effects(model, clt, graph, groups, factors=(0.0, -1.0), k=1)
    word = table["top"][0].rsplit(" ", 1)[0]
    cols = f"{'ablated: top (p)':24s} {'x-1: top (p)':24s}"
    head = f"{'group':28s} {'nodes':>5s}  {cols}  p({word}) ablated / x-1"
    lines = [head, "-" * len(head)]
    rows = table.iloc[1:].to_dict("records")
    for ablated, down in zip(rows[::2], rows[1::2], strict=True):
        lines.append(
            f"{ablated['group'][:28]:28s} {ablated['features']:5d}  {ablated['top']:24s} {down['top']:24s}  "
            f"{ablated['p(clean top)']:.2f} / {down['p(clean top)']:.2f}"
        )
    return lines


def _demo(args) -> list[str]:
    import tl_clt
    from tl_clt.toyworld import load_toyworld

    backend = args.backend or tl_clt.default_backend()
    say(args, f"loading the toy world (a 4-layer Qwen3 and its CLT, shipped with tl_clt; {backend})")
    model, clt = load_toyworld(backend=backend)
    prompt = args.prompt
    out = [f"prompt: {prompt!r}"]
    out.append("prediction: " + _top(model, model(tl_clt.to_tokens(model, prompt)[None])[0]))
    say(args, "attributing")
    graph = tl_clt.attribute(model, clt, prompt, verbose=not args.quiet)
    pruned = graph.prune(0.8, 0.98)
    scores = graph.scores()
    out.append(
        f"graph: {graph.n_features} features; replacement {scores.replacement:.3f}, completeness "
        f"{scores.completeness:.3f}; pruned to {pruned.to_networkx().number_of_nodes()} nodes"
    )
    groups, steered = _groups(pruned, graph, model, clt)
    if groups:
        out.append("groups (tl_clt.propose_supernodes):")
        out += [
            f"  {name}: {len(m)} node{'s' * (len(m) != 1)}, e.g. {', '.join(map(str, m[:3]))}"
            for name, m in groups.items()
        ]
        out.append("each group steered whole (with the features pruning left out where it sits):")
        out += _steering_table(model, clt, graph, steered)
    else:
        out.append(
            "groups: none (this version has no tl_clt.propose_supernodes; pass your own to plot_circuit)"
        )
    json_path = pruned.to_json(
        args.output / "graph.json", slug="demo", supernodes=groups or None, prompt=prompt
    )
    png = args.output / ("circuit.png" if groups else "graph.png")
    if groups:
        tl_clt.plot_circuit(graph, groups, png)
    else:
        pruned.plot(png)
    out += [f"wrote {json_path}", f"wrote {png}"]
    return out
