"""Writing files safely: every file tl_clt writes goes through `atomic_write`.

- Atomic: the bytes go to a temp file in the target's folder, are flushed to disk (fsync) and renamed over
  the target (`os.replace`); a failed or interrupted write leaves the old file (if any) and no temp file.
- A symlink at the target is replaced by the new file, never written through.
- Paths made from data (a graph's slug) go through `path_inside`, so they cannot leave their folder.
- `check_output_path` finds a missing, unwritable or wrong-kind target before any work is done, and every
  error names the user's path, never the temp file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def check_output_path(path: str | os.PathLike, *, what: str = "file") -> Path:
    """`path` as a Path if a `what` can be written there (its folder exists and is writable, and it is
    not a folder itself); else FileNotFoundError, NotADirectoryError, IsADirectoryError or PermissionError."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"Cannot write the {what} {path}: it is a folder; name a file.")
    if not folder.exists():
        raise FileNotFoundError(f"Cannot write the {what} {path}: the folder {folder} does not exist.")
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot write the {what} {path}: {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write the {what} {path}: the folder {folder} is not writable.")
    return path


def check_output_folder(folder: str | os.PathLike, *, what: str = "folder") -> Path:
    """`folder` as a Path if files can be written into it (it exists, or its nearest existing parent
    does and can hold it); else the same errors as `check_output_path`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"Cannot write into the {what} {folder}: it is a file, not a folder.")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise NotADirectoryError(f"Cannot write into the {what} {folder}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write into the {what} {folder}: {existing} is not writable.")
    return folder


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def path_inside(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name` for a plain file name made from data; ValueError for anything that could leave
    `folder` (separators, `..`, absolute paths, control characters, a leading dot)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{name!r} cannot be a file name here: it must start with a letter or digit and hold only "
            "letters, digits, '-', '_' and '.', without '..' (it must stay inside its folder)."
        )
    path = Path(folder) / name
    if path.parent.resolve() != Path(folder).resolve():  # defence in depth
        raise ValueError(f"{name!r} would be written outside {folder}.")
    return path


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file (0o666 minus the umask)."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)  # no /proc: read it by setting it, then put it back
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, what: str = "file") -> Iterator[Path]:
    """`with atomic_path(path) as tmp: writer(tmp)`: for writers that take a file name (e.g.
    `safetensors.torch.save_file`, which streams tensors to disk without a copy in memory). `tmp` is
    a new empty file next to `path`; when the block ends without error it is synced and renamed to
    `path`, so the file appears complete or not at all. A symlink at `path` is replaced (not
    followed); an existing file keeps its permissions.
    """
    path = check_output_path(path, what=what)
    try:
        mode = path.lstat().st_mode & 0o7777 if path.is_file() and not path.is_symlink() else _file_mode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise type(err)(err.errno, f"Cannot write the {what} {path}: {err.strerror}") from err
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, what: str = "file") -> Iterator[BinaryIO]:
    """`with atomic_write(path) as f: f.write(...)`: the file appears at `path` complete, or not at all
    (see `atomic_path`)."""
    with atomic_path(path, what=what) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_append(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for appending in binary mode (created if missing): for append-only logs and lock
    files, the one kind of write that adds to a file instead of replacing it."""
    return open(path, "ab+")  # noqa: SIM115 - the caller closes it


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_write(path, what=what) as f:
        f.write(data)
    return Path(path)


def write_safetensors(
    path: str | os.PathLike, tensors: dict, *, metadata: dict | None = None, what: str = "file"
) -> Path:
    """Write `tensors` (name -> contiguous CPU tensor) to a safetensors file atomically, streamed from
    the tensors' memory (no second copy of them is built); returns the path."""
    import safetensors.torch

    with atomic_path(path, what=what) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), what=what)


def scratch_file(
    *, prefix: str, suffix: str = "", folder: str | os.PathLike | None = None
) -> tuple[BinaryIO, Path]:
    """A new private temp file for scratch data (not an output: the caller reads it back and removes
    it), opened for binary writing, and its path; in `folder` or the system's temp folder."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    return os.fdopen(fd, "wb"), Path(path)
