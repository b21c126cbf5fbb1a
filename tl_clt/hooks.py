"""Hook-name mapping, model checks, the "leave nothing behind" guard, and the CLT replacement hooks.

The CLT configs name circuit-tracer's hook points. On a plain HookedTransformer they map to:
- `mlp.hook_in` (the MLP's true input: ln2 output *including* its weight): `blocks.{l}.ln2.hook_normalized`
  times `ln2.w` (`ln2.hook_normalized` itself is before the weight);
- `ln2.hook_normalized`, `hook_resid_mid`: the TransformerLens hook points of those names;
- `mlp.hook_out` / `hook_mlp_out`: `blocks.{l}.hook_mlp_out`.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from tl_clt.clt import CrossLayerTranscoder

HookList = list[tuple[str, Callable]]


def input_hook_name(clt: CrossLayerTranscoder, layer: int) -> str:
    """The TL hook point whose value (after `clt_input`) is the CLT's input at `layer`."""
    if clt.feature_input_hook == "hook_resid_mid":
        return f"blocks.{layer}.hook_resid_mid"
    return f"blocks.{layer}.ln2.hook_normalized"


def clt_input(model: HookedTransformer, clt: CrossLayerTranscoder, layer: int, value: Tensor) -> Tensor:
    """Turn the value seen at `input_hook_name` into the CLT's input (applies ln2.w for mlp.hook_in)."""
    if clt.feature_input_hook == "mlp.hook_in":
        return value * model.blocks[layer].ln2.w
    return value


def output_hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def check_model(model: HookedTransformer) -> None:
    """A HookedTransformer with unfolded RMSNorms, as `load_qwen3` makes."""
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"Expected a transformer_lens.HookedTransformer, got {type(model).__name__}.")
    norm = model.cfg.normalization_type
    if norm in ("RMSPre", "LNPre"):
        raise ValueError(
            "This model's norm weights were folded into the next layers (normalization_type="
            f"{norm!r}, TransformerLens' default fold_ln=True), so the true MLP input the CLT reads "
            "no longer exists. Load it with tl_clt.load_qwen3(...) or "
            "HookedTransformer.from_pretrained_no_processing(...)."
        )
    if norm != "RMS" or not model.cfg.gated_mlp:
        raise ValueError(
            f"tl_clt supports Qwen3-style models (RMSNorm, gated MLP); this one has "
            f"normalization_type={norm!r}, gated_mlp={model.cfg.gated_mlp}. Load it with tl_clt.load_qwen3."
        )


class ModelNameWarning(UserWarning):
    """The CLT's config names another model than the one it is used with (the shapes do match)."""


def check_compatible(model: HookedTransformer, clt: CrossLayerTranscoder) -> None:
    """Model and CLT fit together: same d_model, n_layers and device, unfolded norms.

    Names that differ beyond a path, the hub owner or case give a `ModelNameWarning`, not an error: the
    same checkpoint may live under another name (a local copy).
    """
    check_model(model)
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
def _hook_handles(model: HookedTransformer) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, hp in model.hook_dict.items():
        out[name] = tuple(id(h) for h in hp.fwd_hooks) + tuple(id(h) for h in hp.bwd_hooks)
    return out


@contextlib.contextmanager
def preserve(model: HookedTransformer) -> Iterator[None]:
    """Restore the model's hooks, cfg, requires_grad, train/eval mode and grads on exit, also on error.

    Our own code adds hooks only through `model.hooks(...)`; this guard is the safety net under it.
    """
    cfg = copy.copy(model.cfg.__dict__)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    training = {n: m.training for n, m in model.named_modules()}
    context_level = model.context_level
    handles = _hook_handles(model)
    try:
        yield
    finally:
        for name, hp in model.hook_dict.items():
            keep = set(handles.get(name, ()))
            for h in [h for h in hp.fwd_hooks + hp.bwd_hooks if id(h) not in keep]:
                h.hook.remove()
            hp.fwd_hooks = [h for h in hp.fwd_hooks if id(h) in keep]
            hp.bwd_hooks = [h for h in hp.bwd_hooks if id(h) in keep]
        model.context_level = context_level
        model.cfg.__dict__.clear()
        model.cfg.__dict__.update(cfg)
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad[n])
            p.grad = grads[n]
        for n, m in model.named_modules():
            m.training = training[n]


