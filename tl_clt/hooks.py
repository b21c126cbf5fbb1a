"""Model checks, the "leave nothing behind" guard, and small helpers for TransformerLens hook functions.

Where hooks go on a model (hook names, weights) is the model's `tl_clt.sites.Sites`; `check_compatible`
checks model and CLT once at a public entry and returns those sites for the rest of the call.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float
from torch import Tensor

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.sites import TRANSFORMER_BRIDGE, Sites, backend_of, hook_points, sites_for

HookList = list[tuple[str, Callable]]
# start of the TransformerBridge's UserWarning when a hook returns a new norm scale (freezing does)
BRIDGE_EDIT_WARNING = "A forward hook edited hook_scale/hook_normalized on the native-autograd path"
# transformers 5's FutureWarning when a bridge pass is given `past_key_values` (tail passes do: the
# bridge's own name for the cache; `tl_clt.prefix_cache`)
CACHE_NAME_WARNING = "`past_key_values` is deprecated"


def layer_hook(fn: Callable, layer: int) -> Callable:
    """A TL hook function `fn(tensor, *, hook)` that calls `fn(tensor, hook=hook, layer=layer)`."""

    def hook_fn(tensor: Tensor, *, hook) -> Tensor:
        return fn(tensor, hook=hook, layer=layer)

    return hook_fn


def added_hooks(model, hooks: HookList):
    """`model.hooks(fwd_hooks=hooks)`, the context our own passes add their hooks in. On a
    TransformerBridge the hooks go in as one filter hook that runs them at each hook point in list order:
    the bridge's `hooks()` builds its hook dict again for every named hook (11 ms at the Qwen3-0.6B shape,
    about 1 s a pass for a steering's ~100 hooks). A name the model does not have is a KeyError."""
    if not hooks or backend_of(model) != TRANSFORMER_BRIDGE:
        return model.hooks(fwd_hooks=hooks)
    points = model.hook_dict  # built once: every name our hooks use, aliases included
    by_point: dict[int, list[Callable]] = {}
    for name, fn in hooks:
        if name not in points:  # transformer-lens 4.x's bridge refuses it too (3.9's skips it)
            raise KeyError(f"Hook name {name!r} does not exist on this model.")
        by_point.setdefault(id(points[name]), []).append(fn)

    def wanted(name: str) -> bool:
        return name in points and id(points[name]) in by_point

    def run_all(tensor, *, hook):
        for fn in by_point[id(hook)]:
            out = fn(tensor, hook=hook)
            tensor = tensor if out is None else out
        return tensor

    return model.hooks(fwd_hooks=[(wanted, run_all)])


class PassStart:
    """Tells hooks where a forward pass begins, also one that starts at a later block (`start_at_layer`).

    A block begins a new pass unless it is the block right after the last one that ran and its input is
    that block's very output tensor. At a new pass `reset()` is called, so no state that hooks keep
    between layers (cross-layer decoder writes) survives from one forward pass into the next.
    """

    def __init__(self, reset: Callable[[], None]):
        self.reset = reset
        self.last_layer: int | None = None
        self.last_out: weakref.ref | None = None

    def block_in(self, tensor: Tensor, *, hook, layer: int) -> Tensor:
        out = self.last_out() if self.last_out is not None else None
        if layer == 0 or self.last_layer != layer - 1 or out is not tensor:
            self.reset()
        self.last_layer, self.last_out = None, None
        return tensor

    def block_out(self, tensor: Tensor, *, hook, layer: int) -> Tensor:
        self.last_layer, self.last_out = layer, weakref.ref(tensor)
        return tensor

    def hooks(self, sites: Sites, n_layers: int) -> HookList:
        """Hooks at every block's input and output (put them before the hooks that use the state)."""
        out: HookList = []
        for layer in range(n_layers):
            out.append((sites.resid_pre.format(layer=layer), layer_hook(self.block_in, layer)))
            out.append((sites.resid_post.format(layer=layer), layer_hook(self.block_out, layer)))
        return out


