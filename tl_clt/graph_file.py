"""The graph file format: what `AttributionGraph.save` writes and `AttributionGraph.load` reads.

Graph files are shared between users, so reading one never runs code (no pickle) and checks everything
before a graph is built from it.

Format `tl_clt.AttributionGraph/2`: one safetensors file. The tensor fields (tokens, active_features,
activation_values, selected_features, logit_tokens, logit_probabilities, adjacency, and node_mask /
influence when set) are its tensors; the safetensors `__metadata__` holds `format` and `graph`, a JSON
object with the other fields (token_strs, logit_token_strs, n_layers, model_name, clt_name, meta). Any
safetensors reader can open it. The content decides, not the file name: `g.pt` and `g.safetensors` are
the same file.

Format `tl_clt.AttributionGraph/1` (tl_clt before 0.2: `torch.save` of a dict) is still read, with
`torch.load(weights_only=True)`: torch's restricted unpickler, which only rebuilds tensors and plain
containers and refuses anything else. Re-save such a graph (`AttributionGraph.load(p).save(p)`) to
convert it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from tl_clt import files

FORMAT = "tl_clt.AttributionGraph/2"
LEGACY_FORMAT = "tl_clt.AttributionGraph/1"
TENSOR_FIELDS = (
    "tokens",
    "active_features",
    "activation_values",
    "selected_features",
    "logit_tokens",
    "logit_probabilities",
    "adjacency",
    "node_mask",
    "influence",
)
_ZIP_MAGIC = b"PK\x03\x04"
_UNREADABLE = "is not a readable tl_clt graph file"
_REMAKE = "re-create it with tl_clt.attribute(...).save(path)"


# ------------------------------------------------------------------------ writing
def to_bytes(fields: dict) -> bytes:
    """The file's bytes for a dict of AttributionGraph fields."""
    tensors, plain = {}, {}
    for name, value in fields.items():
        if name in TENSOR_FIELDS:
            if value is not None:
                tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        else:
            plain[name] = value
    try:
        text = json.dumps(plain, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Cannot save the graph: {err}. Graph files store meta, names and token strings as JSON: "
            "keep graph.meta to numbers, strings, lists and dicts."
        ) from err
    return safetensors.torch.save(tensors, metadata={"format": FORMAT, "graph": text})


def write(path: str | os.PathLike, fields: dict) -> None:
    """Write the graph file atomically (a failed save leaves the old file, if any, and no temp file)."""
    path = files.check_output_path(path, what="graph file")
    files.write_bytes(path, to_bytes(fields), what="graph file")


# ------------------------------------------------------------------------ reading
def read(path: str | os.PathLike, names: set[str], required: set[str]) -> dict:
    """The fields of the graph in `path`, checked (`names`: all fields, `required`: those without a
    default). FileNotFoundError for no file, ValueError for anything that is not a valid graph file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No graph file at {path}.")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path} {_UNREADABLE} ({err}).") from err
    fields = _read_legacy(path) if data.startswith(_ZIP_MAGIC) else _read_safetensors(path, data)
    if set(fields) - names or required - set(fields):
        raise ValueError(
            f"{path} says {FORMAT} but its fields {sorted(fields)} are not this version's {sorted(names)}; "
            f"the file is corrupt or from another tl_clt version: {_REMAKE}."
        )
    problem = check_fields(fields)
    if problem:
        raise ValueError(f"{path} is not a valid tl_clt graph file: {problem}; {_REMAKE}.")
    return fields


def _read_safetensors(path: Path, data: bytes) -> dict:
    header = _header(data)
    if header is None:
        raise ValueError(
            f"{path} {_UNREADABLE} (neither a {FORMAT} safetensors file nor a {LEGACY_FORMAT} file)."
        )
    meta = header.get("__metadata__")
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise ValueError(f"{path} holds {found!r}, not a {FORMAT} graph; {_REMAKE}.")
    try:
        tensors = safetensors.torch.load(data)
        plain = json.loads(meta.get("graph", ""))
    except Exception as err:  # SafetensorError, JSONDecodeError, ...: all mean a corrupt file
        raise ValueError(f"{path} {_UNREADABLE} ({type(err).__name__}: {err}).") from err
    if not isinstance(plain, dict):
        raise ValueError(f"{path} {_UNREADABLE} (its graph metadata is not a mapping).")
    clash = sorted(set(plain) & set(tensors))
    if clash or set(tensors) - set(TENSOR_FIELDS):
        raise ValueError(f"{path} is not a valid tl_clt graph file: unexpected tensors {sorted(tensors)}.")
    return {**plain, **tensors}


def _header(data: bytes) -> dict | None:
    """The JSON header of safetensors bytes, or None if `data` is not a safetensors file."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return header if isinstance(header, dict) else None


