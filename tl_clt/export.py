"""Graph JSON for the circuit-tracer local frontend and Neuronpedia.

One file per graph: `{"metadata", "qParams", "nodes", "links"}`, the format circuit-tracer's
`create_graph_files` writes (schema: `tl_clt/schemas/graph.schema.json`). A folder the frontend can
serve holds `<slug>.json` files and a `graph-metadata.json` listing them (`tl_clt.frontend`).

Node ids, as the frontend and Neuronpedia expect them (layers count from 0, `pos` is the token
position, `L` = number of layers):
- feature: `"{layer}_{feature}_{pos}"`, `feature` = Cantor pairing of (layer, feature index)
- MLP error: `"{layer}_-1_{pos}"` (circuit-tracer 0.5.0 wrote `"0_{layer}_{pos}"`, which can equal a
  layer-0 feature's id; later circuit-tracer versions use the form here)
- embedding: `"E_{token_id}_{pos}"`, layer `"E"`
- logit: `"{L + 1}_{token_id}_{pos}"`, layer `"{L + 1}"`, at the last position
`influence` is the node's cumulative share of total influence when nodes are ranked by influence
(0 = most influential). The frontend's pruning slider hides nodes above its value, and starts at
`metadata.node_threshold`; we write there the largest `influence` among the exported features and
errors (at least the requested threshold, which is in `metadata.pruning_settings`), so the frontend
first shows exactly the pruned graph. (The boundary node that `prune` keeps lies just above the
requested threshold; circuit-tracer's own files hide it.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt import files
from tl_clt.checks import fraction
from tl_clt.influence import EDGE_THRESHOLD, NODE_THRESHOLD
from tl_clt.nodes import Node, NodeLike, group_members, node_id
from tl_clt.version import __version__

if TYPE_CHECKING:
    from tl_clt.graph import AttributionGraph

SCHEMA_VERSION = 1
FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}
METADATA_FILE = "graph-metadata.json"


# ------------------------------------------------------------------------ ids
def cantor_pair(x: int, y: int) -> int:
    """Unique non-negative integer for a pair of non-negative integers."""
    return (x + y) * (x + y + 1) // 2 + y


def frontend_node_id(info: dict, n_layers: int) -> str:
    """The frontend's node_id for a node described by `AttributionGraph.node_info`."""
    return Node.from_info(info).json_id(n_layers=n_layers)