class CrossLayerWrites:
    """Hooks that splice CLT features into a forward pass: `read_input` (at a layer's CLT input) adds what
    that layer's features write to it and every later layer (`add`); `write_output` (at a layer's MLP
    output) takes what was written to that layer (`take`). The writes live within one forward pass
    (`PassStart`). Subclasses define `read_input` and `write_output` (TL hook functions with `layer=`)."""

    def __init__(self):
        self.pending: dict[int, Tensor] = {}

    def reset(self) -> None:
        self.pending = {}

    def add(self, first: int, contributions: Float[Tensor, "n_later ..."]) -> None:
        """Layer `first`'s features write `contributions[i]` to layer `first + i`."""
        for i, contrib in enumerate(contributions):
            prev = self.pending.get(first + i)
            self.pending[first + i] = contrib if prev is None else prev + contrib

    def take(self, layer: int) -> Tensor | None:
        """What was written to `layer` in this pass (None: nothing)."""
        return self.pending.pop(layer, None)

    def read_input(self, value: Tensor, *, hook, layer: int) -> Tensor:
        raise NotImplementedError

    def write_output(self, mlp_out: Tensor, *, hook, layer: int) -> Tensor:
        raise NotImplementedError

    def hooks(self, sites: Sites, clt: CrossLayerTranscoder, read_layers, write_layers) -> HookList:
        """The pass-start hooks, then `read_input` at the CLT inputs of `read_layers` and `write_output`
        at the MLP outputs of `write_layers`."""
        hooks: HookList = PassStart(self.reset).hooks(sites, clt.n_layers)  # nothing kept between passes
        for layer in read_layers:
            hooks.append(
                (sites.clt_input_hook(clt.feature_input_hook, layer), layer_hook(self.read_input, layer))
            )
        for layer in write_layers:
            hooks.append((sites.mlp_out_hook(layer), layer_hook(self.write_output, layer)))
        return hooks


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
class UserHookWarning(UserWarning):
    """The user's own hooks were on the model during a tl_clt call (see `Guard`)."""


@dataclass
class Guard:
    """What `preserve` found on the model when the outermost tl_clt call began."""

    user_hooks: list[str] = field(default_factory=list)  # hook points with the user's forward hooks
    user_backward_hooks: list[str] = field(default_factory=list)  # switched off during the call
    saes: list[str] = field(default_factory=list)  # SAELens SAEs (with error term) routed around


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> RLock
_LOCKS_LOCK = threading.Lock()
_DEPTH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> nesting depth (under its lock)


def model_lock(model) -> threading.RLock:
    """The lock every tl_clt call holds on `model` while its hooks are on it (one per model).

    TransformerLens hooks are global to a model: two tl_clt calls on one model from two threads would
    run each other's hooks. Holding this lock serialises them (the second waits for the first).
    """
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _hook_handles(model) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, hp in hook_points(model).items():
        out[name] = tuple(id(h) for h in hp.fwd_hooks) + tuple(id(h) for h in hp.bwd_hooks)
    return out


def attached_saes(model) -> dict[str, tuple[str, Any]]:
    """SAELens SAEs on a `HookedSAETransformer`: {input hook: (output hook, wrapper)} ({} otherwise)."""
    acts = getattr(model, "_acts_to_saes", None) or getattr(model, "acts_to_saes", None) or {}
    outs = getattr(model, "_transcoder_output_hooks", None) or {}
    return {name: (outs.get(name, name), wrapper) for name, wrapper in acts.items()}


def _set_module(model, path: str, module) -> None:
    *parents, last = path.split(".")
    owner = model
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, last, module)


def refuse_saes_at(model, hook_names) -> None:
    """ValueError when a SAELens SAE replaces one of `hook_names` (hooks that are handed to the user)."""
    taken = sorted({out for out, _ in attached_saes(model).values()} & set(hook_names))
    if taken:
        raise ValueError(
            f"SAELens SAEs are attached at {taken}, where these hooks must go: remove them with "
            "model.reset_saes() first (or use tl_clt.attribute / steer / feature_activations, which route "
            "around SAEs attached with use_error_term=True)."
        )


def _route_around_saes(model) -> list[tuple[str, Any]]:
    """Swap each attached SAE (with its error term) for a plain HookPoint; refuse one without it."""
    saes = attached_saes(model)
    without = sorted(name for name, (_, w) in saes.items() if not getattr(w, "use_error_term", False))
    if without:
        raise ValueError(
            f"SAELens SAEs are attached at {without} with use_error_term=False: the model's activations "
            "there are SAE reconstructions, so tl_clt's graphs and steering would describe the SAE-spliced "
            "model, not the model the CLT was trained on. Remove them with model.reset_saes(), or attach "
            "them with model.add_sae(sae, use_error_term=True) (then tl_clt routes around them: the SAE "
            "plus its error is the identity)."
        )
    from transformer_lens.hook_points import HookPoint

    swapped = []
    for out, wrapper in saes.values():
        _set_module(model, out, HookPoint())
        swapped.append((out, wrapper))
    if swapped:
        model.setup()
    return swapped


def _restore_saes(model, swapped: list[tuple[str, Any]]) -> None:
    for out, wrapper in swapped:
        if getattr(wrapper, "_captured_input", None) is not None:
            wrapper._captured_input = None  # a transcoder's input captured while we ran without it
        _set_module(model, out, wrapper)
    if swapped:
        model.setup()


def _user_hooks(model) -> tuple[list[str], list[str]]:
    """Hook points holding the user's forward / backward hooks (SAELens' own input hooks left out), each
    once under its TransformerLens name (`sites.hook_points`)."""
    sae_inputs = set(getattr(model, "_transcoder_output_hooks", None) or {})
    points = hook_points(model)
    fwd = [n for n, hp in points.items() if hp.fwd_hooks and n not in sae_inputs]
    bwd = [n for n, hp in points.items() if hp.bwd_hooks]
    return fwd, bwd


