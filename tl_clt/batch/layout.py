"""The run folder of a batch: where each file lives, atomic writes, the run lock and the run settings.

    DIR/batch.json             the options the run was made with (a rerun must use the same ones)
    DIR/manifest.jsonl         one line per finished prompt, appended as prompts finish (the truth)
    DIR/manifest.parquet       the manifest as a table (latest line per id), rewritten at the end of a run
    DIR/features.parquet       one row per (prompt, feature node of its pruned graph), rewritten likewise
    DIR/graphs/{stem}.pt       the full graph (AttributionGraph.load reads it)
    DIR/graphs/{stem}.json     the pruned graph JSON (circuit-tracer frontend / Neuronpedia)
    DIR/features/{stem}.parquet  that prompt's rows of features.parquet

Every file is written to a hidden temp file in its folder and renamed into place, so a reader never sees a
partial file; temp files left by a killed worker are removed at the start and end of each run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tl_clt import files

RUN_FORMAT = "tl_clt.batch/1"


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temp file next to `path`, then rename it to `path` (`tl_clt.files`):
    a failure (or Ctrl-C) leaves the old file, if any, and no temp file."""
    with files.atomic_write(path, what="batch file") as f:
        write(f)
    return Path(path)


class RunDir:
    """Paths of one batch run folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.graphs = self.root / "graphs"
        self.features = self.root / "features"
        self.settings = self.root / "batch.json"
        self.manifest = self.root / "manifest.jsonl"
        self.manifest_table = self.root / "manifest.parquet"
        self.features_table = self.root / "features.parquet"

    def create(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"{self.root} is a file; pass a folder for the batch outputs.")
        for folder in (self.root, self.graphs, self.features):
            folder.mkdir(parents=True, exist_ok=True)

    def graph_path(self, stem: str) -> Path:
        return self.graphs / f"{stem}.pt"

    def json_path(self, stem: str) -> Path:
        return self.graphs / f"{stem}.json"

    def features_path(self, stem: str) -> Path:
        return self.features / f"{stem}.parquet"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def remove_temp_files(self) -> int:
        """Delete hidden temp files in graphs/ and features/ (left by a killed worker); returns how many."""
        n = 0
        for folder in (self.graphs, self.features):
            for p in folder.glob(".*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    n += 1
        return n

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `DIR/.lock` for the run: a second run on the same folder at the same time is refused."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
            yield
            return
        with files.open_append(self.root / ".lock") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(
                    f"{self.root} is in use by another batch run; wait for it to finish (or stop it), "
                    "or write to another folder."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- settings
    def check_settings(self, settings: dict, sources: dict, *, fresh: bool = False) -> list[str]:
        """Record `settings` (first run, or `fresh`: nothing finished yet) or check them against the
        recorded ones (a rerun).

        `settings` must match exactly (ValueError naming the differences); `sources` (model and CLT
        names) are compared loosely: returns a warning per difference (a path and a hub id may be the
        same checkpoint).
        """
        if fresh or not self.settings.is_file():
            blob = {"format": RUN_FORMAT, "settings": settings, "sources": sources}
            text = json.dumps(blob, indent=2, allow_nan=False) + "\n"
            write_atomic(self.settings, lambda f: f.write(text.encode()))
            return []
        try:
            blob = json.loads(self.settings.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{self.settings} is not readable JSON ({err}); it is not a batch run folder."
            ) from None
        if not isinstance(blob, dict) or blob.get("format") != RUN_FORMAT:
            raise ValueError(f"{self.settings} is not a {RUN_FORMAT} run file; write to another folder.")
        old = blob.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise ValueError(
                f"{self.root} was made with other options ({changes}); rerun with the same options to "
                "continue it, or write to another folder."
            )
        old_sources = blob.get("sources", {})
        return [
            f"{self.root} was made with {k} {old_sources.get(k)!r}, this run uses {v!r}"
            for k, v in sources.items()
            if old_sources.get(k) not in (None, v)
        ]