def cumulative_influence(influence: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Each node's cumulative share of the total when nodes are sorted by decreasing influence."""
    scores = influence.double()
    order = torch.argsort(scores, descending=True, stable=True)
    total = scores.sum()
    cum = torch.cumsum(scores[order], 0) / (total if total > 0 else 1.0)
    out = torch.empty_like(scores)
    out[order] = cum
    return out.float()


def slugify(text: str, max_len: int = 60) -> str:
    """A file-name and URL safe slug: lower-case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    return slug or "graph"


def check_slug(slug: str) -> str:
    """`slug` itself if it is safe as a file name and URL parameter, else ValueError."""
    if not isinstance(slug, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", slug):
        raise ValueError(
            f"slug {slug!r} must start with a letter or digit and hold only letters, digits, '-', "
            "'_' and '.' (it becomes a file name and a URL parameter)."
        )
    return slug


# ------------------------------------------------------------------------ nodes and links
def _node_record(info: dict, n_layers: int, influence: float | None, is_target: bool) -> dict:
    """One node in the frontend's field order."""
    kind, pos = info["kind"], info["pos"]
    layer, token_prob, clerp = info.get("layer"), 0.0, ""
    if kind == "feature":
        feature, layer_str, js_id = (
            cantor_pair(layer, info["feature"]),
            str(layer),
            f"{layer}_{info['feature']}-0",
        )
    elif kind == "error":
        feature, layer_str, js_id = -1, str(layer), f"{layer}_-1-{pos}"
    elif kind == "token":
        feature, layer_str, js_id = pos, "E", f"E_{info['token_id']}-{pos}"
    else:
        token_prob = info["probability"]
        feature, layer_str = info["token_id"], str(n_layers + 1)
        js_id = f"L_{info['token_id']}-{pos}"
        clerp = f'Output "{info["token"]}" (p={token_prob:.3f})'
    return {
        "node_id": frontend_node_id(info, n_layers),
        "feature": feature,
        "layer": layer_str,
        "ctx_idx": pos,
        "feature_type": FEATURE_TYPES[kind],
        "token_prob": token_prob,
        "is_target_logit": is_target,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js_id,
        "clerp": clerp,
        "influence": influence,
        "activation": info.get("activation"),
    }


def _pruned(
    graph: AttributionGraph, node_threshold: float | None, edge_threshold: float | None
) -> tuple[AttributionGraph, dict]:
    """(pruned graph, what was done): `graph.prune(...)` of an unpruned graph, or the graph itself.

    A graph pruned before export keeps its own pruning; its settings are those `graph.meta` records
    (`pruning_settings`), else unknown (None). Thresholds given for it are refused unless they are the
    recorded ones: they would not be applied, and the metadata would say what was not done.
    """
    given = {"node_threshold": node_threshold, "edge_threshold": edge_threshold}
    given = {k: fraction(k, v) for k, v in given.items() if v is not None}
    if graph.node_mask is None or graph.influence is None:
        settings = {"node_threshold": NODE_THRESHOLD, "edge_threshold": EDGE_THRESHOLD, **given}
        return graph.prune(**settings), settings
    recorded = graph.meta.get("pruning_settings")
    recorded = dict(recorded) if isinstance(recorded, Mapping) else {}
    if any(recorded.get(k) != v for k, v in given.items()):
        args = ", ".join(f"{k}={v}" for k, v in given.items())
        raise ValueError(
            f"This graph is already pruned (by prune()), so {args} would not be applied. Pass no "
            "thresholds to export it as it is, or export the unpruned graph with these thresholds."
        )
    settings = {"node_threshold": None, "edge_threshold": None, **recorded, "pruned_before_export": True}
    return graph, settings


def graph_nodes_and_links(graph: AttributionGraph) -> tuple[list[dict], list[dict], dict[str, str]]:
    """Node and link records of a pruned graph, plus a map from our node ids to the frontend's.

    Features and errors without a kept edge are left out; every token and logit node stays.
    """
    influence = graph.influence if graph.influence is not None else graph.node_influence()
    cum = cumulative_influence(influence).tolist()
    present = graph.present_mask()
    targets, sources = graph.adjacency.nonzero(as_tuple=True)
    keep_edge = present[targets] & present[sources]
    targets, sources = targets[keep_edge], sources[keep_edge]
    connected = torch.zeros(graph.n_nodes, dtype=torch.bool)
    connected[targets] = True
    connected[sources] = True
    first_logit = graph.logit_index(0)
    keep = present & (connected | (torch.arange(graph.n_nodes) >= graph.token_index(0)))
    records, ids = {}, {}
    for i in keep.nonzero().squeeze(-1).tolist():
        info = graph.node_info(i)
        infl = None if info["kind"] == "logit" else cum[i]
        records[i] = _node_record(info, graph.n_layers, infl, is_target=i == first_logit)
        ids[graph.node_id(i)] = records[i]["node_id"]
    weights = graph.adjacency[targets, sources].tolist()
    links = [
        {"source": records[s]["node_id"], "target": records[t]["node_id"], "weight": w}
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights, strict=True)
    ]
    return list(records.values()), links, ids


def exported_id(node: NodeLike, ids: Mapping[str, str], n_layers: int, where: str) -> str:
    """The JSON id of a node given in any spelling (`tl_clt.nodes`), if the export `ids` hold it."""
    try:
        ours = node_id(node, n_layers=n_layers)
    except (TypeError, ValueError):
        ours = None
    if ours not in ids:
        raise KeyError(
            f"{where}: node {node!r} is not in the exported graph (after pruning). Use our node "
            "ids (e.g. 'F:12:5:847', 'E:3:5', 'T:2', 'L:1234') of nodes the pruned graph keeps."
        )
    return ids[ours]


def _q_params(
    ids: dict[str, str],
    n_layers: int,
    supernodes: Mapping[str, Iterable[NodeLike]] | None,
    pinned_ids: Iterable[NodeLike] | None,
    clicked_id: NodeLike | None,
) -> dict:
    """qParams; supernodes as `[label, member, ...]`, members pinned (the subgraph shows pins)."""

    def convert(node: NodeLike, where: str) -> str:
        return exported_id(node, ids, n_layers, where)

    groups = [
        [name] + [convert(m, f"supernode {name!r}") for m in group_members(name, members)]
        for name, members in (supernodes or {}).items()
    ]
    pinned: list[str] = []
    for json_id in [convert(p, "pinned_ids") for p in pinned_ids or []] + [m for g in groups for m in g[1:]]:
        if json_id not in pinned:
            pinned.append(json_id)
    clicked = convert(clicked_id, "clicked_id") if clicked_id else ""
    return {"pinnedIds": pinned, "supernodes": groups, "linkType": "both", "clickedId": clicked, "sg_pos": ""}


