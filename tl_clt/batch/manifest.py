"""The manifest of a batch run: an append-only JSONL file, one line per finished prompt.

Only the driver writes it, one whole line per `append` (flushed and fsynced), after the prompt's files are
in place: a prompt is finished exactly when its line is there. A line cut short by a crash is dropped when
the file is next opened. A prompt can have several lines (a failed prompt retried with `retry_failed`);
the last one counts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tl_clt import files

DONE, FAILED = "done", "failed"

# A record's fields (one manifest line): INT_FIELDS are whole numbers (absent for a failed prompt).
INT_FIELDS = (
    "n_tokens",
    "n_active_features",
    "n_feature_rows",
    "n_pruned_features",
    "n_pruned_nodes",
    "n_pruned_edges",
    "n_logits",
    "top_token_id",
    "attempts",
    "worker_pid",
)
FIELDS = frozenset(
    {
        "id",
        "prompt",
        "status",
        "error",
        "traceback",
        "graph",
        "json",
        "features",
        "worker",
        "finished_at",
        "seconds_attribute",
        "seconds_total",
        "cpu_seconds",
        "top_token",
        "top_probability",
        "replacement_score",
        "completeness_score",
        *INT_FIELDS,
    }
)


def _clean(value):
    """JSON-safe: NaN/inf -> None (the manifest is strict JSON, so DuckDB and others read it too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Manifest:
    """`DIR/manifest.jsonl`: `read()` the records, `append(record)` one more."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """Every complete record, in the order written (a torn last line is skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # only a line cut short by a crash can be unreadable
            if isinstance(record, dict) and "id" in record:
                records.append(record)
        return records

    def latest(self) -> dict[str, dict]:
        """{id: its last record}, in the order the ids first finished."""
        out: dict[str, dict] = {}
        for record in self.read():
            out[record["id"]] = record
        return out

    def repair(self) -> None:
        """Cut a torn last line (a crash mid-append), so the next append starts on a line of its own."""
        if not self.path.is_file():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict) -> None:
        line = json.dumps(_clean(record), ensure_ascii=False, allow_nan=False) + "\n"
        with files.open_append(self.path) as f:
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
