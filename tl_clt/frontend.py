"""A folder the circuit-tracer frontend serves: `<slug>.json` graph files and `graph-metadata.json`.

It reads saved graphs (`.pt`), so it sits above `tl_clt.graph`; the JSON itself is `tl_clt.export`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tl_clt import files
from tl_clt.dashboards.format import DashboardsNotFoundError, cantor_unpair, write_feature_json
from tl_clt.dashboards.reader import FeatureDashboards, dashboards_for, dashboards_for_graph, open_dashboards
from tl_clt.export import (
    FEATURE_TYPES,
    METADATA_FILE,
    check_graph_dict,
    check_slug,
    graph_to_dict,
    json_text,
    metadata_entry,
    read_listing,
    slugify,
)
from tl_clt.graph import AttributionGraph


def _load_source(item, slug: str | None, kwargs: dict, dashboards: Any = None) -> tuple[dict, Any]:
    """(graph dict, FeatureDashboards or None) from an AttributionGraph, a saved graph file or an exported
    graph (.json); `dashboards` as in `write_graph_folder`."""
    if not isinstance(item, AttributionGraph):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"No graph file at {path}.")
        if path.suffix.lower() == ".json":
            data = _load_json(path, slug)
            dash = _folder_dashboards(data, dashboards, path)
            if dash is not None:  # label the features the file left without a clerp
                for node in _feature_nodes(data):
                    if not node.get("clerp"):
                        node["clerp"] = dash[_layer_feature(node)].label
            return data, dash
        item, slug = AttributionGraph.load(path), slug or slugify(path.stem)
    dash = _folder_dashboards(item, dashboards, item)
    kwargs = {**kwargs, "dashboards": dash if dash is not None else dashboards}
    return graph_to_dict(item, slug or slugify("".join(item.token_strs)), **kwargs), dash


def _load_json(path: Path, slug: str | None) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not a graph JSON file ({type(err).__name__}: {err}).") from err
    check_graph_dict(data, str(path))
    if slug:
        data["metadata"]["slug"] = check_slug(slug)
    else:
        try:
            check_slug(data["metadata"]["slug"])
        except ValueError as err:
            raise ValueError(
                f"{path}: its metadata.slug cannot name a file ({err}) Give it a name: "
                f"write_graph_folder({{'name': {str(path)!r}}}, ...)."
            ) from None
    return data


def write_graph_folder(
    graphs: Mapping[str, Any] | Iterable[Any],
    out_dir: str | os.PathLike,
    *,
    dashboards: Any = None,
    **kwargs,
) -> Path:
    """A folder the circuit-tracer frontend serves: `<slug>.json` files + `graph-metadata.json`.

    `graphs`: AttributionGraphs, saved graph files or exported `.json` files, as a list (slugs from
    the prompt / file name) or a dict slug -> graph. `kwargs` go to `graph_to_dict`. An existing
    `graph-metadata.json` is updated. Every input is read and checked before anything is written;
    each file is written atomically, and every file stays inside `out_dir`. Serve it with
    circuit-tracer's `circuit_tracer.frontend.local_server.serve(data_dir=out_dir)`.

    `dashboards` (a FeatureDashboards, folder or hub id; True: those next to each graph's CLT) also
    writes the record of every feature node to `features/<name>/<feature id>.json` and points the
    graph's `scan` there (`./data/features/<name>`), so clicking a feature in the frontend shows its
    examples offline; its labels become the clerps of features that have none. None (the default)
    labels features from the local `features/` next to the graph's CLT if there is one and writes no
    records; False labels nothing.
    """
    out_dir = files.check_output_folder(out_dir, what="graph folder")
    listing = read_listing(out_dir)
    items = graphs.items() if isinstance(graphs, Mapping) else [(None, g) for g in graphs]
    datas: dict[str, dict] = {}
    records: dict[Path, dict] = {}  # features/<name>/<id>.json -> record, read before any write
    for slug, item in items:
        data, dash = _load_source(item, slug, kwargs, dashboards)
        if dash is not None:
            data["metadata"]["scan"] = _feature_records(data, dash, out_dir, records)
        base, n = data["metadata"]["slug"], 2
        while data["metadata"]["slug"] in datas:
            data["metadata"]["slug"] = f"{base}-{n}"
            n += 1
        datas[data["metadata"]["slug"]] = data
    paths = {slug: files.path_inside(out_dir, f"{slug}.json") for slug in datas}
    if METADATA_FILE in {p.name for p in paths.values()}:
        raise ValueError(f"A graph cannot be named {METADATA_FILE[:-5]!r}: that name is the listing's.")
    texts = {slug: json_text(data) for slug, data in datas.items()}
    entries = [metadata_entry(data) for data in datas.values()]
    listing["graphs"] = [g for g in listing["graphs"] if g["slug"] not in datas] + entries
    listing_text = json_text(listing)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, record in records.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_feature_json(record, path)
    for slug, text in texts.items():
        files.write_text(paths[slug], text, what="graph JSON")
    files.write_text(out_dir / METADATA_FILE, listing_text, what="graph listing")
    return out_dir


def _folder_dashboards(source: AttributionGraph | dict, dashboards: Any, item: Any):
    """The FeatureDashboards for one graph (a graph or its JSON dict), or None; see write_graph_folder."""
    if dashboards is None or dashboards is False:
        return None
    if dashboards is not True:
        return open_dashboards(dashboards)
    if isinstance(source, AttributionGraph):
        found = dashboards_for_graph(source)
    else:
        info = source["metadata"].get("info")
        clt = info.get("transcoder") if isinstance(info, dict) else None
        found = dashboards_for(clt) if isinstance(clt, str) and clt else None
    if found is None:
        raise DashboardsNotFoundError(
            f"dashboards=True: no features/ dashboards next to the CLT of graph {item!r}; pass dashboards= "
            "(a FeatureDashboards, folder or hub id)."
        )
    return found


def _feature_nodes(data: dict) -> list[dict]:
    return [n for n in data["nodes"] if n.get("feature_type") == FEATURE_TYPES["feature"]]


def _layer_feature(node: dict) -> tuple[int, int]:
    """(layer, feature) of a graph JSON feature node: its `feature` is the Cantor pairing of the two."""
    layer, feature = cantor_unpair(int(node["feature"]))
    if str(layer) != str(node["layer"]):
        raise ValueError(
            f"node {node['node_id']}: feature id {node['feature']} is not of layer {node['layer']}."
        )
    return layer, feature


def _feature_records(data: dict, dashboards: FeatureDashboards, out_dir: Path, records: dict) -> str:
    """Add to `records` the dashboard record of each feature node of a graph dict, keyed by its file
    `out_dir/features/<name>/<feature id>.json` (the frontend's feature id: Cantor pairing of layer and
    feature); returns the `scan` that makes the frontend read them (`./data/features/<name>`)."""
    source = str(dashboards.source)
    base = Path(source).parent.name if Path(source).name == "features" else Path(source).name
    name = f"{slugify(base, 40)}-{hashlib.sha1(source.encode()).hexdigest()[:6]}"
    folder = files.path_inside(files.path_inside(out_dir, "features"), name)
    for node in _feature_nodes(data):
        path = files.path_inside(folder, f"{int(node['feature'])}.json")
        if path not in records:
            records[path] = dashboards.record(*_layer_feature(node))
    return f"./data/features/{name}"
