"""A folder the circuit-tracer frontend serves: `<slug>.json` graph files and `graph-metadata.json`.

It reads saved graphs (`.pt`), so it sits above `tl_clt.graph`; the JSON itself is `tl_clt.export`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tl_clt import files
from tl_clt.export import (
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


def _load_source(item, slug: str | None, kwargs: dict) -> dict:
    """A graph dict from an AttributionGraph, a saved graph file or an exported graph (.json)."""
    if isinstance(item, AttributionGraph):
        return graph_to_dict(item, slug or slugify("".join(item.token_strs)), **kwargs)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"No graph file at {path}.")
    if path.suffix.lower() != ".json":
        return graph_to_dict(AttributionGraph.load(path), slug or slugify(path.stem), **kwargs)
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
    graphs: Mapping[str, Any] | Iterable[Any], out_dir: str | os.PathLike, **kwargs
) -> Path:
    """A folder the circuit-tracer frontend serves: `<slug>.json` files + `graph-metadata.json`.

    `graphs`: AttributionGraphs, saved graph files or exported `.json` files, as a list (slugs from
    the prompt / file name) or a dict slug -> graph. `kwargs` go to `graph_to_dict`. An existing
    `graph-metadata.json` is updated. Every input is read and checked before anything is written;
    each file is written atomically, and every file stays inside `out_dir`. Serve it with
    circuit-tracer's `circuit_tracer.frontend.local_server.serve(data_dir=out_dir)`.
    """
    out_dir = files.check_output_folder(out_dir, what="graph folder")
    listing = read_listing(out_dir)
    items = graphs.items() if isinstance(graphs, Mapping) else [(None, g) for g in graphs]
    texts: dict[str, str] = {}
    entries = []
    for slug, item in items:
        data = _load_source(item, slug, kwargs)
        base, n = data["metadata"]["slug"], 2
        while data["metadata"]["slug"] in texts:
            data["metadata"]["slug"] = f"{base}-{n}"
            n += 1
        texts[data["metadata"]["slug"]] = json_text(data)
        entries.append(metadata_entry(data))
    paths = {slug: files.path_inside(out_dir, f"{slug}.json") for slug in texts}
    if METADATA_FILE in {p.name for p in paths.values()}:
        raise ValueError(f"A graph cannot be named {METADATA_FILE[:-5]!r}: that name is the listing's.")
    new = set(texts)
    listing["graphs"] = [g for g in listing["graphs"] if g["slug"] not in new] + entries
    listing_text = json_text(listing)
    out_dir.mkdir(parents=True, exist_ok=True)
    for slug, text in texts.items():
        files.write_text(paths[slug], text, what="graph JSON")
    files.write_text(out_dir / METADATA_FILE, listing_text, what="graph listing")
    return out_dir
