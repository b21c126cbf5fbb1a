"""Graph JSON for the circuit-tracer local frontend and Neuronpedia.

One file per graph: `{"metadata", "qParams", "nodes", "links"}`, the format circuit-tracer's
`create_graph_files` writes (schema: `tl_clt/schemas/graph.schema.json`). A folder the frontend can
serve holds `<slug>.json` files and a `graph-metadata.json` listing them (`write_graph_folder`).

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
    kind, pos = info["kind"], info["pos"]
    if kind == "feature":
        return f"{info['layer']}_{info['feature']}_{pos}"
    if kind == "error":
        return f"{info['layer']}_-1_{pos}"
    if kind == "token":
        return f"E_{info['token_id']}_{pos}"
    return f"{n_layers + 1}_{info['token_id']}_{pos}"


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


def _pruned(graph: AttributionGraph, node_threshold: float, edge_threshold: float):
    """The graph itself when already pruned, else `graph.prune(...)`."""
    if graph.node_mask is not None and graph.influence is not None:
        return graph
    return graph.prune(node_threshold=node_threshold, edge_threshold=edge_threshold)


def graph_nodes_and_links(graph: AttributionGraph) -> tuple[list[dict], list[dict], dict[str, str]]:
    """Node and link records of a pruned graph, plus a map from our node ids to the frontend's.

    Features and errors without a kept edge are left out; every token and logit node stays.
    """
    influence = graph.influence if graph.influence is not None else graph.node_influence()
    cum = cumulative_influence(influence).tolist()
    present = graph._present()
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


def _q_params(
    ids: dict[str, str],
    supernodes: Mapping[str, Iterable[str]] | None,
    pinned_ids: Iterable[str] | None,
    clicked_id: str | None,
) -> dict:
    """qParams; supernodes as `[label, member, ...]`, members pinned (the subgraph shows pins)."""

    def convert(node_id: str, where: str) -> str:
        if node_id in ids:
            return ids[node_id]
        if node_id in ids.values():
            return node_id
        raise KeyError(
            f"{where}: node {node_id!r} is not in the exported graph (after pruning). Use our node "
            "ids (e.g. 'F:12:5:847', 'E:3:5', 'T:2', 'L:1234') of nodes the pruned graph keeps."
        )

    groups = [
        [name] + [convert(m, f"supernode {name!r}") for m in members]
        for name, members in (supernodes or {}).items()
    ]
    pinned: list[str] = []
    for node_id in [convert(p, "pinned_ids") for p in pinned_ids or []] + [m for g in groups for m in g[1:]]:
        if node_id not in pinned:
            pinned.append(node_id)
    clicked = convert(clicked_id, "clicked_id") if clicked_id else ""
    return {"pinnedIds": pinned, "supernodes": groups, "linkType": "both", "clickedId": clicked, "sg_pos": ""}


# ------------------------------------------------------------------------ public
def graph_to_dict(
    graph: AttributionGraph,
    slug: str,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    scan: str | None = None,
    prompt: str | None = None,
    supernodes: Mapping[str, Iterable[str]] | None = None,
    pinned_ids: Iterable[str] | None = None,
    clicked_id: str | None = None,
    clerps: Mapping[str, str] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    dashboards: Any = None,
) -> dict:
    """The frontend's graph dict of `graph`, pruned by `graph.prune` unless it already is.

    `supernodes` maps a group name to our node ids (`"F:12:5:847"`, ...); `clerps` maps our node ids
    to labels; `scan` names the model (Neuronpedia reads it as the model id; default the graph's
    model name); `extra_metadata` is merged into `metadata`. Features without a clerp are labelled
    from feature dashboards (`FeatureCard.label`): `dashboards` is a FeatureDashboards, folder or hub
    id; None uses the local `features/` next to the graph's CLT if there is one; False labels nothing.
    """
    check_slug(slug)
    if not torch.isfinite(graph.adjacency).all():
        raise ValueError("The graph has NaN or inf edge weights; it cannot be pruned or exported.")
    pruned = _pruned(graph, node_threshold, edge_threshold)
    nodes, links, ids = graph_nodes_and_links(pruned)
    by_id = {n["node_id"]: n for n in nodes}
    for our_id, label in (clerps or {}).items():
        if our_id not in ids:
            raise KeyError(f"clerps: node {our_id!r} is not in the exported graph (after pruning).")
        by_id[ids[our_id]]["clerp"] = str(label)
    dash = _dashboards(graph, dashboards)
    if dash is not None:
        for our_id, js_id in ids.items():
            if our_id.startswith("F:") and our_id not in (clerps or {}):
                by_id[js_id]["clerp"] = dash[our_id].label
    metadata = {
        "slug": slug,
        "scan": scan or _default_scan(graph),
        "transcoder_list": [],
        "prompt_tokens": list(graph.token_strs),
        "prompt": prompt if prompt is not None else "".join(graph.token_strs),
        "node_threshold": _slider_threshold(nodes, node_threshold),
        "schema_version": SCHEMA_VERSION,
        "info": _info(graph),
        "pruning_settings": {
            "node_threshold": float(node_threshold),
            "edge_threshold": float(edge_threshold),
        },
    }
    metadata.update(extra_metadata or {})
    qparams = _q_params(ids, supernodes, pinned_ids, clicked_id)
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
    return float(min(1.0, max([float(node_threshold)] + values)))


def _default_scan(graph: AttributionGraph) -> str:
    name = graph.model_name or "tl_clt"
    return str(name).rstrip("/").rsplit("/", 1)[-1]


def _info(graph: AttributionGraph) -> dict:
    from tl_clt import __version__

    return {
        "generator": {"name": "tl_clt", "version": __version__},
        "model": graph.model_name,
        "transcoder": graph.clt_name,
    }


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write a graph (or metadata) dict as JSON; NaN/inf raise instead of writing invalid JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    path.write_text(text, encoding="utf-8")
    return path


def to_json(graph: AttributionGraph, path: str | os.PathLike, slug: str | None = None, **kwargs) -> Path:
    """Write `graph_to_dict(graph, slug, **kwargs)` to `path`; slug defaults to the file stem."""
    path = Path(path)
    return write_json(graph_to_dict(graph, slug or slugify(path.stem), **kwargs), path)


def metadata_entry(data: dict) -> dict:
    """The `graph-metadata.json` entry of a graph dict (its metadata without the bulky extras)."""
    keys = ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version")
    return {k: data["metadata"][k] for k in keys if k in data["metadata"]}


def add_to_metadata(entry: dict, out_dir: str | os.PathLike) -> Path:
    """Add (or replace, by slug) one graph in `out_dir/graph-metadata.json`."""
    path = Path(out_dir) / METADATA_FILE
    listing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"graphs": []}
    listing["graphs"] = [g for g in listing.get("graphs", []) if g.get("slug") != entry["slug"]]
    listing["graphs"].append(entry)
    return write_json(listing, path)


def _load_source(item, slug: str | None, kwargs: dict) -> dict:
    """A graph dict from an AttributionGraph, a saved graph (.pt) or an exported graph (.json)."""
    from tl_clt.graph import AttributionGraph

    if isinstance(item, AttributionGraph):
        return graph_to_dict(item, slug or slugify("".join(item.token_strs)), **kwargs)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"No graph file at {path}.")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if slug:
            data["metadata"]["slug"] = check_slug(slug)
        return data
    return graph_to_dict(AttributionGraph.load(path), slug or slugify(path.stem), **kwargs)


def write_graph_folder(
    graphs: Mapping[str, Any] | Iterable[Any], out_dir: str | os.PathLike, *, dashboards: Any = None, **kwargs
) -> Path:
    """A folder the circuit-tracer frontend serves: `<slug>.json` files + `graph-metadata.json`.

    `graphs`: AttributionGraphs, `.pt` graph files or exported `.json` files, as a list (slugs from
    the prompt / file name) or a dict slug -> graph. `kwargs` go to `graph_to_dict`. An existing
    `graph-metadata.json` is updated. Serve it with circuit-tracer's
    `circuit_tracer.frontend.local_server.serve(data_dir=out_dir)`.

    `dashboards` (a FeatureDashboards, folder or hub id; True: those next to each graph's CLT) also
    writes the record of every feature node to `features/<name>/<feature id>.json` and points the
    graph's `scan` there (`./data/features/<name>`), so clicking a feature in the frontend shows its
    examples offline; its labels become the features' clerps.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = graphs.items() if isinstance(graphs, Mapping) else [(None, g) for g in graphs]
    seen: set[str] = set()
    for slug, item in items:
        dash = _folder_dashboards(item, dashboards)
        data = _load_source(item, slug, {**kwargs, "dashboards": dash} if dash is not None else kwargs)
        if dash is not None:
            data["metadata"]["scan"] = write_feature_files(data, dash, out_dir)
        base, n = data["metadata"]["slug"], 2
        while data["metadata"]["slug"] in seen:
            data["metadata"]["slug"] = f"{base}-{n}"
            n += 1
        seen.add(data["metadata"]["slug"])
        write_json(data, out_dir / f"{data['metadata']['slug']}.json")
        add_to_metadata(metadata_entry(data), out_dir)
    return out_dir


def _folder_dashboards(item: Any, dashboards: Any):
    from tl_clt.dashboards.reader import dashboards_for, dashboards_for_graph, open_dashboards
    from tl_clt.graph import AttributionGraph

    if dashboards is None or dashboards is False:
        return None
    if dashboards is not True:
        return open_dashboards(dashboards)
    if isinstance(item, AttributionGraph):
        found = dashboards_for_graph(item)
    elif Path(item).suffix == ".json":
        info = json.loads(Path(item).read_text(encoding="utf-8"))["metadata"].get("info") or {}
        found = dashboards_for(info.get("transcoder")) if info.get("transcoder") else None
    else:
        found = dashboards_for_graph(AttributionGraph.load(item))
    if found is None:
        from tl_clt.dashboards.format import DashboardsNotFoundError

        raise DashboardsNotFoundError(
            f"dashboards=True: no features/ dashboards next to the CLT of graph {item!r}; pass dashboards= "
            "(a FeatureDashboards, folder or hub id)."
        )
    return found


def write_feature_files(data: dict, dashboards: Any, out_dir: str | os.PathLike) -> str:
    """Write the dashboard record of each feature node of a graph dict to
    `out_dir/features/<name>/<feature id>.json` (the frontend's feature id: Cantor pairing of layer and
    feature); returns the `scan` that makes the frontend read them (`./data/features/<name>`)."""
    import hashlib

    from tl_clt.dashboards.format import cantor_unpair, write_feature_json

    source = str(dashboards.source)
    base = Path(source).parent.name if Path(source).name == "features" else Path(source).name
    name = f"{slugify(base, 40)}-{hashlib.sha1(source.encode()).hexdigest()[:6]}"
    folder = Path(out_dir) / "features" / name
    folder.mkdir(parents=True, exist_ok=True)
    for node in data["nodes"]:
        if node["feature_type"] != FEATURE_TYPES["feature"]:
            continue
        layer, feature = cantor_unpair(int(node["feature"]))
        if str(layer) != str(node["layer"]):
            raise ValueError(
                f"node {node['node_id']}: feature id {node['feature']} is not of layer {node['layer']}."
            )
        path = folder / f"{node['feature']}.json"
        if not path.is_file():
            write_feature_json(dashboards.record(layer, feature), path)
    return f"./data/features/{name}"


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
        data = json.loads(Path(data).read_text(encoding="utf-8"))
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
    listing = json.loads((out_dir / METADATA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(load_schema("graph-metadata")).validate(listing)
    slugs = [g["slug"] for g in listing["graphs"]]
    for slug in slugs:
        validate_graph_json(out_dir / f"{slug}.json")
    return slugs
