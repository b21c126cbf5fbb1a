"""Prompt sources for batch runs: a list, a text file, a JSONL file or a Hugging Face dataset.

Every prompt gets a stable id (so a rerun knows what is done) and a file stem that is safe inside the
run folder. Default ids are the prompt's index (`000000`, `000001`, ...): in a list, its position; in a
text file, its 0-based line number (blank lines are skipped but counted, so inserting one does not renumber
the rest); in a JSONL file or dataset without ids, its row number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_clt.batch.manifest import FIELDS

_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a batch: its id, the prompt (text or token ids), extra fields kept in the outputs."""

    id: str
    prompt: str | list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return file_stem(self.id)

    @property
    def text(self) -> str:
        """The prompt as the manifest shows it (token ids as their JSON list)."""
        return self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt)


def file_stem(prompt_id: str) -> str:
    """A file name stem for `prompt_id` that cannot leave its folder.

    Ids made of letters, digits, `_`, `.` and `-` (starting with a letter or digit, at most 80 characters)
    are used as they are; any other id becomes its safe characters plus a hash of the whole id, so two ids
    never share a stem (`../etc/x` -> `etc_x-3f1c0a9b2e`).
    """
    if _SAFE_STEM.fullmatch(prompt_id) and not prompt_id.endswith(".tmp"):
        return prompt_id
    digest = hashlib.sha256(prompt_id.encode()).hexdigest()[:10]
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", prompt_id).strip("._-")[:60].strip("._-")
    return f"{clean}-{digest}" if clean else f"id-{digest}"


def default_id(index: int) -> str:
    return f"{index:06d}"


# ------------------------------------------------------------------------ reading
def read_prompts(
    source,
    *,
    column: str | None = None,
    id_column: str | None = None,
    split: str = "train",
) -> list[PromptItem]:
    """The prompts of `source` with unique ids and file stems.

    `source`: a list of strings (or of dicts with `prompt` and optional `id` and extra fields); a path to a
    `.jsonl` file (one object per line: `prompt`, optional `id`, any other fields kept) or to a text file
    (one prompt per line); a `datasets.Dataset`; or, with `column=`, a dataset folder
    (`save_to_disk`) or a name `datasets.load_dataset` reads. `column` names the prompt column of a dataset,
    `id_column` its id column (default: the row number).
    """
    if isinstance(source, (str, os.PathLike)):
        if column is not None:
            items = _from_dataset(_load_dataset(source, split), column, id_column)
        else:
            items = _from_file(Path(source))
    elif _is_dataset(source):
        if column is None:
            raise ValueError(
                f"A dataset has the columns {list(source.column_names)}: name the column that holds the "
                "prompts with column=... (CLI: --column)."
            )
        items = _from_dataset(source, column, id_column)
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        items = [_from_object(x, i, f"prompts[{i}]") for i, x in enumerate(source)]
    else:
        raise TypeError(
            "prompts must be a list of strings, a path to a .txt or .jsonl file, or a datasets.Dataset "
            f"(with column=...), got {type(source).__name__}."
        )
    check_unique(items)
    return items


def _from_file(path: Path) -> list[PromptItem]:
    if not path.is_file():
        what = "a folder (for a dataset folder pass column=...)" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"No prompts file at {path}: {what}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _from_jsonl(text, path)
    return [
        PromptItem(default_id(i), line.rstrip("\r"))
        for i, line in enumerate(text.split("\n"))
        if line.strip()
    ]


def _from_jsonl(text: str, path: Path) -> list[PromptItem]:
    items = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: line {i + 1} is not JSON ({err.msg}); each line must be one object like "
                '{"id": "a", "prompt": "..."}.'
            ) from None
        items.append(_from_object(row, len(items), f"{path}: line {i + 1}"))
    return items


def _from_object(row, index: int, where: str) -> PromptItem:
    """A PromptItem from a string or a {"prompt", "id"?, ...extra} mapping."""
    if isinstance(row, str):
        return PromptItem(default_id(index), row)
    if not isinstance(row, dict):
        raise TypeError(
            f'{where}: expected a prompt string or an object with "prompt", got {type(row).__name__}.'
        )
    if "prompt" not in row:
        raise ValueError(f'{where} has no "prompt" field (fields: {sorted(row)}).')
    prompt = row["prompt"]
    if not isinstance(prompt, (str, list)):
        raise TypeError(
            f'{where}: "prompt" must be a string or a list of token ids, got {type(prompt).__name__}.'
        )
    extra = {k: v for k, v in row.items() if k not in ("id", "prompt")}
    _check_extra(extra, where)
    return PromptItem(_as_id(row.get("id", default_id(index)), where), prompt, extra)


def _as_id(value, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f'{where}: "id" must be a string or an int, got {type(value).__name__}.')
    text = str(value)
    if not text.strip():
        raise ValueError(f'{where}: "id" is empty.')
    return text


def _check_extra(extra: dict, where: str) -> None:
    clash = sorted(set(extra) & FIELDS)  # extra fields may not reuse manifest names
    if clash:
        raise ValueError(
            f"{where}: the field(s) {clash} clash with a manifest column of the same name; rename them "
            f"(reserved: {sorted(FIELDS)})."
        )


def check_unique(items: Iterable[PromptItem]) -> None:
    """Ids must be unique, and so must their file stems on case-insensitive file systems."""
    seen: dict[str, str] = {}
    for item in items:
        key = item.stem.casefold()
        if key in seen:
            other = seen[key]
            what = "duplicate prompt id" if other == item.id else "prompt ids that share a file name"
            raise ValueError(f"{what}: {other!r} and {item.id!r}; give every prompt its own id.")
        seen[key] = item.id


# ------------------------------------------------------------------------ datasets
def _is_dataset(obj) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "column_names")


def _load_dataset(name, split: str):
    try:
        import datasets
    except ImportError:
        raise ImportError("Reading a Hugging Face dataset needs `datasets`: pip install datasets") from None
    path = Path(name)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        data = datasets.load_from_disk(str(path))
        return data[split] if isinstance(data, datasets.DatasetDict) else data
    return datasets.load_dataset(str(name), split=split)


def _from_dataset(data, column: str, id_column: str | None) -> list[PromptItem]:
    """Items from a dataset: `column` holds the prompts, `id_column` (default: an `id` column if there is
    one, else the row number) the ids; other columns with scalar values are kept as extra fields."""
    names = list(data.column_names)
    for flag, name in (("column", column), ("id_column", id_column)):
        if name is not None and name not in names:
            raise ValueError(f"{flag}={name!r} is not a column of the dataset; its columns are {names}.")
    if id_column is None and "id" in names and column != "id":
        id_column = "id"
    extra_names = [n for n in names if n not in (column, id_column)]
    _check_extra(dict.fromkeys(extra_names), "the dataset")
    items = []
    for i, row in enumerate(data):
        where = f"dataset row {i}"
        pid = _as_id(row[id_column], where) if id_column else default_id(i)
        extra = {n: row[n] for n in extra_names if isinstance(row[n], (str, int, float, bool, type(None)))}
        items.append(PromptItem(pid, row[column], extra))
    return items
