"""Corpora for the dashboard builder: documents by global index, streamed, and fetched again at the end.

`open_corpus(texts, column=...)` accepts
- a list / tuple of strings (random access);
- a path to a text file: one document per line (`.txt`), or JSON lines with the text in `column`
  (`.jsonl`); lines are found again through an offsets table built while streaming;
- a Hugging Face `datasets.Dataset` (random access) or `IterableDataset` (streamed again), and its
  text `column`;
- any other iterable of strings: re-iterated when it can be (`iter(x) is not x`); a one-shot iterator
  (a generator) is spilled to a temporary file as it is read, so its documents can be fetched at the
  end without keeping them in memory.
Document indices are global (0 = the first document of the corpus), so shards of one corpus agree.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tl_clt import files


def _check_text(doc: Any, index: int, where: str) -> str:
    if not isinstance(doc, str):
        raise TypeError(
            f"{where}: document {index} is a {type(doc).__name__}, not a string. Pass texts as strings "
            "(for a dataset, name its text column with column=...)."
        )
    return doc


class Corpus:
    """Documents `0..n_docs-1` (n_docs None when unknown until read); see the module docstring."""

    n_docs: int | None = None
    name: str = "corpus"

    def iter_docs(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str]]:
        raise NotImplementedError

    def get(self, indices: Iterable[int]) -> dict[int, str]:
        """{index: text} for the given document indices (each must have been streamed or exist)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": type(self).__name__, "name": self.name, "n_docs": self.n_docs}


class SequenceCorpus(Corpus):
    def __init__(self, texts: Sequence[str], name: str = "list"):
        self.texts, self.n_docs, self.name = texts, len(texts), name

    def iter_docs(self, start=0, stop=None):
        stop = self.n_docs if stop is None else min(stop, self.n_docs)
        for i in range(start, stop):
            yield i, _check_text(self.texts[i], i, self.name)

    def get(self, indices):
        return {i: _check_text(self.texts[i], i, self.name) for i in sorted(set(indices))}


