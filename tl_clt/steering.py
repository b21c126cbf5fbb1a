"""Steering CLT features as TransformerLens hook functions (generation: `generation.py`).

An `Intervention(layer, pos, feature, value)` sets a feature's activation to `value`. At its layer
the hooks read the feature's current activation `a` from the CLT input *in this forward pass* and
add `(value - a) * W_dec_{layer->l}[feature]` to `blocks.{l}.hook_mlp_out` of that layer and every
later layer l, at the chosen positions. The real MLPs still run, so later features respond.
- `freeze_attention=True`: attention patterns are held at the unsteered prompt's values;
- `direct_effects=True`: attention patterns, every RMSNorm scale and every MLP output are held at
  the unsteered prompt's values (so `a` is the clean activation), and only the steering deltas are
  added. The model is then the graph's frozen linear model: ablating a feature changes each
  de-meaned logit by minus the graph's edge from that feature to the logit.

Positions are absolute positions in the sequence, also inside TransformerLens' own `model.generate`
(with or without `use_past_kv_cache`): each forward pass reads its offset from the attention pattern
(`k_len - q_len`: a KV-cache pass runs only the new tokens), so chunk position i is position
offset + i. With `tokens=` (the prompt), negative positions count from the prompt's end. See
`Intervention` for what each position spelling covers during generation (docs/tl_generate.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_clt.checks import as_int, as_number
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.fingerprints import check_clt
from tl_clt.frozen import PromptState, clean_pass, freeze_hooks, last_positions
from tl_clt.hooks import (
    CrossLayerWrites,
    HookList,
    added_hooks,
    check_compatible,
    layer_hook,
    preserve,
    refuse_saes_at,
)
from tl_clt.nodes import NodeLike, as_node_list, feature_key
from tl_clt.prefix_cache import HFPrefix, TLPrefix
from tl_clt.prompts import Prompt, to_tokens
from tl_clt.sites import HOOKED_TRANSFORMER, TRANSFORMER_BRIDGE, Sites

if TYPE_CHECKING:
    from tl_clt.graph import AttributionGraph

Position = int | slice | str
POSITION_NAMES = ("prompt", "generated", "all")  # the named positions (resolved against the prompt)


@dataclass(frozen=True)
class Intervention:
    """Set feature `feature` of layer `layer` at position(s) `pos` to activation `value`.

    `value` is the new absolute activation (0 ablates). `pos`, against the prompt (`tl_clt.to_tokens`,
    sink at 0) and in generation (`tl_clt.generate`, or TL's `model.generate` with `steering_hooks`):
    - an int: that one position; a negative int counts from the prompt's end (-1: its last token).
      Never a generated token: an intervention at the prompt's positions is not re-applied to new tokens;
    - a slice: those positions, negative bounds counted from the prompt's end; open-ended
      (`slice(k, None)`) it covers the prompt from k and every generated token;
    - "prompt" (every prompt position, no generated one), "generated" (every generated token, no
      prompt position; in `steer` it selects nothing), "all" (both).
    """

    layer: int
    pos: Position
    feature: int
    value: float
    # set by `scale` / `group_interventions` from a graph: the CLT that graph was made with (checked by steer)
    clt_fingerprint: dict | None = field(default=None, compare=False, repr=False)

    def __iter__(self) -> Iterator:
        return iter((self.layer, self.pos, self.feature, self.value))


# ------------------------------------------------------------------------ validation
def as_interventions(interventions) -> list[Intervention]:
    """An Intervention, or an iterable of Interventions / (layer, pos, feature, value) tuples."""
    if isinstance(interventions, Intervention):
        return [interventions]
    if (
        interventions is None
        or isinstance(interventions, (Mapping, str, bytes))
        or not isinstance(interventions, Iterable)
    ):
        raise TypeError(
            "interventions must be an Intervention or a list of them (or of (layer, pos, feature, value) "
            f"tuples); got {type(interventions).__name__}. Pass [] to run without steering."
        )
    out = []
    for iv in interventions:
        if isinstance(iv, Intervention):
            out.append(iv)
        elif isinstance(iv, (tuple, list)) and len(iv) == 4:
            out.append(Intervention(*iv))
        else:
            raise TypeError(f"Expected Intervention(layer, pos, feature, value) or a 4-tuple, got {iv!r}.")
    return out


def _int(x, what: str, iv: Intervention) -> int:
    try:
        return as_int(x, what)
    except TypeError:
        raise TypeError(f"{iv}: {what} must be an int, got {type(x).__name__}.") from None


def check_intervention(iv: Intervention, clt: CrossLayerTranscoder, n_pos: int | None = None) -> Intervention:
    """`iv` with plain-Python fields, or a clear error naming what is wrong and how to fix it. The CLT
    fingerprint of the graph it came from is checked apart, once per graph (`check_fingerprints`)."""
    layer = _int(iv.layer, "layer", iv)
    feature = _int(iv.feature, "feature", iv)
    if not 0 <= layer < clt.n_layers:
        raise ValueError(f"{iv}: layer {layer} is out of range; the CLT has layers 0..{clt.n_layers - 1}.")
    if not 0 <= feature < clt.n_features:
        raise ValueError(
            f"{iv}: feature {feature} is out of range; layer {layer} has features 0..{clt.n_features - 1}."
        )
    try:
        value = as_number(iv.value, "value", finite=False)
    except TypeError as err:
        raise TypeError(f"{iv}: value must be a number (the new activation), got {iv.value!r}.") from err
    if not math.isfinite(value):
        raise ValueError(
            f"{iv}: value is {value}; give the feature's new activation as a finite number "
            "(0 ablates, k * activation scales)."
        )
    pos = iv.pos if isinstance(iv.pos, (slice, str)) else _int(iv.pos, "pos", iv)
    if isinstance(pos, str):
        pos = _named_position(pos, iv, n_pos)
    if isinstance(pos, slice):
        _check_slice(pos, iv, n_pos)
    elif n_pos is not None and not -n_pos <= pos < n_pos:
        raise ValueError(
            f"{iv}: pos {pos} is out of range for a prompt of {n_pos} tokens (with the "
            f"'<|endoftext|>' sink at 0); use 0..{n_pos - 1} or -{n_pos}..-1."
        )
    return Intervention(layer, pos, feature, value, iv.clt_fingerprint)


def _named_position(name: str, iv: Intervention, n_pos: int | None) -> slice:
    if name not in POSITION_NAMES:
        raise ValueError(
            f"{iv}: pos {name!r} is not a position; use an int, a slice, or one of {list(POSITION_NAMES)}."
        )
    if name == "all":
        return slice(0, None)
    if n_pos is None:
        raise ValueError(
            f"{iv}: pos {name!r} needs the prompt's length: pass tokens=tl_clt.to_tokens(model, prompt) "
            "to steering_hooks."
        )
    return slice(0, n_pos) if name == "prompt" else slice(n_pos, None)


def resolve_positions(iv: Intervention, n_prompt: int) -> Intervention:
    """A checked `iv` with negative positions counted from the end of a prompt of `n_prompt` tokens
    (an open-ended slice stays open-ended: it keeps acting on generated tokens)."""
    pos = iv.pos
    if isinstance(pos, int):
        pos = pos % n_prompt
    else:
        start = pos.start + n_prompt if pos.start is not None and pos.start < 0 else pos.start
        stop = pos.stop + n_prompt if pos.stop is not None and pos.stop < 0 else pos.stop
        pos = slice(start, stop, pos.step)
    return Intervention(iv.layer, pos, iv.feature, iv.value, iv.clt_fingerprint)


def check_interventions(interventions, clt: CrossLayerTranscoder, n_pos: int | None) -> list[Intervention]:
    """`as_interventions(interventions)`, each checked by `check_intervention`."""
    ivs = as_interventions(interventions)
    check_fingerprints(ivs, clt)
    return [check_intervention(iv, clt, n_pos) for iv in ivs]


def check_fingerprints(ivs: Iterable[Intervention], clt: CrossLayerTranscoder) -> None:
    """`check_clt` of each distinct graph fingerprint among `ivs` (one per graph, not one per feature)."""
    seen: set[int] = set()
    for iv in ivs:
        if iv.clt_fingerprint and id(iv.clt_fingerprint) not in seen:
            seen.add(id(iv.clt_fingerprint))
            check_clt(iv.clt_fingerprint, clt, f"{iv} comes from a graph that")


def _check_slice(pos: slice, iv: Intervention, n_pos: int | None) -> None:
    for name in ("start", "stop", "step"):
        x = getattr(pos, name)
        if x is not None and (not isinstance(x, int) or isinstance(x, bool)):
            raise TypeError(f"{iv}: pos.{name} must be an int or None, got {x!r}.")
    if pos.step is not None and pos.step < 1:
        raise ValueError(f"{iv}: pos slices must step forward (step >= 1), got step {pos.step}.")
    start, stop = pos.start, pos.stop
    if n_pos is not None and stop is not None:
        start = 0 if start is None else start + n_pos if start < 0 else start
        stop = stop + n_pos if stop < 0 else stop
    if stop is not None and (start or 0) >= 0 and stop >= 0 and (start or 0) >= stop:
        raise ValueError(
            f"{iv}: pos slice {pos.start}:{pos.stop} selects no position (its start is not before its "
            "stop); give start < stop, or slice(k, None) for position k onwards."
        )
    if n_pos is not None and pos.start is not None and not -n_pos <= pos.start <= n_pos:
        raise ValueError(
            f"{iv}: pos slice starts at {pos.start}, outside a prompt of {n_pos} tokens; use a "
            f"start in -{n_pos}..{n_pos} ({n_pos} = only tokens generated after the prompt)."
        )


def positions(pos: int | slice, n_pos: int) -> Int[Tensor, " n"]:
    """The absolute positions `pos` selects in a sequence of `n_pos` tokens."""
    if isinstance(pos, slice):
        return torch.tensor(range(n_pos)[pos], dtype=torch.long)
    if not -n_pos <= pos < n_pos:
        raise ValueError(f"Intervention pos {pos} is out of range: the model ran on {n_pos} tokens.")
    return torch.tensor([pos % n_pos])


def _counts_from_end(pos: int | slice) -> bool:
    if isinstance(pos, int):
        return pos < 0
    return any(x is not None and x < 0 for x in (pos.start, pos.stop))


# ------------------------------------------------------------------------ hooks
@dataclass
class LayerPlan:
    """The interventions of one layer: their distinct features and those features' decoder rows.
    With `n_batch`, the plan of `n_batch` steerings run side by side (one per batch element)."""

    layer: int
    features: Int[Tensor, " m"]
    rows: Float[Tensor, "m n_out_layers d_model"]
    # (batch element, or None: unbatched; pos; column in `features`; value), in given order
    items: list[tuple[int | None, int | slice, int, float]]
    n_batch: int | None = None

    def targets(self, n_pos: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Which ([batch,] pos, feature column) are set, and to what, for positions offset..n_pos-1 of a
        sequence of `n_pos` tokens (a KV-cache pass runs only those). Later interventions win."""
        shape = (
            (n_pos, len(self.features)) if self.n_batch is None else (self.n_batch, n_pos, len(self.features))
        )
        mask = torch.zeros(shape, dtype=torch.bool)
        value = torch.zeros(shape, dtype=torch.float64)  # exact for any model dtype
        for b, pos, col, v in self.items:
            if offset and _counts_from_end(pos):
                raise ValueError(
                    f"Intervention pos {pos} counts from the end, but these hooks were built without "
                    f"tokens= and the model runs a KV-cache pass (positions {offset}..{n_pos - 1}, as "
                    "in model.generate), so the prompt's end is unknown: build them with "
                    "tokens=tl_clt.to_tokens(model, prompt)."
                )
            at = (positions(pos, n_pos), col) if b is None else (b, positions(pos, n_pos), col)
            mask[at] = True
            value[at] = v
        return mask[..., offset:, :], value[..., offset:, :]


def plan_interventions(clt: CrossLayerTranscoder, interventions: list[Intervention]) -> list[LayerPlan]:
    """Checked interventions grouped by layer, each layer's decoder rows read once."""
    return _plans(clt, [(None, iv) for iv in interventions], None)


def plan_batch(clt: CrossLayerTranscoder, steerings: list[list[Intervention]]) -> list[LayerPlan]:
    """`plan_interventions` of several steerings at once: steering b runs as batch element b."""
    return _plans(clt, [(b, iv) for b, ivs in enumerate(steerings) for iv in ivs], len(steerings))


def _plans(
    clt: CrossLayerTranscoder, tagged: list[tuple[int | None, Intervention]], n_batch
) -> list[LayerPlan]:
    plans = []
    for layer in sorted({iv.layer for _, iv in tagged}):
        mine = [(b, iv) for b, iv in tagged if iv.layer == layer]
        features = sorted({iv.feature for _, iv in mine})
        col = {f: i for i, f in enumerate(features)}
        features_t = torch.tensor(features, dtype=torch.long)
        rows = clt.decoder_rows(layer, features_t)
        items = [(b, iv.pos, col[iv.feature], iv.value) for b, iv in mine]
        plans.append(LayerPlan(layer, features_t, rows, items, n_batch))
    return plans


class SteeringState(CrossLayerWrites):
    """The steering hooks: each planned feature writes (target - current activation) times its decoder
    rows; every MLP output from the first steered layer on gets what was written to it. Also where the
    pass sits in the sequence (`offset`, `n_pos`: read from an attention pattern)."""

    def __init__(
        self,
        model,
        clt: CrossLayerTranscoder,
        sites: Sites,
        plans: list[LayerPlan],
        clean: PromptState | None,
    ):
        super().__init__()
        self.model, self.clt, self.sites, self.plans = model, clt, sites, {p.layer: p for p in plans}
        self.first = min(self.plans, default=None)
        self.clean = clean  # set in direct-effect mode: activations and MLP outputs stay clean
        super().__init__()
        self.offset: int | None = None  # absolute position of this pass's first token
        self.n_pos: int | None = None  # tokens in the sequence so far (the pass's keys, cached ones included)

    def current(self, value: Tensor, layer: int) -> Float[Tensor, "... pos m"]:
        """Activations of the planned features: from this pass, or the clean pass (direct mode)."""
        if self.clean is not None:  # the clean inputs of this pass's positions (a tail pass: the last ones)
            x = last_positions(self.clean.mlp_in[layer], value.shape[-2]).to(value.dtype)
        else:
            x = self.sites.to_clt_input(self.model, self.clt.feature_input_hook, layer, value)
        return self.clt.encode_features(x, layer, self.plans[layer].features)

    def reset(self) -> None:
        super().reset()
        self.offset, self.n_pos = None, None

    def see_pattern(self, pattern: Float[Tensor, "batch head q_pos k_pos"], *, hook, layer: int) -> Tensor:
        """Keys include the cached past: this pass runs positions k_pos - q_pos .. k_pos - 1."""
        self.offset, self.n_pos = pattern.shape[-1] - pattern.shape[-2], pattern.shape[-1]
        return pattern

    def read_input(self, value: Tensor, *, hook, layer: int) -> Tensor:
        plan = self.plans[layer]
        current = self.current(value, layer)
        offset = self.offset or 0
        mask, target = (t.to(value.device) for t in plan.targets(offset + value.shape[-2], offset))
        delta = torch.where(mask, target.to(current.dtype) - current, 0)
        rows = plan.rows.to(value.device, value.dtype)
        self.add(layer, torch.einsum("...pm,mld->l...pd", delta, rows))
        return value

    def write_output(self, mlp_out: Tensor, *, hook, layer: int) -> Tensor:
        if self.clean is not None:
            mlp_out = (
                last_positions(self.clean.mlp_out[layer], mlp_out.shape[-2])
                .to(mlp_out.dtype)
                .expand_as(mlp_out)
            )
        delta = self.take(layer)
        return mlp_out if delta is None else mlp_out + delta.to(mlp_out.dtype)  # the model's dtype goes on


def _length_guard(n_prompt: int, frozen: bool) -> Callable:
    """A hook at block inputs and attention patterns: the pass fits hooks built for `n_prompt` tokens.

    Unfrozen, any sequence of at least the prompt's length runs (generation extends it; a KV-cache pass
    runs only the new tokens). Frozen, only the prompt itself: its held values exist for no other token.
    """

    def hook_fn(tensor: Tensor, *, hook) -> Tensor:
        q_len = tensor.shape[-2]
        n_pos = tensor.shape[-1] if tensor.ndim == 4 else q_len  # a pattern's keys include the cache
        if frozen and (n_pos != n_prompt or q_len != n_prompt):
            cached = f" ({n_pos} with the KV cache)" if q_len != n_pos else ""
            raise ValueError(
                f"These steering hooks were built for tokens= of {n_prompt} tokens with frozen attention "
                f"(freeze_attention=True or direct_effects=True), but a forward pass ran on {q_len} "
                f"tokens{cached}: the frozen values exist only for the prompt's tokens. Run them on those; "
                "to steer inside model.generate, build them with freeze_attention=False (as "
                "tl_clt.generate does)."
            )
        if n_pos < n_prompt:
            raise ValueError(
                f"These steering hooks were built for tokens= of {n_prompt} tokens, but the model "
                f"ran on {n_pos}. Build them with the tokens you run (tl_clt.to_tokens(model, prompt) "
                "puts the '<|endoftext|>' sink in front)."
            )
        return tensor

    return hook_fn


def build_steering_hooks(
    model,
    clt: CrossLayerTranscoder,
    sites: Sites,
    plans: list[LayerPlan],
    tokens: Int[Tensor, " pos"] | None,
    *,
    freeze_attention: bool,
    direct_effects: bool,
    clean: PromptState | None = None,
    tail: bool = False,
) -> HookList:
    """The hooks of `steering_hooks` from checked inputs: `sites` from `check_compatible`, `plans` from
    `plan_interventions` (positions resolved against `tokens` if given), `tokens` from `to_tokens`
    (needed when freezing). `clean`: `clean_pass` of `tokens` if already made (one pass saved per
    call when many steerings share a prompt). `tail`: the pass runs only the prompt's last positions,
    on a KV cache of the others (`Steerer.last`): no length guards. Reads no decoder rows."""
    frozen = freeze_attention or direct_effects
    st = SteeringState(model, clt, sites, plans, None)
    first_out = 0 if direct_effects else st.first
    write_layers = range(first_out, clt.n_layers) if first_out is not None else []
    # pass-start hooks first (nothing kept between forward passes), then reads and writes
    hooks: HookList = st.hooks(sites, clt, [plan.layer for plan in plans], write_layers)
    pattern = sites.patterns[0]  # [batch, head, q_pos, k_pos]: its shape tells where the pass sits
    if tokens is not None and not tail:
        guard = _length_guard(len(tokens), frozen)
        at = [sites.resid_pre] if frozen else []  # frozen scales fire before the first pattern
        hooks += [(name.format(layer=layer), guard) for layer in range(clt.n_layers) for name in at]
        hooks += [(pattern.format(layer=layer), guard) for layer in sorted({0, *st.plans})]
    hooks += [(pattern.format(layer=layer), layer_hook(st.see_pattern, layer)) for layer in st.plans]
    if frozen:
        state = clean
        if state is None:
            with preserve(model), torch.no_grad():
                state = clean_pass(model, clt, tokens, sites)
        hooks += freeze_hooks(state.everything() if direct_effects else state.patterns())
        st.clean = state if direct_effects else None
    return hooks


def _check_freeze_tokens(tokens, freeze_attention: bool, direct_effects: bool) -> None:
    if (freeze_attention or direct_effects) and tokens is None:
        mode = "direct_effects=True" if direct_effects else "freeze_attention=True"
        raise ValueError(
            f"{mode} needs tokens= (the unsteered prompt) to compute the frozen values; pass "
            "tokens=tl_clt.to_tokens(model, prompt), or use freeze_attention=False."
        )


def steering_hooks(
    model,
    clt: CrossLayerTranscoder,
    interventions: Intervention | Iterable[Intervention],
    tokens: Prompt | None = None,
    *,
    freeze_attention: bool = True,
    direct_effects: bool = False,
) -> HookList:
    """TL forward hooks `[(hook_name, fn), ...]` that apply `interventions` (see module docstring).

    `tokens`: the prompt you will run (`tl_clt.to_tokens` convention). Needed for
    `freeze_attention` / `direct_effects` (a clean pass over it gives the frozen values), for negative
    positions inside `model.generate` and for pos "prompt" / "generated"; without it, negative
    positions count from the end of whatever sequence a forward pass runs on.
    `direct_effects=True` implies frozen attention. Use with `model.hooks(fwd_hooks=...)`; to steer
    the replacement model, put these after `replacement_hooks(...)` (both write `hook_mlp_out`).

    Inside TL's `model.generate(tokens[None], ...)` (`freeze_attention=False`; with or without
    `use_past_kv_cache`) the tokens equal `tl_clt.generate`'s with the same interventions. Unfrozen
    hooks with `tokens=` run on any sequence that starts with the prompt (the prompt plus a
    continuation); frozen ones only on the prompt.
    """
    sites = check_compatible(model, clt)
    _check_freeze_tokens(tokens, freeze_attention, direct_effects)
    toks = None if tokens is None else to_tokens(model, tokens)
    n_pos = None if toks is None else len(toks)
    ivs = check_interventions(interventions, clt, n_pos)
    plans = plan_interventions(clt, ivs if n_pos is None else [resolve_positions(iv, n_pos) for iv in ivs])
    hooks = build_steering_hooks(
        model, clt, sites, plans, toks, freeze_attention=freeze_attention, direct_effects=direct_effects
    )
    refuse_saes_at(model, [name for name, _ in hooks])
    return hooks


def run_steered(
    model,
    clt: CrossLayerTranscoder,
    sites: Sites,
    plans: list[LayerPlan],
    tokens: Int[Tensor, " pos"],
    *,
    freeze_attention: bool,
    direct_effects: bool = False,
    clean: PromptState | None = None,
    n_batch: int | None = None,
    prefix=None,
) -> Float[Tensor, "*batch pos d_vocab"]:
    """Logits of `tokens` with planned interventions applied (inputs checked by the caller; `clean`:
    see `build_steering_hooks`). `n_batch`: plans from `plan_batch` of that many steerings; logits
    [n_batch, pos, d_vocab], one per steering. `prefix`: the clean prompt's keys and values before a
    position (`Steerer._prefix`, a `TLPrefix` or `HFPrefix`; no plan touches those positions): only the
    positions after it run, and only their logits come back."""
    b = n_batch or 1
    start = 0 if prefix is None else prefix.start
    with preserve(model), torch.no_grad():
        hooks = build_steering_hooks(
            model, clt, sites, plans, tokens, freeze_attention=freeze_attention,
            direct_effects=direct_effects, clean=clean, tail=prefix is not None,
        )  # fmt: skip
        with added_hooks(model, hooks):
            if prefix is None:
                logits = model(tokens[None].expand(b, -1))
            else:
                logits = prefix.run(model, tokens[None, start:].expand(b, -1))
    return logits if n_batch is not None else logits[0]


def steer(
    model,
    clt: CrossLayerTranscoder,
    prompt: Prompt,
    interventions: Intervention | Iterable[Intervention],
    *,
    freeze_attention: bool = True,
    direct_effects: bool = False,
) -> Float[Tensor, "pos d_vocab"]:
    """Logits of `prompt` (sink token at 0 included) with `interventions` applied, as by
    `steering_hooks`."""
    return Steerer(model, clt, prompt, freeze_attention=freeze_attention, direct_effects=direct_effects)(
        interventions
    )


def steer_many(
    model,
    clt: CrossLayerTranscoder,
    prompt: Prompt,
    steerings: Iterable[Intervention | Iterable[Intervention]],
    *,
    batch_size: int = 16,
    freeze_attention: bool = True,
    direct_effects: bool = False,
) -> Float[Tensor, "n d_vocab"]:
    """Next-token logits (the prompt's last position) under each of `steerings`, each what `steer` takes:
    row i equals `steer(model, clt, prompt, steerings[i], ...)[-1]` up to float rounding. `batch_size`
    steerings run side by side in one forward pass (the prompt repeated along the batch), and one clean
    pass gives the frozen values of all (a pass holds batch_size x pos x d_vocab logits). A pass runs
    only the positions from the first one its steerings touch, on a KV cache of the clean prompt before
    it (steerings on the last token: one position per copy; `tl_clt.prefix_cache`). For
    sweeps: a group at several factors, each group ablated in turn. Every steering is checked before any
    pass runs."""
    return Steerer(model, clt, prompt, freeze_attention=freeze_attention, direct_effects=direct_effects).last(
        steerings, batch_size=batch_size
    )


class Steerer:
    """`steer` of one prompt as a function of the interventions, for many steerings of it: model, CLT and
    prompt are checked once, and the clean pass that gives the frozen values is made at the first call
    (after its interventions are checked) and kept. The model must not change between calls.

    `Steerer(...)(interventions)`: logits [pos, d_vocab], as `steer`. `.last(steerings, batch_size=...)`:
    the last position's logits [len(steerings), d_vocab] of many steerings, `batch_size` of them side
    by side in each forward pass (the prompt repeated along the batch), each pass over the positions from
    the first one its steerings touch only (`tail_passes`; `tl_clt.prefix_cache`)."""

    def __init__(
        self, model, clt: CrossLayerTranscoder, prompt: Prompt, *, freeze_attention: bool = True,
        direct_effects: bool = False,
    ):  # fmt: skip
        self.model, self.clt = model, clt
        self.sites = check_compatible(model, clt)
        self.tokens = to_tokens(model, prompt)
        self.freeze_attention, self.direct_effects = freeze_attention, direct_effects
        self._clean: PromptState | None = None
        self._kv: TLPrefix | None = None  # the whole clean prompt's, for tail passes (HookedTransformer)
        self._hf: dict[int, HFPrefix | None] = {}  # a bridge's Hugging Face caches, per start
        # `last` runs only the positions from the first one a batch's steerings touch
        self.tail_passes = True

    def _frozen(self) -> bool:
        return self.freeze_attention or self.direct_effects

    def _clean_state(self, kv_cache=None) -> None:
        """The clean pass giving the frozen values (once), filling `kv_cache` if given."""
        with preserve(self.model), torch.no_grad():
            self._clean = clean_pass(self.model, self.clt, self.tokens, self.sites, kv_cache)

    def _run(self, plans: list[LayerPlan], n_batch: int | None, prefix=None) -> Tensor:
        if self._frozen() and self._clean is None:
            self._clean_state()
        return run_steered(
            self.model, self.clt, self.sites, plans, self.tokens, freeze_attention=self.freeze_attention,
            direct_effects=self.direct_effects, clean=self._clean, n_batch=n_batch, prefix=prefix,
        )  # fmt: skip

    def _prefix(self, steerings: list[list[Intervention]]) -> TLPrefix | HFPrefix | None:
        """The clean prompt's keys and values before the first position any of `steerings` touches (those
        positions are the clean prompt's in every steering: causal attention), or None where that is
        position 0 or no cache can be had. HookedTransformer: a frozen TransformerLens KV cache from the
        clean pass (frozen modes) or one plain pass, serving every start as views. TransformerBridge: a
        Hugging Face cache from one plain pass over the prefix, per start (`HFPrefix.fill`; where it
        does not fill, whole passes from then on)."""
        n = len(self.tokens)
        first = [iv.pos if isinstance(iv.pos, int) else iv.pos.start or 0 for ivs in steerings for iv in ivs]
        start = min(min(first, default=n - 1), n - 1)
        if start < 1 or not self.tail_passes:
            return None
        if self.sites.backend == TRANSFORMER_BRIDGE:
            if start not in self._hf:
                with preserve(self.model):
                    self._hf[start] = HFPrefix.fill(self.model, self.tokens, start)
                self.tail_passes = self._hf[start] is not None
            return self._hf[start]
        if self.sites.backend != HOOKED_TRANSFORMER:
            return None
        if self._kv is None:
            if self._frozen() and self._clean is None:
                cache = TLPrefix.new_cache(self.model)
                self._clean_state(cache)  # the clean pass the frozen values need fills it too
                self._kv = TLPrefix.frozen(cache)
            else:
                with preserve(self.model):
                    self._kv = TLPrefix.fill(self.model, self.tokens)
        return self._kv.head(start)

    def __call__(self, interventions: Intervention | Iterable[Intervention]) -> Float[Tensor, "pos d_vocab"]:
        ivs = as_interventions(interventions)
        check_fingerprints(ivs, self.clt)
        return self._run(plan_interventions(self.clt, self._checked(ivs)), None)

    def last(
        self, steerings: Iterable[Intervention | Iterable[Intervention]], *, batch_size: int = 16
    ) -> Float[Tensor, "n d_vocab"]:
        """Last-position logits of each steering in `steerings`, `batch_size` per forward pass (equal to
        `self(s)[-1]` for each, up to float rounding)."""
        batch_size = as_int(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size is the steerings run per forward pass (>= 1), got {batch_size}.")
        given = [as_interventions(s) for s in steerings]
        check_fingerprints((iv for ivs in given for iv in ivs), self.clt)
        checked = [self._checked(ivs) for ivs in given]  # all refused before any pass runs
        out = []
        for i in range(0, len(checked), batch_size):
            chunk = checked[i : i + batch_size]
            out.append(self._run(plan_batch(self.clt, chunk), len(chunk), self._prefix(chunk))[:, -1])
        if not out:
            return torch.empty(0, self.model.cfg.d_vocab)
        return torch.cat(out)

    def _checked(self, ivs: list[Intervention]) -> list[Intervention]:
        """`ivs` checked (their fingerprints already were) and resolved against the prompt."""
        n_pos = len(self.tokens)
        return [resolve_positions(check_intervention(iv, self.clt, n_pos), n_pos) for iv in ivs]


# ------------------------------------------------------------------------ scale / ablate
def _activation_lookup(source: AttributionGraph | Tensor) -> tuple[dict[tuple, float], int]:
    """{(layer, pos, feature): activation} of the active features, and the number of positions."""
    if all(hasattr(source, a) for a in ("active_features", "activation_values", "n_pos")):  # a graph
        keys, values, n_pos = source.active_features, source.activation_values, source.n_pos
    elif isinstance(source, Tensor):
        if source.ndim != 3:
            raise ValueError(
                "Expected activations [n_layers, pos, n_features] (tl_clt.feature_activations), "
                f"got shape {tuple(source.shape)}."
            )
        acts = source.coalesce() if source.is_sparse else source.to_sparse().coalesce()
        keys, values, n_pos = acts.indices().T, acts.values(), source.shape[1]
    else:
        raise TypeError(
            "scale() reads current activations from an AttributionGraph or from "
            f"tl_clt.feature_activations(...), got {type(source).__name__}."
        )
    return dict(zip(map(tuple, keys.tolist()), values.tolist(), strict=True)), n_pos


def scale(
    nodes: NodeLike | Iterable[NodeLike], factor: float, source: AttributionGraph | Tensor
) -> list[Intervention]:
    """Interventions setting each feature to `factor` times its activation in `source`.

    `nodes`: feature node ids ("F:12:5:847") or (layer, pos, feature) keys. `source`: the graph
    (activations of its prompt) or `tl_clt.feature_activations(...)` of the unsteered prompt.
    """
    factor = as_number(factor, "factor")
    lookup, n_pos = _activation_lookup(source)
    fingerprint = getattr(source, "meta", {}).get("clt_fingerprint")
    out = []
    for node in as_node_list(nodes):
        layer, pos, feature = feature_key(node)
        key = (layer, pos % n_pos if -n_pos <= pos < 0 else pos, feature)
        if key not in lookup:
            raise KeyError(
                f"Feature (layer={layer}, pos={pos}, feature={feature}) is not active in this "
                "prompt (activation 0), so scaling it changes nothing. Check the key, or set an "
                "absolute activation with Intervention(layer, pos, feature, value)."
            )
        out.append(Intervention(layer, key[1], feature, factor * lookup[key], fingerprint))
    return out


def ablate(nodes: NodeLike | Iterable[NodeLike]) -> list[Intervention]:
    """Interventions setting each feature (node ids or (layer, pos, feature) keys) to 0."""
    keys = [feature_key(node) for node in as_node_list(nodes)]
    return [Intervention(layer, pos, feature, 0.0) for layer, pos, feature in keys]


__all__ = ["Intervention", "ablate", "scale", "steer", "steer_many", "steering_hooks"]
