"""The on-disk format of feature dashboards, as circuit-tracer's frontend reads it (BluelightAI ships it).

A dashboards folder (`features/` next to a CLT) holds:
- `index.json.gz`: gzip JSON, a list with one entry per layer, `{"filename": "layer_{l}.bin",
  "offsets": [o_0, ..., o_F]}`; feature f's record is the bytes `o_f .. o_{f+1}` of that file.
- `layer_{l}.bin`: the records one after the other. A record is a 4-byte little-endian length N, then
  N bytes of zlib-compressed UTF-8 JSON: `index`, `examples_quantiles` =
  `[{quantile_name, examples: [{tokens, tokens_acts_list, train_token_ind, is_repeated_datapoint}]}]`,
  `top_logits`, `bottom_logits`, `act_min`, `act_max`, `quantile_values`, `histogram`,
  `activation_frequency` (and `transcoder_id`).
The frontend names a feature by the Cantor pairing of (layer, feature) and reads one record with one
HTTP Range request. Readers here accept an index that is a list or a dict keyed by layer.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

from tl_clt import files

INDEX_FILE = "index.json.gz"
FEATURES_DIR = "features"
LENGTH_BYTES = 4
RECORD_FIELDS = (
    "index",
    "examples_quantiles",
    "top_logits",
    "bottom_logits",
    "act_min",
    "act_max",
    "quantile_values",
    "histogram",
    "activation_frequency",
)


class DashboardsNotFoundError(FileNotFoundError):
    """A dashboards folder, its index or one of its layer files is missing."""


class CorruptDashboardsError(ValueError):
    """A dashboards file exists but does not hold what the format says (truncated, not gzip/zlib/JSON)."""


def layer_filename(layer: int) -> str:
    return f"layer_{layer}.bin"


def cantor_pair(x: int, y: int) -> int:
    """The frontend's feature id of (layer x, feature y)."""
    return (x + y) * (x + y + 1) // 2 + y


def cantor_unpair(z: int) -> tuple[int, int]:
    """(layer, feature) of a frontend feature id (exact integer arithmetic)."""
    import math

    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


# ------------------------------------------------------------------------ records
def encode_record(record: dict) -> bytes:
    """A record's bytes: 4-byte little-endian length, then the zlib-compressed JSON."""
    text = json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    body = zlib.compress(text.encode("utf-8"), 6)
    return len(body).to_bytes(LENGTH_BYTES, "little") + body


def decode_record(data: bytes, where: str) -> dict:
    """The JSON record in `data` (bytes offsets[f]..offsets[f+1]); CorruptDashboardsError if not one."""
    if len(data) < LENGTH_BYTES:
        raise CorruptDashboardsError(
            f"{where}: the record is {len(data)} bytes, shorter than its 4-byte length; the layer file or "
            "its index is corrupt. Re-download or rebuild the dashboards."
        )
    n = int.from_bytes(data[:LENGTH_BYTES], "little")
    if n > len(data) - LENGTH_BYTES:
        raise CorruptDashboardsError(
            f"{where}: the record's length prefix says {n} bytes but only {len(data) - LENGTH_BYTES} follow; "
            "the layer file is truncated or corrupt. Re-download or rebuild the dashboards."
        )
    try:
        record = json.loads(zlib.decompress(data[LENGTH_BYTES : LENGTH_BYTES + n]).decode("utf-8"))
    except zlib.error as err:
        raise CorruptDashboardsError(
            f"{where}: the record is not zlib data ({err}); the layer file is corrupt. Re-download or "
            "rebuild the dashboards."
        ) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptDashboardsError(
            f"{where}: the record is not JSON ({err}); the file is corrupt."
        ) from err
    if not isinstance(record, dict):
        raise CorruptDashboardsError(f"{where}: the record holds a {type(record).__name__}, not an object.")
    return record


# ------------------------------------------------------------------------ index
def encode_index(layers: list[tuple[str, list[int]]]) -> bytes:
    """index.json.gz bytes for [(filename, offsets), ...] in layer order (mtime 0: reproducible)."""
    entries = [{"filename": name, "offsets": [int(o) for o in offsets]} for name, offsets in layers]
    return gzip.compress(json.dumps(entries, separators=(",", ":")).encode(), mtime=0)


def decode_index(data: bytes, where: str) -> list[tuple[str, list[int]]]:
    """[(filename, offsets)] per layer from index.json.gz bytes, checked; CorruptDashboardsError otherwise."""
    try:
        raw = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDashboardsError(
            f"{where} is not gzip data ({err}); re-download or rebuild the dashboards."
        ) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptDashboardsError(f"{where} does not hold JSON ({err}); the file is corrupt.") from err
    if isinstance(raw, dict):
        try:
            raw = [raw[k] for k in sorted(raw, key=int)]
        except (ValueError, TypeError):
            raw = None
    if not isinstance(raw, list) or not raw:
        raise CorruptDashboardsError(
            f"{where} must hold a non-empty list with one {{filename, offsets}} entry per layer."
        )
    out = []
    for layer, entry in enumerate(raw):
        ok = isinstance(entry, dict) and isinstance(entry.get("filename"), str)
        offsets = entry.get("offsets") if ok else None
        ok = ok and isinstance(offsets, list) and len(offsets) >= 1
        ok = ok and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        if not ok or any(b < a for a, b in zip(offsets, offsets[1:])) or offsets[0] < 0:
            raise CorruptDashboardsError(
                f"{where}: layer {layer}'s entry is not {{filename: str, offsets: [non-decreasing ints]}}; "
                "the index is corrupt."
            )
        name = entry["filename"]
        if Path(name).name != name or name in ("", ".", ".."):
            raise CorruptDashboardsError(f"{where}: layer {layer} names {name!r}, not a file in the folder.")
        out.append((name, offsets))
    return out


# ------------------------------------------------------------------------ writing
class LayerWriter:
    """Append records of one layer to a temp file (`tl_clt.files.atomic_write`); `close()` moves it into
    place and returns the offsets, `abort(err)` removes it."""

    def __init__(self, folder: Path, layer: int):
        self.path = Path(folder) / layer_filename(layer)
        self._ctx = files.atomic_write(self.path, what="dashboards layer file")
        self._file = self._ctx.__enter__()
        self.offsets = [0]

    def add(self, record: dict) -> None:
        self._file.write(encode_record(record))
        self.offsets.append(self._file.tell())

    def close(self) -> list[int]:
        self._ctx.__exit__(None, None, None)
        return self.offsets

    def abort(self, exc: BaseException) -> None:
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)


def write_feature_json(record: dict, path: str | os.PathLike) -> Path:
    """One record as a plain JSON file (the per-feature `<cantor id>.json` the frontend also reads)."""
    text = json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return files.write_text(path, text, what="feature JSON")


# ------------------------------------------------------------------------ validation
def load_record_schema() -> dict:
    """The JSON Schema (draft-07) of one record, shipped as tl_clt/schemas/feature-details.schema.json."""
    text = resources.files("tl_clt").joinpath("schemas", "feature-details.schema.json").read_text("utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft7Validator(load_record_schema())


def validate_record(record: Any) -> None:
    """Raise jsonschema.ValidationError if a record breaks the schema (needs `jsonschema`)."""
    _validator().validate(record)