def _switch_off_backward_hooks(model, names: list[str]) -> list[tuple[Any, int, Callable]]:
    """Take the user's backward hooks out of their modules (put back by `_switch_on`)."""
    off = []
    for name in names:
        hp = model.hook_dict[name]
        for h in hp.bwd_hooks:
            key = h.hook.id
            if key in hp._backward_hooks:
                off.append((hp, key, hp._backward_hooks.pop(key)))
    return off


def _switch_on(off: list[tuple[Any, int, Callable]]) -> None:
    for hp, key, fn in off:
        hp._backward_hooks[key] = fn


@contextlib.contextmanager
def preserve(model) -> Iterator[Guard]:
    """Hold the model's lock; restore its hooks, cfg, requires_grad, train/eval mode and grads on exit,
    also on error. Yields a `Guard` saying what the outermost call found on the model.

    At the outermost call on a model (calls nest: `steer` builds steering hooks under its own guard):
    - SAELens SAEs attached with `use_error_term=True` are swapped for plain hook points while we run and
      put back after (the SAE plus its error is the identity); one without its error term is refused;
    - the user's forward hooks stay on and run in our passes: `UserHookWarning`, names in `Guard.user_hooks`;
    - the user's backward hooks are switched off while we run (they would run inside our vmapped backward
      passes, several times per call) and switched back on after: `UserHookWarning`,
      names in `Guard.user_backward_hooks`.
    Our own code adds hooks only through `model.hooks(...)` (`added_hooks`); this guard is the safety net
    under it.
    Inside it, the TransformerBridge's warning that a hook edited a norm's scale (what freezing does, on
    purpose) and transformers' that `past_key_values` is deprecated (tail passes name the cache so) are
    silenced; the user's own forward passes still show them.
    """
    lock = model_lock(model)
    lock.acquire()
    guard = Guard()
    outer = _DEPTH.get(model, 0) == 0
    _DEPTH[model] = _DEPTH.get(model, 0) + 1
    swapped: list = []
    off: list = []
    try:
        if outer:
            swapped = _route_around_saes(model)
            guard.saes = [out for out, _ in swapped]
            guard.user_hooks, guard.user_backward_hooks = _user_hooks(model)
            off = _switch_off_backward_hooks(model, guard.user_backward_hooks)
            _warn_user_hooks(guard)
        with _restored(model):
            yield guard
    finally:
        try:
            _switch_on(off)
            _restore_saes(model, swapped)
        finally:
            _DEPTH[model] -= 1
            lock.release()


def _warn_user_hooks(guard: Guard) -> None:
    if guard.user_hooks:
        warnings.warn(
            f"The model has hooks of yours at {guard.user_hooks}: they run inside tl_clt's passes, so the "
            "result describes the hooked model (a graph records them in graph.meta['user_hooks']). Remove "
            "them (model.reset_hooks()) for the plain model.",
            UserHookWarning,
            stacklevel=4,
        )
    if guard.user_backward_hooks:
        warnings.warn(
            f"The model has backward hooks of yours at {guard.user_backward_hooks}: tl_clt switches them off "
            "during its own backward passes and back on after (a graph records them in "
            "graph.meta['user_backward_hooks']).",
            UserHookWarning,
            stacklevel=4,
        )


@contextlib.contextmanager
def _restored(model) -> Iterator[None]:
    cfg = copy.copy(model.cfg.__dict__)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    training = {n: m.training for n, m in model.named_modules()}
    context_level = model.context_level
    handles = _hook_handles(model)
    quiet = warnings.catch_warnings()
    quiet.__enter__()
    warnings.filterwarnings("ignore", message=BRIDGE_EDIT_WARNING, category=UserWarning)
    warnings.filterwarnings("ignore", message=CACHE_NAME_WARNING, category=FutureWarning)
    try:
        yield
    finally:
        quiet.__exit__(None, None, None)
        # only what differs is set back (Module.__setattr__ is slow: a tiny model has ~1000 modules)
        for name, hp in hook_points(model).items():
            keep = set(handles.get(name, ()))
            extra = [h for h in hp.fwd_hooks + hp.bwd_hooks if id(h) not in keep]
            for h in extra:
                h.hook.remove()
            if extra:
                hp.fwd_hooks = [h for h in hp.fwd_hooks if id(h) in keep]
                hp.bwd_hooks = [h for h in hp.bwd_hooks if id(h) in keep]
        model.context_level = context_level
        for k, v in cfg.items():  # by setattr first: a bridge's cfg hands hook flags on to its components
            if model.cfg.__dict__.get(k, v) is not v:
                setattr(model.cfg, k, v)
        model.cfg.__dict__.clear()
        model.cfg.__dict__.update(cfg)
        for n, p in model.named_parameters():
            if p.requires_grad != requires_grad[n]:
                p.requires_grad_(requires_grad[n])
            if p.grad is not grads[n]:
                p.grad = grads[n]
        for n, m in model.named_modules():
            if m.training != training[n]:
                m.training = training[n]