def _read_legacy(path: Path) -> dict:
    """A `tl_clt.AttributionGraph/1` file (torch.save of a dict), read without running any code."""
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # an object other than tensors and plain containers
        raise ValueError(
            f"{path} is not a readable tl_clt graph file: it holds objects other than tensors and plain "
            "containers, and tl_clt never unpickles those (they can run code). Do not open it with "
            "torch.load unless you trust whoever made it."
        ) from err
    except Exception as err:  # a truncated or corrupt zip, a bad pickle stream, ...
        raise ValueError(f"{path} {_UNREADABLE} ({type(err).__name__}: {err}).") from err
    found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
    if found != LEGACY_FORMAT:
        raise ValueError(f"{path} holds {found!r}, not a {FORMAT} graph; {_REMAKE}.")
    fields = blob.get("graph")
    if not isinstance(fields, dict):
        raise ValueError(f"{path} is not a valid tl_clt graph file: 'graph' is not a mapping; {_REMAKE}.")
    return fields


# ------------------------------------------------------------------------ checking
def _vector(fields: dict, name: str, kind: str, ndim: int = 1) -> str | None:
    """Problem with fields[name] as a tensor of `ndim` dims of kind int/float/bool, or None."""
    t = fields.get(name)
    if not isinstance(t, Tensor):
        return f"{name} is a {type(t).__name__}, not a tensor"
    ok = {
        "int": not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        "float": t.is_floating_point(),
        "bool": t.dtype == torch.bool,
    }[kind]
    if t.ndim != ndim or not ok:
        return f"{name} is a {t.ndim}-d {t.dtype} tensor, expected a {ndim}-d {kind} tensor"
    if kind == "float" and t.numel() and not torch.isfinite(t).all():
        return f"{name} has NaN or inf values"
    return None


def _strings(fields: dict, name: str, n: int) -> str | None:
    value = fields.get(name)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        return f"{name} is not a list of strings"
    if len(value) != n:
        return f"{name} has {len(value)} entries, expected {n}"
    return None


def check_fields(f: dict) -> str | None:
    """What is wrong with a dict of AttributionGraph fields (types, shapes, index ranges), or None."""
    for name, kind, ndim in [
        ("tokens", "int", 1),
        ("active_features", "int", 2),
        ("activation_values", "float", 1),
        ("selected_features", "int", 1),
        ("logit_tokens", "int", 1),
        ("logit_probabilities", "float", 1),
        ("adjacency", "float", 2),
    ]:
        if problem := _vector(f, name, kind, ndim):
            return problem
    n_layers = f.get("n_layers")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        return f"n_layers is {n_layers!r}, expected an int >= 1"
    n_pos, n_logits = len(f["tokens"]), len(f["logit_tokens"])
    n_active = len(f["active_features"])
    for problem in (
        _strings(f, "token_strs", n_pos),
        _strings(f, "logit_token_strs", n_logits),
        None if n_pos >= 1 else "tokens is empty",
        None if f["active_features"].shape[1] == 3 else "active_features is not [n_active, 3]",
        _length(f, "activation_values", n_active),
        _length(f, "logit_probabilities", n_logits),
    ):
        if problem:
            return problem
    if problem := _check_ranges(f, n_layers, n_pos, n_active):
        return problem
    n = len(f["selected_features"]) + (n_layers + 1) * n_pos + n_logits
    if tuple(f["adjacency"].shape) != (n, n):
        return (
            f"adjacency has shape {tuple(f['adjacency'].shape)}, expected ({n}, {n}) = features + errors + "
            "tokens + logits"
        )
    for name, kind in (("node_mask", "bool"), ("influence", "float")):
        if f.get(name) is not None and (problem := _vector(f, name, kind) or _length(f, name, n)):
            return problem
    for name in ("model_name", "clt_name"):
        if not isinstance(f.get(name), str | None):
            return f"{name} is a {type(f[name]).__name__}, not a string"
    if not isinstance(f.get("meta", {}), dict):
        return "meta is not a mapping"
    return None


def _length(f: dict, name: str, n: int) -> str | None:
    return None if len(f[name]) == n else f"{name} has {len(f[name])} entries, expected {n}"


def _check_ranges(f: dict, n_layers: int, n_pos: int, n_active: int) -> str | None:
    keys, sel = f["active_features"], f["selected_features"]
    if n_active and not (
        (keys[:, 0] >= 0).all() and (keys[:, 0] < n_layers).all() and (keys[:, 1] >= 0).all()
    ):
        return "active_features has layers outside [0, n_layers) or negative positions"
    if n_active and not ((keys[:, 1] < n_pos).all() and (keys[:, 2] >= 0).all()):
        return "active_features has positions past the prompt or negative feature indices"
    if len(sel) and not ((sel >= 0).all() and (sel < n_active).all()):
        return f"selected_features has indices outside [0, {n_active})"
    if (f["tokens"] < 0).any() or (f["logit_tokens"] < 0).any():
        return "tokens or logit_tokens has negative token ids"
    return None