# ------------------------------------------------------------------------ replacement
class _ReplacementState:
    """Per-forward-pass scratch space shared by the replacement hooks."""

    def __init__(self, model: HookedTransformer, clt: CrossLayerTranscoder, use_error_term: bool):
        self.model, self.clt, self.use_error_term = model, clt, use_error_term
        self.pending: list[Tensor | None] = [None] * clt.n_layers
        self.acts: list[Tensor | None] = [None] * clt.n_layers

    def read_input(self, value: Tensor, *, hook: HookPoint, layer: int) -> Tensor:
        if layer == 0:
            self.pending = [None] * self.clt.n_layers
        x = clt_input(self.model, self.clt, layer, value)
        acts = self.clt.encode(x, layer)
        self.acts[layer] = acts
        self._write_decoder_contributions(layer, acts)
        return value

    def _write_decoder_contributions(self, layer: int, acts: Tensor) -> None:
        active = acts.reshape(-1, acts.shape[-1]).abs().sum(0).nonzero().squeeze(-1)
        rows = self.clt.decoder_rows(layer, active).to(acts.dtype)  # [n, L-layer, d]
        contrib = torch.einsum("...n,nld->l...d", acts[..., active], rows)
        for i, target in enumerate(range(layer, self.clt.n_layers)):
            prev = self.pending[target]
            self.pending[target] = contrib[i] if prev is None else prev + contrib[i]

    def write_output(self, mlp_out: Tensor, *, hook: HookPoint, layer: int) -> Tensor:
        recon = self.clt.b_dec[layer].to(mlp_out.dtype)
        if self.pending[layer] is not None:
            recon = self.pending[layer] + recon
        recon = recon.expand_as(mlp_out)
        if self.use_error_term:
            return recon + (mlp_out - recon).detach()
        return recon


def replacement_hooks(
    model: HookedTransformer, clt: CrossLayerTranscoder, use_error_term: bool = False
) -> HookList:
    """TL forward hooks that replace every MLP output with the CLT's reconstruction.

    With `use_error_term=True` the output equals the original MLP output (reconstruction + the
    detached error), so gradients flow through the CLT features. Use with `model.hooks(fwd_hooks=...)`.
    """
    check_compatible(model, clt)
    state = _ReplacementState(model, clt, use_error_term)
    hooks: HookList = []
    for layer in range(clt.n_layers):
        hooks.append((input_hook_name(clt, layer), _bind(state.read_input, layer)))
        hooks.append((output_hook_name(layer), _bind(state.write_output, layer)))
    return hooks


def _bind(fn: Callable, layer: int) -> Callable:
    def hook_fn(tensor: Tensor, *, hook: HookPoint) -> Tensor:
        return fn(tensor, hook=hook, layer=layer)

    return hook_fn


def capture_hooks(model: HookedTransformer, clt: CrossLayerTranscoder, store: dict[str, list]) -> HookList:
    """Forward hooks that record each layer's CLT input and true MLP output into `store`."""
    store["mlp_in"] = [None] * clt.n_layers
    store["mlp_out"] = [None] * clt.n_layers

    def make(kind: str, layer: int) -> Callable:
        def hook_fn(tensor: Float[Tensor, "batch pos d"], *, hook: HookPoint) -> Tensor:
            value = clt_input(model, clt, layer, tensor) if kind == "mlp_in" else tensor
            store[kind][layer] = value.detach()
            return tensor

        return hook_fn

    hooks: HookList = []
    for layer in range(clt.n_layers):
        hooks.append((input_hook_name(clt, layer), make("mlp_in", layer)))
        hooks.append((output_hook_name(layer), make("mlp_out", layer)))
    return hooks