class TextFileCorpus(Corpus):
    """One document per line (.txt) or a JSON object per line holding `column` (.jsonl)."""

    def __init__(self, path: str | os.PathLike, column: str = "text"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No corpus file at {self.path}.")
        self.column, self.name = column, str(self.path)
        self.jsonl = self.path.suffix in (".jsonl", ".ndjson")
        self._offsets: array | None = None  # byte offset of every line, filled by a full pass
        self.n_docs = None

    def _parse(self, line: bytes, index: int) -> str:
        text = line.decode("utf-8").rstrip("\r\n")
        if not self.jsonl:
            return text
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: line {index + 1} is not JSON ({err}).") from err
        if not isinstance(obj, dict) or self.column not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise KeyError(
                f"{self.path}: line {index + 1} has no field {self.column!r} (it has {keys}); pass column=..."
            )
        return _check_text(obj[self.column], index, self.name)

    def _index_lines(self) -> array:
        if self._offsets is None:
            offsets, pos = array("q"), 0
            with open(self.path, "rb") as f:
                for line in f:
                    offsets.append(pos)
                    pos += len(line)
            self._offsets, self.n_docs = offsets, len(offsets)
        return self._offsets

    def iter_docs(self, start=0, stop=None):
        offsets = self._index_lines()
        stop = len(offsets) if stop is None else min(stop, len(offsets))
        with open(self.path, "rb") as f:
            if start < stop:
                f.seek(offsets[start])
            for i in range(start, stop):
                yield i, self._parse(f.readline(), i)

    def get(self, indices):
        offsets, out = self._index_lines(), {}
        with open(self.path, "rb") as f:
            for i in sorted(set(indices)):
                f.seek(offsets[i])
                out[i] = self._parse(f.readline(), i)
        return out

    def __getstate__(self):
        return {**self.__dict__, "_offsets": None}


class DatasetCorpus(Corpus):
    """A `datasets.Dataset` (random access) and its text column."""

    def __init__(self, dataset: Any, column: str = "text"):
        if column not in dataset.column_names:
            raise KeyError(
                f"The dataset has no column {column!r} (it has {dataset.column_names}); pass column=..."
            )
        self.dataset, self.column, self.n_docs = dataset, column, len(dataset)
        self.name = f"dataset:{getattr(dataset, 'info', None) and dataset.info.dataset_name}:{column}"

    def iter_docs(self, start=0, stop=None, chunk: int = 1024):
        stop = self.n_docs if stop is None else min(stop, self.n_docs)
        for lo in range(start, stop, chunk):
            texts = self.dataset[lo : min(lo + chunk, stop)][self.column]
            for j, text in enumerate(texts):
                yield lo + j, _check_text(text, lo + j, self.name)

    def get(self, indices):
        idx = sorted(set(indices))
        texts = self.dataset[idx][self.column] if idx else []
        return {i: _check_text(t, i, self.name) for i, t in zip(idx, texts)}


class IterableCorpus(Corpus):
    """A re-iterable collection (or an `IterableDataset` with `column`): streamed again to fetch."""

    def __init__(self, texts: Iterable, column: str | None = None, name: str = "iterable"):
        self.texts, self.column, self.name = texts, column, name

    def _iter(self) -> Iterator[tuple[int, str]]:
        for i, item in enumerate(self.texts):
            if self.column is not None:
                if not isinstance(item, dict) or self.column not in item:
                    raise KeyError(f"{self.name}: item {i} has no field {self.column!r}; pass column=...")
                item = item[self.column]
            yield i, _check_text(item, i, self.name)

    def iter_docs(self, start=0, stop=None):
        for i, text in self._iter():
            if stop is not None and i >= stop:
                return
            if i >= start:
                yield i, text

    def get(self, indices):
        want, out = set(indices), {}
        last = max(want, default=-1)
        for i, text in self._iter():
            if i > last:
                break
            if i in want:
                out[i] = text
        return out


class StreamCorpus(Corpus):
    """A one-shot iterator of strings, spilled to a temporary file as it is read (bounded memory)."""

    def __init__(self, iterator: Iterator, spill_dir: str | os.PathLike | None = None, name: str = "stream"):
        self.iterator, self.name = iterator, name
        self._writer, self.spill = files.scratch_file(
            prefix="tl_clt_corpus_", suffix=".jsonl", folder=spill_dir
        )
        self._offsets, self._done = array("q"), False

    def _next(self) -> str | None:
        """The next document of the iterator (spilled), or None at its end."""
        if self._done:
            return None
        try:
            text = _check_text(next(self.iterator), len(self._offsets), self.name)
        except StopIteration:
            self._done, self.n_docs = True, len(self._offsets)
            return None
        self._offsets.append(self._writer.tell())
        self._writer.write((json.dumps(text) + "\n").encode())
        return text

    def iter_docs(self, start=0, stop=None):
        end = len(self._offsets) if stop is None else min(stop, len(self._offsets))
        for lo in range(start, end, 256):  # already read: from the spill file
            yield from self.get(range(lo, min(lo + 256, end))).items()
        while stop is None or len(self._offsets) < stop:
            text = self._next()
            if text is None:
                return
            if len(self._offsets) - 1 >= start:
                yield len(self._offsets) - 1, text

    def get(self, indices):
        idx = sorted(set(indices))
        while idx and idx[-1] >= len(self._offsets) and self._next() is not None:
            pass
        self._writer.flush()
        out = {}
        with open(self.spill, "rb") as f:
            for i in idx:
                if i >= len(self._offsets):
                    raise IndexError(
                        f"{self.name}: document {i} does not exist (the stream ended at "
                        f"{len(self._offsets)})."
                    )
                f.seek(self._offsets[i])
                out[i] = json.loads(f.readline())
        return out

    def __del__(self):
        try:
            self._writer.close()
            self.spill.unlink(missing_ok=True)
        except Exception:
            pass


def open_corpus(texts: Any, column: str = "text") -> Corpus:
    """A Corpus for any accepted input (see the module docstring)."""
    if isinstance(texts, Corpus):
        return texts
    if isinstance(texts, (str, os.PathLike)):
        return TextFileCorpus(texts, column)
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None and isinstance(texts, datasets.Dataset):
        return DatasetCorpus(texts, column)
    if datasets is not None and isinstance(texts, datasets.IterableDataset):
        return IterableCorpus(texts, column, name="iterable dataset")
    if isinstance(texts, Sequence):
        if len(texts) == 0:
            raise ValueError("The corpus is empty: pass at least one text.")
        return SequenceCorpus(texts)
    if isinstance(texts, Iterator):
        return StreamCorpus(texts)
    if isinstance(texts, Iterable):
        return IterableCorpus(texts)
    raise TypeError(
        f"texts must be a list of strings, a text file path, a datasets.Dataset or an iterable of strings, "
        f"got {type(texts).__name__}."
    )