# ------------------------------------------------------------------------ public
def graph_to_dict(
    graph: AttributionGraph,
    slug: str,
    *,
    node_threshold: float | None = None,
    edge_threshold: float | None = None,
    scan: str | None = None,
    prompt: str | None = None,
    supernodes: Mapping[str, Iterable[NodeLike]] | None = None,
    pinned_ids: Iterable[NodeLike] | None = None,
    clicked_id: NodeLike | None = None,
    clerps: Mapping[NodeLike, str] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    dashboards: Any = None,
) -> dict:
    """The frontend's graph dict of `graph`, pruned by `graph.prune` unless it already is.

    Thresholds (default NODE_THRESHOLD 0.8, EDGE_THRESHOLD 0.98) prune an unpruned graph and are recorded in
    `metadata.pruning_settings`; a graph that is already pruned is exported as it is, and passing
    thresholds for it is an error (they would not be applied). `supernodes` maps a group name to our
    node ids (`"F:12:5:847"`, ...); `clerps` maps our node ids to labels; `scan` names the model
    (Neuronpedia reads it as the model id; default the graph's model name); `extra_metadata` is merged
    into `metadata` (a slug it sets must be a safe file name too). Nodes may be given in any spelling
    of `tl_clt.nodes` (Python id, JSON id, (layer, pos, feature) tuple).
    Features without a clerp are labelled from feature dashboards (`FeatureCard.label`): `dashboards`
    is a FeatureDashboards, folder or hub id; None uses the local `features/` next to the graph's CLT
    if there is one; False labels nothing.
    """
    check_slug(slug)
    if not torch.isfinite(graph.adjacency).all():
        raise ValueError("The graph has NaN or inf edge weights; it cannot be pruned or exported.")
    pruned, settings = _pruned(graph, node_threshold, edge_threshold)
    nodes, links, ids = graph_nodes_and_links(pruned)
    by_id = {n["node_id"]: n for n in nodes}
    labelled = set()
    for node, label in (clerps or {}).items():
        js_id = exported_id(node, ids, graph.n_layers, "clerps")
        by_id[js_id]["clerp"] = str(label)
        labelled.add(js_id)
    dash = _dashboards(graph, dashboards)
    if dash is not None:
        for our_id, js_id in ids.items():
            if our_id.startswith("F:") and js_id not in labelled:
                by_id[js_id]["clerp"] = dash[our_id].label
    metadata = {
        "slug": slug,
        "scan": scan or _default_scan(graph),
        "transcoder_list": [],
        "prompt_tokens": list(graph.token_strs),
        "prompt": prompt if prompt is not None else "".join(graph.token_strs),
        "node_threshold": _slider_threshold(nodes, settings["node_threshold"]),
        "schema_version": SCHEMA_VERSION,
        "info": _info(graph),
        "pruning_settings": settings,
    }
    metadata.update(extra_metadata or {})
    if metadata["slug"] != slug:
        check_slug(metadata["slug"])  # extra_metadata replaced it: the slug names a file
    qparams = _q_params(ids, graph.n_layers, supernodes, pinned_ids, clicked_id)
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def _dashboards(graph: AttributionGraph, dashboards: Any):
    """The FeatureDashboards to label a graph's features with (see graph_to_dict), or None."""
    from tl_clt.dashboards.reader import dashboards_for_graph, open_dashboards

    if dashboards is False:
        return None
    if dashboards is None or dashboards is True:
        return dashboards_for_graph(graph, local_only=dashboards is None)
    return open_dashboards(dashboards)


def _slider_threshold(nodes: list[dict], node_threshold: float) -> float:
    """The frontend hides nodes whose cumulative influence exceeds its slider, which starts at
    `metadata.node_threshold`: raise it to the least influential exported node so all are shown."""
    values = [n["influence"] for n in nodes if n["feature_type"] not in ("embedding", "logit")]
    return float(min(1.0, max([node_threshold or 0.0] + values)))


def _default_scan(graph: AttributionGraph) -> str:
    name = graph.model_name or "tl_clt"
    return str(name).rstrip("/").rsplit("/", 1)[-1]


def _info(graph: AttributionGraph) -> dict:
    return {
        "generator": {"name": "tl_clt", "version": __version__},
        "model": graph.model_name,
        "transcoder": graph.clt_name,
    }


