"""`tl-clt attribute`: attribution graph of one prompt -> graph JSON (+ picture, + .pt)."""

from __future__ import annotations

from pathlib import Path

from tl_clt.cli.common import (
    CLIError,
    add_model_arguments,
    add_running_arguments,
    check_local_path,
    load,
    positive_int,
    probability,
    quiet_stdout,
    say,
    unit_interval,
)


def add_attribute_parser(commands):
    p = commands.add_parser(
        "attribute",
        help="attribution graph of one prompt -> graph JSON (+ picture)",
        description="Compute the attribution graph of a prompt, prune it and write the graph JSON "
        "that the circuit-tracer frontend and Neuronpedia read (and optionally a picture).",
    )
    io = p.add_argument_group("inputs and outputs")
    add_model_arguments(io)
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

    add_attribution_arguments(p)
    from tl_clt.targets import TARGET_SYNTAX

    p.add_argument_group("attribution targets (default: the top logits)").add_argument(
        "--target",
        action="append",
        default=None,
        metavar="T",
        help=f"explain T instead of the top logits; repeat for several (equal weights). T is {TARGET_SYNTAX}",
    )
    add_pruning_arguments(p)
    add_running_arguments(p)
    p.set_defaults(func=run_attribute, parser=p)
    return p


def add_attribution_arguments(p) -> None:
    """--max-feature-nodes, --batch-size, --max-n-logits, --desired-logit-prob (`tl_clt.attribute`)."""
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


def add_pruning_arguments(p) -> None:
    """--node-threshold, --edge-threshold."""
    from tl_clt.influence import EDGE_THRESHOLD, NODE_THRESHOLD

    prune = p.add_argument_group("pruning (fractions of influence on the logits, in [0, 1])")
    for what, default in (("node", NODE_THRESHOLD), ("edge", EDGE_THRESHOLD)):
        prune.add_argument(
            f"--{what}-threshold",
            type=unit_interval,
            default=default,
            metavar="T",
            help=f"keep the {what}s that carry this share of the influence (default: %(default)s)",
        )


def attribution_settings(args) -> dict:
    """The `tl_clt.attribute` keyword arguments given on the command line."""
    return {
        "max_n_logits": args.max_n_logits,
        "desired_logit_prob": args.desired_logit_prob,
        "max_feature_nodes": args.max_feature_nodes,
        "batch_size": args.batch_size,
    }


# ------------------------------------------------------------------------ attribute
def _check_outputs(args) -> None:
    """Every output path can be written (folders made as needed), before anything is computed."""
    from tl_clt import files
    from tl_clt.export import read_listing

    outputs = {"-o": args.output, "--png": args.png, "--pt": args.pt}
    outputs = {flag: path for flag, path in outputs.items() if path is not None}
    if args.output.is_dir():
        raise CLIError(f"-o {args.output}: that is a folder; name the graph file ({args.output}/graph.json?)")
    if args.output.suffix.lower() != ".json":
        raise CLIError(f"-o {args.output}: the graph file must end in .json")
    resolved = [p.resolve() for p in outputs.values()]
    if len(set(resolved)) < len(resolved):
        raise CLIError(f"{' / '.join(outputs)}: two outputs name the same file; give each its own path")
    for flag, path in outputs.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.check_output_path(path)
        except OSError as err:
            raise CLIError(f"{flag} {path}: {err}") from None
    if args.png is not None:
        try:
            from tl_clt.plot import check_picture_path

            check_picture_path(args.png)
        except ImportError:
            raise CLIError('--png needs matplotlib: pip install "tl-clt[viz]"') from None
        except ValueError as err:
            raise CLIError(f"--png {args.png}: {err}") from None
    if args.folder is not None:
        try:
            files.check_output_folder(args.folder, what="frontend folder")
            read_listing(args.folder)
        except (OSError, ValueError) as err:
            raise CLIError(f"--folder {args.folder}: {err}") from None


def _prepare(args) -> None:
    """All checks that need no model, so mistakes fail in a second."""
    if not args.prompt.strip():
        raise CLIError("--prompt is empty")
    check_local_path(args.model, "--model")
    check_local_path(args.clt, "--clt")
    from tl_clt.export import check_slug, slugify

    try:
        args.slug = check_slug(args.slug) if args.slug else slugify(args.output.stem)
    except ValueError as err:
        raise CLIError(f"--slug: {err}") from None
    _check_outputs(args)


def run_attribute(args) -> list[Path]:
    """Load, attribute, prune, write; returns the paths written."""
    _prepare(args)
    return quiet_stdout(args, _attribute)


def _attribute(args) -> list[Path]:
    import tl_clt

    model, clt = load(args)
    say(args, "attributing")
    settings = attribution_settings(args)
    if args.target is not None:
        from tl_clt.targets import TargetError, parse_target_spec

        try:
            targets = [parse_target_spec(t) for t in args.target]
            graph = tl_clt.attribute(
                model, clt, args.prompt, **settings, targets=targets, verbose=not args.quiet
            )
        except TargetError as err:
            raise CLIError(f"--target: {err}") from None
    else:
        graph = tl_clt.attribute(model, clt, args.prompt, **settings, verbose=not args.quiet)
    written = []
    if args.pt is not None:
        graph.save(args.pt)
        written.append(args.pt)
    pruned = graph.prune(node_threshold=args.node_threshold, edge_threshold=args.edge_threshold)
    pruning = {"node_threshold": args.node_threshold, "edge_threshold": args.edge_threshold}
    options = dict(
        scan=args.scan,
        prompt=args.prompt,
        extra_metadata={"generation_settings": settings, "pruning_settings": pruning},
    )
    written.append(pruned.to_json(args.output, slug=args.slug, **options))
    if args.folder is not None:
        tl_clt.write_graph_folder({args.slug: pruned}, args.folder, **options)
        written.append(args.folder / f"{args.slug}.json")
    if args.png is not None:
        pruned.plot(args.png)
        written.append(args.png)
    G = pruned.to_networkx()
    say(
        args,
        f"graph: {graph.n_features} feature rows; pruned to {G.number_of_nodes()} nodes, "
        f"{G.number_of_edges()} edges",
    )
    return written
