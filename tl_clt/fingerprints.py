"""Which model and CLT made a graph: cheap fingerprints recorded in `graph.meta`, checked on reuse.

A fingerprint is a JSON-able dict: a name, the shapes, and a fixed sample of weights (32 entries of the
CLT's encoder / the model's embedding and unembedding, at positions drawn from a fixed seed). Two
fingerprints match when the shapes are equal and the samples agree to 1% (so the same CLT or model in
another float dtype matches; another CLT of the same shape does not).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

N_SAMPLE = 32
RTOL = 1e-2


class GraphMismatchWarning(UserWarning):
    """A graph is used with a model whose weights differ from the one that made it (same shapes)."""


def _sample(t: Tensor, seed: int) -> list[float]:
    """N_SAMPLE entries of `t` at flat (row-major) positions drawn from `seed`, read where they are: a
    transposed view (TransformerLens' W_U over nn.Linear's layout) is not copied to be flattened."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, t.numel(), (N_SAMPLE,), generator=gen)
    coords = tuple(c.to(t.device) for c in torch.unravel_index(idx, t.shape))
    return t.detach()[coords].float().cpu().tolist()


def clt_fingerprint(clt) -> dict:
    """Name, shape [n_layers, d_model, n_features] and an encoder sample of `clt`."""
    return {
        "name": str(clt.path) if getattr(clt, "path", None) else None,
        "shape": [clt.n_layers, clt.d_model, clt.n_features],
        "sample": _sample(clt.W_enc, 0) + _sample(clt.b_enc, 1),
    }


def model_fingerprint(model) -> dict:
    """Name, shape [n_layers, d_model, d_vocab] and an embedding / unembedding sample of `model`."""
    cfg = model.cfg
    return {
        "name": cfg.model_name,
        "shape": [cfg.n_layers, cfg.d_model, cfg.d_vocab],
        "sample": _sample(model.W_E, 0) + _sample(model.W_U, 1),
    }


def _differs(recorded: dict, current: dict) -> str | None:
    if list(recorded.get("shape", [])) != current["shape"]:
        return f"shape {recorded.get('shape')} vs {current['shape']}"
    a, b = torch.tensor(recorded.get("sample", []), dtype=torch.float64), torch.tensor(current["sample"])
    if a.shape != b.shape or not torch.allclose(a, b.double(), rtol=RTOL, atol=RTOL * 1e-3):
        return "same shape, other weights"
    return None


def check_clt(recorded: dict | None, clt, what: str) -> None:
    """ValueError when `recorded` (a graph's CLT fingerprint, or None for an older graph) is not `clt`."""
    if not recorded:
        return
    why = _differs(recorded, clt_fingerprint(clt))
    if why:
        raise ValueError(
            f"{what} was made with another CLT ({recorded.get('name') or 'unnamed'}; {why}) than the one "
            f"given ({clt_fingerprint(clt)['name'] or 'unnamed'}): its feature keys and activations mean "
            "nothing for this CLT. Use the CLT that made the graph, or re-run tl_clt.attribute with this one."
        )


def check_model(recorded: dict | None, model, what: str) -> None:
    """ValueError for other shapes, GraphMismatchWarning for other weights of the same shapes."""
    if not recorded:
        return
    current = model_fingerprint(model)
    why = _differs(recorded, current)
    if why is None:
        return
    message = (
        f"{what} was made with model {recorded.get('name')!r} ({why}) but is used with "
        f"{current['name']!r}: re-run tl_clt.attribute with this model."
    )
    if why.startswith("shape"):
        raise ValueError(message)
    warnings.warn(message, GraphMismatchWarning, stacklevel=3)
