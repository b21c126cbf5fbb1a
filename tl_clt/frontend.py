"""A folder the circuit-tracer frontend serves: `<slug>.json` graph files and `graph-metadata.json`.

It reads saved graphs (`.pt`), so it sits above `tl_clt.graph`; the JSON itself is `tl_clt.export`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tl_clt.export import add_to_metadata, check_slug, graph_to_dict, metadata_entry, slugify, write_json
from tl_clt.graph import AttributionGraph


def _load_source(item, slug: str | None, kwargs: dict) -> dict:
    """A graph dict from an AttributionGraph, a saved graph (.pt) or an exported graph (.json)."""
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
    graphs: Mapping[str, Any] | Iterable[Any], out_dir: str | os.PathLike, **kwargs
) -> Path:
    """A folder the circuit-tracer frontend serves: `<slug>.json` files + `graph-metadata.json`.

    `graphs`: AttributionGraphs, `.pt` graph files or exported `.json` files, as a list (slugs from
    the prompt / file name) or a dict slug -> graph. `kwargs` go to `graph_to_dict`. An existing
    `graph-metadata.json` is updated. Serve it with circuit-tracer's
    `circuit_tracer.frontend.local_server.serve(data_dir=out_dir)`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = graphs.items() if isinstance(graphs, Mapping) else [(None, g) for g in graphs]
    seen: set[str] = set()
    for slug, item in items:
        data = _load_source(item, slug, kwargs)
        base, n = data["metadata"]["slug"], 2
        while data["metadata"]["slug"] in seen:
            data["metadata"]["slug"] = f"{base}-{n}"
            n += 1
        seen.add(data["metadata"]["slug"])
        write_json(data, out_dir / f"{data['metadata']['slug']}.json")
        add_to_metadata(metadata_entry(data), out_dir)
    return out_dir