def json_text(data: dict) -> str:
    """`data` as compact JSON; NaN/inf raise ValueError instead of writing invalid JSON."""
    return json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write a graph (or metadata) dict as JSON, atomically; NaN/inf raise before anything is written."""
    return files.write_text(path, json_text(data), what="graph JSON")


def to_json(graph: AttributionGraph, path: str | os.PathLike, slug: str | None = None, **kwargs) -> Path:
    """Write `graph_to_dict(graph, slug, **kwargs)` to `path`; slug defaults to the file stem.

    The path is checked (its folder exists and is writable) before the graph is pruned."""
    path = files.check_output_path(path, what="graph JSON")
    return write_json(graph_to_dict(graph, slug or slugify(path.stem), **kwargs), path)


def metadata_entry(data: dict) -> dict:
    """The `graph-metadata.json` entry of a graph dict (its metadata without the bulky extras)."""
    keys = ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version")
    return {k: data["metadata"][k] for k in keys if k in data["metadata"]}


def read_listing(out_dir: str | os.PathLike) -> dict:
    """`out_dir/graph-metadata.json` (`{"graphs": []}` when there is none), checked: ValueError names the
    file when it is not JSON or not `{"graphs": [{"slug": ...}, ...]}`."""
    path = Path(out_dir) / METADATA_FILE
    if not path.exists():
        return {"graphs": []}
    fix = "fix it, or delete it to start a new listing"
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # IsADirectoryError, JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not a readable JSON file ({type(err).__name__}: {err}); {fix}.") from err
    graphs = listing.get("graphs") if isinstance(listing, dict) else None
    if not isinstance(graphs, list) or not all(
        isinstance(g, dict) and isinstance(g.get("slug"), str) for g in graphs
    ):
        raise ValueError(
            f'{path} is not a graph listing (expected {{"graphs": [{{"slug": ...}}, ...]}}, found a '
            f"{type(listing).__name__}); {fix}."
        )
    return listing


def add_to_metadata(entry: dict, out_dir: str | os.PathLike) -> Path:
    """Add (or replace, by slug) one graph in `out_dir/graph-metadata.json`."""
    listing = read_listing(out_dir)
    listing["graphs"] = [g for g in listing["graphs"] if g["slug"] != entry["slug"]] + [entry]
    return write_json(listing, Path(out_dir) / METADATA_FILE)


def check_graph_dict(data, where: str) -> dict:
    """`data` if it has the parts of a graph JSON that `write_graph_folder` uses, else ValueError.

    (The full check is `validate_graph_json`, which needs jsonschema.)"""
    meta = data.get("metadata") if isinstance(data, dict) else None
    parts = {"nodes": list, "links": list, "qParams": dict}
    fields = {"slug": str, "scan": str, "prompt": str, "prompt_tokens": list}
    if (
        not isinstance(meta, dict)
        or any(not isinstance(data.get(k), t) for k, t in parts.items())
        or any(not isinstance(meta.get(k), t) for k, t in fields.items())
    ):
        raise ValueError(
            f"{where} is not a graph JSON file (a graph JSON holds metadata with slug, scan, prompt and "
            "prompt_tokens, plus nodes, links and qParams): pass graphs exported by tl_clt or circuit-tracer."
        )
    return data


# ------------------------------------------------------------------------ validation
def load_schema(name: str = "graph") -> dict:
    """The JSON Schema shipped with tl_clt: "graph" or "graph-metadata"."""
    text = resources.files("tl_clt").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


def validate_graph_json(data: dict | str | os.PathLike) -> None:
    """Raise if a graph dict (or file) breaks the schema, repeats a node id or links a missing node.

    Needs the `jsonschema` package (in the `dev` extra).
    """
    try:
        import jsonschema
    except ImportError as err:
        raise ImportError("validate_graph_json needs jsonschema: pip install jsonschema") from err
    if not isinstance(data, dict):
        path = Path(data)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path} is not a JSON file ({type(err).__name__}: {err}).") from err
    jsonschema.Draft202012Validator(load_schema("graph")).validate(data)
    ids = [n["node_id"] for n in data["nodes"]]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise ValueError(f"node ids repeat: {dupes[:10]}")
    known = set(ids)
    n_pos = len(data["metadata"]["prompt_tokens"])
    outside = [n["node_id"] for n in data["nodes"] if n["ctx_idx"] >= n_pos]
    if outside:
        raise ValueError(f"nodes past the last prompt token ({n_pos} tokens): {outside[:5]}")
    bad = [
        (lk["source"], lk["target"])
        for lk in data["links"]
        if lk["source"] not in known or lk["target"] not in known
    ]
    if bad:
        raise ValueError(f"{len(bad)} links name nodes that are not in the graph, e.g. {bad[:3]}")
    for group in data["qParams"]["supernodes"]:
        missing = [m for m in group[1:] if m not in known]
        if missing:
            raise ValueError(f"supernode {group[0]!r} names missing nodes {missing[:5]}")


def validate_graph_folder(out_dir: str | os.PathLike) -> list[str]:
    """Validate `graph-metadata.json` and every graph it lists; returns the slugs."""
    import jsonschema

    out_dir = Path(out_dir)
    listing = read_listing(out_dir)
    jsonschema.Draft202012Validator(load_schema("graph-metadata")).validate(listing)
    slugs = [g["slug"] for g in listing["graphs"]]
    for slug in slugs:
        validate_graph_json(out_dir / f"{slug}.json")
    return slugs
