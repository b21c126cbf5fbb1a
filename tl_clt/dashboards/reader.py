"""FeatureDashboards: read feature dashboards (`features/`) from a folder or a hub repo, one card per read.

    dash = FeatureDashboards.from_pretrained("bluelightai/clt-qwen3-1.7b-base-20k")   # or a folder
    dash[12, 847]                  # FeatureCard (one ranged read of layer_12.bin)
    dash["F:12:5:847"]             # node ids and (layer, pos, feature) keys work too

A local folder is read with plain file reads; a hub repo through huggingface_hub's `HfFileSystem`, one
HTTP Range request per card (the ~240 MB layer files are never downloaded), unless the hub cache
already holds the files. Decoded cards are kept in a small LRU cache.
"""

from __future__ import annotations

import operator
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tl_clt.dashboards.card import FeatureCard
from tl_clt.dashboards.format import (
    FEATURES_DIR,
    INDEX_FILE,
    CorruptDashboardsError,
    DashboardsNotFoundError,
    decode_index,
    decode_record,
)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HOW_TO_BUILD = (
    "Build dashboards with tl_clt.build_feature_dashboards(model, clt, texts, out_dir) or "
    "`tl-clt dashboards build`."
)


# ------------------------------------------------------------------------ byte sources
class LocalSource:
    """Files of a local dashboards folder, read with plain reads."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.bytes_read = 0
        self.n_reads = 0

    def __repr__(self) -> str:
        return str(self.folder)

    def _path(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise DashboardsNotFoundError(
                f"{path} is missing: the dashboards folder {self.folder} is incomplete. Re-download or "
                f"rebuild it. {_HOW_TO_BUILD}"
            )
        return path

    def read_file(self, name: str) -> bytes:
        data = self._path(name).read_bytes()
        self.bytes_read += len(data)
        return data

    def read_range(self, name: str, start: int, end: int) -> bytes:
        with open(self._path(name), "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        self.bytes_read += len(data)
        self.n_reads += 1
        return data


class FsspecSource:
    """Files under `root` of an fsspec file system (HfFileSystem for the hub), one ranged read per call.

    Files are opened once with `cache_type="none"`, so a read of n bytes is one request for exactly
    those bytes (fsspec's default read-ahead would fetch megabytes per card).
    """

    def __init__(self, fs: Any, root: str, label: str | None = None):
        self.fs, self.root, self.label = fs, root.rstrip("/"), label or root
        self._handles: dict[str, Any] = {}
        self.bytes_read = 0
        self.n_reads = 0

    def __repr__(self) -> str:
        return self.label

    def _fail(self, name: str, err: Exception) -> Exception:
        if isinstance(err, FileNotFoundError):
            return DashboardsNotFoundError(
                f"{self.label}: {name} is missing ({err}). The repo has no (complete) features/ "
                f"dashboards folder. {_HOW_TO_BUILD}"
            )
        return DashboardsNotFoundError(
            f"{self.label}: could not read {name} ({type(err).__name__}: {err}). Check the network and the "
            "repo id, or download the features/ folder and pass the local path."
        )

    def _handle(self, name: str):
        handle = self._handles.get(name)
        if handle is None:
            handle = self.fs.open(f"{self.root}/{name}", "rb", cache_type="none")
            self._handles[name] = handle
        return handle

    def read_file(self, name: str) -> bytes:
        try:
            handle = self._handle(name)
            handle.seek(0)
            size = getattr(handle, "size", None)
            data = handle.read(size) if isinstance(size, int) else handle.read()
        except Exception as err:  # network, auth, missing file
            raise self._fail(name, err) from err
        self.bytes_read += len(data)
        return data

    def read_range(self, name: str, start: int, end: int) -> bytes:
        try:
            handle = self._handle(name)
            handle.seek(start)
            data = handle.read(end - start)
        except Exception as err:
            raise self._fail(name, err) from err
        self.bytes_read += len(data)
        self.n_reads += 1
        return data


# ------------------------------------------------------------------------ finding dashboards
def local_features_dir(path: str | os.PathLike) -> Path | None:
    """The dashboards folder for a local path: `path/features/` or `path` itself if it holds the index."""
    path = Path(path).expanduser()
    for folder in (path / FEATURES_DIR, path):
        if (folder / INDEX_FILE).is_file():
            return folder
    return None


def hub_id_of_cache_path(path: str | os.PathLike) -> str | None:
    """'owner/name' for a hub cache snapshot folder (`.../models--owner--name/snapshots/<hash>`)."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            owner_name = part.removeprefix("models--").split("--", 1)
            return "/".join(owner_name) if len(owner_name) == 2 else None
    return None


def _cached_hub_folder(repo_id: str, revision: str | None) -> Path | None:
    """The hub cache's features/ folder of `repo_id` when the index and every layer file are cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, f"{FEATURES_DIR}/{INDEX_FILE}", revision=revision)
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    try:
        names = [name for name, _ in decode_index(Path(found).read_bytes(), found)]
    except CorruptDashboardsError:
        return None
    return folder if all((folder / n).is_file() for n in names) else None


# ------------------------------------------------------------------------ the reader
class FeatureDashboards:
    """Feature dashboards of a CLT: `dash[layer, feature]` -> FeatureCard.

    Attributes: `source` (where the bytes come from), `n_layers`, `n_features` (per layer, a list),
    `bytes_read` / `n_reads` (ranged reads so far), `cache_size`.
    """

    def __init__(self, source: LocalSource | FsspecSource, cache_size: int = 256):
        self.source = source
        self.cache_size = cache_size
        self._index: list[tuple[str, list[int]]] | None = None
        self._cache: OrderedDict[tuple[int, int], FeatureCard] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        fs: Any = None,
        cache_size: int = 256,
    ) -> FeatureDashboards:
        """Dashboards of a local folder (the CLT folder or its `features/`) or a hub repo ('owner/name').

        For a hub repo the layer files are read with HTTP Range requests through `HfFileSystem` (or
        the fsspec file system `fs`), unless the hub cache holds the whole `features/` folder. Nothing
        is read until the first card (a hub repo without features/ raises then).
        """
        if fs is not None:
            root = f"{name_or_path}@{revision}" if revision else str(name_or_path)
            return cls(
                FsspecSource(fs, f"{root}/{FEATURES_DIR}", f"{name_or_path}/{FEATURES_DIR}"), cache_size
            )
        folder = local_features_dir(name_or_path)
        if folder is not None:
            return cls(LocalSource(folder), cache_size)
        name = str(name_or_path)
        path = Path(name).expanduser()
        if path.exists() or name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
            what = "a folder without features/index.json.gz" if path.is_dir() else "neither a folder"
            raise DashboardsNotFoundError(
                f"{name!r} is {what}" + ("" if path.is_dir() else " nor a hub id 'owner/name'") + ". "
                "Pass a CLT folder holding features/ (index.json.gz + layer_{l}.bin), that features/ "
                f"folder itself, or a hub id. {_HOW_TO_BUILD}"
            )
        cached = _cached_hub_folder(name, revision)
        if cached is not None:
            return cls(LocalSource(cached), cache_size)
        from huggingface_hub import HfFileSystem

        root = f"{name}@{revision}" if revision else name
        return cls(
            FsspecSource(HfFileSystem(), f"{root}/{FEATURES_DIR}", f"hf://{name}/{FEATURES_DIR}"), cache_size
        )

    # ---------------------------------------------------------------- index
    @property
    def index(self) -> list[tuple[str, list[int]]]:
        """[(filename, offsets)] per layer, read on first use."""
        if self._index is None:
            self._index = decode_index(self.source.read_file(INDEX_FILE), f"{self.source}/{INDEX_FILE}")
        return self._index

    @property
    def n_layers(self) -> int:
        return len(self.index)

    @property
    def n_features(self) -> list[int]:
        return [len(offsets) - 1 for _, offsets in self.index]

    @property
    def bytes_read(self) -> int:
        return self.source.bytes_read

    @property
    def n_reads(self) -> int:
        return self.source.n_reads

    def __repr__(self) -> str:
        if self._index is None:
            return f"FeatureDashboards({self.source})"
        sizes = sorted(set(self.n_features))
        per_layer = sizes[0] if len(sizes) == 1 else self.n_features
        return f"FeatureDashboards({self.source}: {self.n_layers} layers, {per_layer} features per layer)"

    # ---------------------------------------------------------------- cards
    def _check(self, layer: Any, feature: Any) -> tuple[int, int]:
        values = []
        for name, value in (("layer", layer), ("feature", feature)):
            try:
                if isinstance(value, bool):
                    raise TypeError
                values.append(operator.index(value))
            except TypeError:
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.") from None
        layer, feature = values
        if not 0 <= layer < self.n_layers:
            raise IndexError(
                f"layer {layer} is out of range: these dashboards have layers 0..{self.n_layers - 1}."
            )
        n = self.n_features[layer]
        if not 0 <= feature < n:
            raise IndexError(
                f"feature {feature} is out of range: layer {layer} has {n} features (0..{n - 1})."
            )
        return layer, feature

    def record(self, layer: int, feature: int) -> dict:
        """The raw JSON record of one feature (one ranged read, not cached)."""
        layer, feature = self._check(layer, feature)
        name, offsets = self.index[layer]
        start, end = offsets[feature], offsets[feature + 1]
        data = self.source.read_range(name, start, end)
        where = f"{self.source}/{name} (feature {feature}, bytes {start}..{end})"
        if len(data) < end - start:
            raise CorruptDashboardsError(
                f"{where}: the file ends after {start + len(data)} bytes but the index says the record ends "
                f"at {end}; the layer file is truncated. Re-download or rebuild the dashboards."
            )
        return decode_record(data, where)

    def card(self, layer: int, feature: int) -> FeatureCard:
        """The FeatureCard of feature `feature` of layer `layer` (cached)."""
        layer, feature = self._check(layer, feature)
        key = (layer, feature)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        card = FeatureCard.from_record(self.record(layer, feature), layer, feature)
        self._cache[key] = card
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return card

    def __getitem__(self, key: Any) -> FeatureCard:
        return self.card(*feature_of(key))

    def labels(self, nodes) -> dict[str, str]:
        """{node id: card label} for the feature nodes among `nodes` (ids or keys)."""
        from tl_clt.nodes import node_kind, to_node_id

        out = {}
        for node in nodes:
            node_id = to_node_id(node) if not isinstance(node, str) else node
            if node_kind(node_id) == "feature":
                out[node_id] = self[node_id].label
        return out

    def describe(self, nodes, k: int = 3) -> str:
        """A name for a group of feature nodes: their most common top tokens and top outputs."""
        from collections import Counter

        inputs, outputs = Counter(), Counter()
        for node in nodes:
            card = self[node]
            inputs.update(card.top_tokens(k))
            outputs.update(t.strip() or repr(t) for t in card.top_logits[:k])
        ins = " / ".join(t for t, _ in inputs.most_common(k))
        outs = ", ".join(t for t, _ in outputs.most_common(2))
        return f"{ins} → {outs}" if outs else ins


_OPENED: dict[str, FeatureDashboards] = {}


def dashboards_for(name_or_path: str | os.PathLike | None, folder: str | os.PathLike | None = None):
    """The FeatureDashboards of a CLT, or None: `features/` in its local folder, else (for a hub id, or a
    hub cache snapshot folder) the hub repo's, read lazily. Opened once per place and reused."""
    for candidate in (folder, name_or_path):
        found = local_features_dir(candidate) if candidate is not None else None
        if found is not None:
            stat = (found / INDEX_FILE).stat()  # a rebuilt folder is opened afresh
            key = f"{found.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
            if key not in _OPENED:
                _OPENED[key] = FeatureDashboards(LocalSource(found.resolve()))
            return _OPENED[key]
    hub_id = None
    if name_or_path is not None and not Path(name_or_path).expanduser().exists():
        hub_id = str(name_or_path) if _HUB_ID.fullmatch(str(name_or_path)) else None
    for candidate in (folder, name_or_path):
        if hub_id is None and candidate is not None:
            hub_id = hub_id_of_cache_path(candidate)
    if hub_id is None:
        return None
    if f"hub:{hub_id}" not in _OPENED:
        _OPENED[f"hub:{hub_id}"] = FeatureDashboards.from_pretrained(hub_id)
    return _OPENED[f"hub:{hub_id}"]


def open_dashboards(dashboards: Any) -> FeatureDashboards:
    """A FeatureDashboards as is; a folder or hub id opened (and reused)."""
    if isinstance(dashboards, FeatureDashboards):
        return dashboards
    found = dashboards_for(dashboards)
    if found is None:
        return FeatureDashboards.from_pretrained(dashboards)  # raises the right error
    return found


def dashboards_for_graph(graph, *, local_only: bool = False) -> FeatureDashboards | None:
    """The dashboards next to the CLT a graph was made with (`graph.clt_name`), or None."""
    name = getattr(graph, "clt_name", None)
    if not name:
        return None
    if local_only:
        folder = local_features_dir(name)
        return dashboards_for(name) if folder is not None else None
    return dashboards_for(name)


def feature_of(key: Any) -> tuple[int, int]:
    """(layer, feature) of a `(layer, feature)` pair, a `(layer, pos, feature)` key or a feature node id."""
    if isinstance(key, tuple) and len(key) == 2:
        return key
    from tl_clt.nodes import feature_key

    try:
        layer, _, feature = feature_key(key)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"{err} Dashboards take (layer, feature), (layer, pos, feature) or a feature node id "
            "'F:layer:pos:feature'."
        ) from err
    return layer, feature
