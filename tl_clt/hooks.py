"""Model checks, the "leave nothing behind" guard, and small helpers for TransformerLens hook functions.

Where hooks go on a model (hook names, weights) is the model's `tl_clt.sites.Sites`; `check_compatible`
checks model and CLT once at a public entry and returns those sites for the rest of the call.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator

from torch import Tensor

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.sites import Sites, sites_for

HookList = list[tuple[str, Callable]]
# start of the TransformerBridge's UserWarning when a hook returns a new norm scale (freezing does)
BRIDGE_EDIT_WARNING = "A forward hook edited hook_scale/hook_normalized on the native-autograd path"


def layer_hook(fn: Callable, layer: int) -> Callable:
    """A TL hook function `fn(tensor, *, hook)` that calls `fn(tensor, hook=hook, layer=layer)`."""

    def hook_fn(tensor: Tensor, *, hook) -> Tensor:
        return fn(tensor, hook=hook, layer=layer)

    return hook_fn


def add_from_layer(pending: dict[int, Tensor], first: int, contributions: Tensor) -> None:
    """`pending[first + i] += contributions[i]`: what a layer's features write to it and later layers."""
    for i, contrib in enumerate(contributions):
        prev = pending.get(first + i)
        pending[first + i] = contrib if prev is None else prev + contrib


class ModelNameWarning(UserWarning):
    """The CLT's config names another model than the one it is used with (the shapes do match)."""


def check_compatible(model, clt: CrossLayerTranscoder) -> Sites:
    """Model and CLT fit together: a supported model (see `tl_clt.sites`), same d_model, n_layers and
    device. Returns the model's sites, checked to hold the CLT's input hook.

    Names that differ beyond a path, the hub owner or case give a `ModelNameWarning`, not an error: the
    same checkpoint may live under another name (a local copy).
    """
    sites = sites_for(model)
    if not isinstance(clt, CrossLayerTranscoder):
        raise TypeError(
            f"Expected a tl_clt.CrossLayerTranscoder, got {type(clt).__name__}; load one with "
            "tl_clt.CrossLayerTranscoder.from_pretrained(...)."
        )
    if clt.d_model != model.cfg.d_model:
        raise ValueError(
            f"CLT d_model {clt.d_model} != model d_model {model.cfg.d_model}: this CLT was trained for "
            f"another model ({clt.model_name!r}). Load the CLT made for {model.cfg.model_name!r}."
        )
    if clt.n_layers != model.cfg.n_layers:
        raise ValueError(
            f"CLT has {clt.n_layers} layers but the model has {model.cfg.n_layers}: this CLT was "
            f"trained for another model ({clt.model_name!r})."
        )
    model_device = model.W_E.device
    if model.cfg.n_devices == 1 and clt.device != model_device:
        raise ValueError(
            f"The CLT is on {clt.device} but the model is on {model_device}; move it with "
            f"clt.to({str(model_device)!r}) (or load it with device=...)."
        )
    if clt.model_name and model.cfg.model_name and not same_model(clt.model_name, model.cfg.model_name):
        warnings.warn(
            f"This CLT was trained for {clt.model_name!r} but the model is {model.cfg.model_name!r}. "
            "d_model and n_layers match, so tl_clt goes on; if these are different checkpoints the "
            "features mean nothing here: load the CLT made for this model. If it is the same model under "
            "another name, silence this with warnings.simplefilter('ignore', tl_clt.hooks.ModelNameWarning).",
            ModelNameWarning,
            stacklevel=3,
        )
    sites.clt_input(clt.feature_input_hook)
    return sites


def same_model(a: str, b: str) -> bool:
    """Same checkpoint name up to a local path, the hub owner, case, or a hub cache folder."""
    return _model_id(a) == _model_id(b)


def _model_id(name: str) -> str:
    parts = [p for p in str(name).replace("\\", "/").split("/") if p]
    for i, part in enumerate(parts):  # <cache>/models--Owner--Name/snapshots/<hash>
        if part.startswith("models--") and i + 1 < len(parts) and parts[i + 1] == "snapshots":
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


# ------------------------------------------------------------------------ leave nothing behind
def _hook_handles(model) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, hp in model.hook_dict.items():
        out[name] = tuple(id(h) for h in hp.fwd_hooks) + tuple(id(h) for h in hp.bwd_hooks)
    return out


@contextlib.contextmanager
def preserve(model) -> Iterator[None]:
    """Restore the model's hooks, cfg, requires_grad, train/eval mode and grads on exit, also on error.

    Our own code adds hooks only through `model.hooks(...)`; this guard is the safety net under it.
    Inside it, the TransformerBridge's warning that a hook edited a norm's scale (what freezing does, on
    purpose) is silenced; the user's own forward passes still show it.
    """
    cfg = copy.copy(model.cfg.__dict__)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    training = {n: m.training for n, m in model.named_modules()}
    context_level = model.context_level
    handles = _hook_handles(model)
    quiet = warnings.catch_warnings()
    quiet.__enter__()
    warnings.filterwarnings("ignore", message=BRIDGE_EDIT_WARNING, category=UserWarning)
    try:
        yield
    finally:
        quiet.__exit__(None, None, None)
        for name, hp in model.hook_dict.items():
            keep = set(handles.get(name, ()))
            for h in [h for h in hp.fwd_hooks + hp.bwd_hooks if id(h) not in keep]:
                h.hook.remove()
            hp.fwd_hooks = [h for h in hp.fwd_hooks if id(h) in keep]
            hp.bwd_hooks = [h for h in hp.bwd_hooks if id(h) in keep]
        model.context_level = context_level
        for k, v in cfg.items():  # by setattr first: a bridge's cfg hands hook flags on to its components
            if model.cfg.__dict__.get(k, v) is not v:
                setattr(model.cfg, k, v)
        model.cfg.__dict__.clear()
        model.cfg.__dict__.update(cfg)
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad[n])
            p.grad = grads[n]
        for n, m in model.named_modules():
            m.training = training[n]
