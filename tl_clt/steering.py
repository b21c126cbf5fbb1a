"""Steering CLT features as TransformerLens hook functions.

An `Intervention(layer, pos, feature, value)` sets a feature's activation to `value`. At its layer
the hooks read the feature's current activation `a` from the CLT input *in this forward pass* and
add `(value - a) * W_dec_{layer->l}[feature]` to `blocks.{l}.hook_mlp_out` of that layer and every
later layer l, at the chosen positions. The real MLPs still run, so later features respond.
- `freeze_attention=True`: attention patterns are held at the unsteered prompt's values;
- `direct_effects=True`: attention patterns, every RMSNorm scale and every MLP output are held at
  the unsteered prompt's values (so `a` is the clean activation), and only the steering deltas are
  added. The model is then the graph's frozen linear model: ablating a feature changes each
  de-meaned logit by minus the graph's edge from that feature to the logit.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from tl_clt.attribution import PromptState, clean_pass, freeze_hooks
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.graph import AttributionGraph
from tl_clt.hooks import (
    HookList,
    check_compatible,
    clt_input,
    input_hook_name,
    output_hook_name,
    preserve,
)
from tl_clt.nodes import NodeLike, as_node_list, feature_key
from tl_clt.prompts import Prompt, to_tokens

Position = int | slice


@dataclass(frozen=True)
class Intervention:
    """Set feature `feature` of layer `layer` at position(s) `pos` to activation `value`.

    `value` is the new absolute activation (0 ablates). `pos`: an int, a negative int (from the end)
    or a slice (`slice(k, None)` is open-ended: in `generate` it keeps acting on new tokens).
    """

    layer: int
    pos: Position
    feature: int
    value: float

    def __iter__(self) -> Iterator:
        return iter((self.layer, self.pos, self.feature, self.value))


# ------------------------------------------------------------------------ validation
def as_interventions(interventions) -> list[Intervention]:
    """An Intervention, or an iterable of Interventions / (layer, pos, feature, value) tuples."""
    if isinstance(interventions, Intervention):
        return [interventions]
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
    if isinstance(x, Tensor) and x.ndim == 0 and not x.is_floating_point():
        x = int(x)
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"{iv}: {what} must be an int, got {type(x).__name__}.")
    return x


def check_intervention(iv: Intervention, clt: CrossLayerTranscoder, n_pos: int | None = None) -> Intervention:
    """`iv` with plain-Python fields, or a clear error naming what is wrong and how to fix it."""
    layer = _int(iv.layer, "layer", iv)
    feature = _int(iv.feature, "feature", iv)
    if not 0 <= layer < clt.n_layers:
        raise ValueError(f"{iv}: layer {layer} is out of range; the CLT has layers 0..{clt.n_layers - 1}.")
    if not 0 <= feature < clt.n_features:
        raise ValueError(
            f"{iv}: feature {feature} is out of range; layer {layer} has features 0..{clt.n_features - 1}."
        )
    try:
        value = float(iv.value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{iv}: value must be a number (the new activation), got {iv.value!r}.") from err
    if not math.isfinite(value):
        raise ValueError(
            f"{iv}: value is {value}; give the feature's new activation as a finite number "
            "(0 ablates, k * activation scales)."
        )
    pos = iv.pos if isinstance(iv.pos, slice) else _int(iv.pos, "pos", iv)
    if isinstance(pos, slice):
        _check_slice(pos, iv, n_pos)
    elif n_pos is not None and not -n_pos <= pos < n_pos:
        raise ValueError(
            f"{iv}: pos {pos} is out of range for a prompt of {n_pos} tokens (with the "
            f"'<|endoftext|>' sink at 0); use 0..{n_pos - 1} or -{n_pos}..-1."
        )
    return Intervention(layer, pos, feature, value)


def _check_slice(pos: slice, iv: Intervention, n_pos: int | None) -> None:
    for name in ("start", "stop", "step"):
        x = getattr(pos, name)
        if x is not None and (not isinstance(x, int) or isinstance(x, bool)):
            raise TypeError(f"{iv}: pos.{name} must be an int or None, got {x!r}.")
    if pos.step is not None and pos.step < 1:
        raise ValueError(f"{iv}: pos slices must step forward (step >= 1), got step {pos.step}.")
    if n_pos is not None and pos.start is not None and not -n_pos <= pos.start <= n_pos:
        raise ValueError(
            f"{iv}: pos slice starts at {pos.start}, outside a prompt of {n_pos} tokens; use a "
            f"start in -{n_pos}..{n_pos} ({n_pos} = only tokens generated after the prompt)."
        )


def positions(pos: Position, n_pos: int) -> Int[Tensor, " n"]:
    """The absolute positions `pos` selects in a sequence of `n_pos` tokens."""
    if isinstance(pos, slice):
        return torch.tensor(range(n_pos)[pos], dtype=torch.long)
    if not -n_pos <= pos < n_pos:
        raise ValueError(f"Intervention pos {pos} is out of range: the model ran on {n_pos} tokens.")
    return torch.tensor([pos % n_pos])


# ------------------------------------------------------------------------ hooks
@dataclass
class _LayerPlan:
    """The interventions of one layer: their distinct features and those features' decoder rows."""

    layer: int
    features: Int[Tensor, " m"]
    rows: Float[Tensor, "m n_out_layers d_model"]
    items: list[tuple[Position, int, float]]  # (pos, column in `features`, value), in given order

    def targets(self, n_pos: int) -> tuple[Tensor, Tensor]:
        """Which (pos, feature column) are set, and to what. Later interventions win."""
        mask = torch.zeros(n_pos, len(self.features), dtype=torch.bool)
        value = torch.zeros(n_pos, len(self.features), dtype=torch.float64)  # exact for any model dtype
        for pos, col, v in self.items:
            p = positions(pos, n_pos)
            mask[p, col] = True
            value[p, col] = v
        return mask, value


def _plans(clt: CrossLayerTranscoder, interventions: list[Intervention]) -> list[_LayerPlan]:
    plans = []
    for layer in sorted({iv.layer for iv in interventions}):
        mine = [iv for iv in interventions if iv.layer == layer]
        features = sorted({iv.feature for iv in mine})
        col = {f: i for i, f in enumerate(features)}
        features_t = torch.tensor(features, dtype=torch.long)
        rows = clt.decoder_rows(layer, features_t)
        plans.append(
            _LayerPlan(layer, features_t, rows, [(iv.pos, col[iv.feature], iv.value) for iv in mine])
        )
    return plans


class _SteeringState:
    """Per-forward-pass scratch space shared by the steering hooks."""

    def __init__(
        self,
        model: HookedTransformer,
        clt: CrossLayerTranscoder,
        plans: list[_LayerPlan],
        clean: PromptState | None,
    ):
        self.model, self.clt, self.plans = model, clt, {p.layer: p for p in plans}
        self.first = min(self.plans, default=None)
        self.clean = clean  # set in direct-effect mode: activations and MLP outputs stay clean
        self.pending: dict[int, Tensor] = {}

    def current(self, value: Tensor, layer: int) -> Float[Tensor, "... pos m"]:
        """Activations of the planned features: from this pass, or the clean pass (direct mode)."""
        features = self.plans[layer].features.to(value.device)
        if self.clean is not None:
            x = self.clean.mlp_in[layer].to(value.dtype)
        else:
            x = clt_input(self.model, self.clt, layer, value)
        return self.clt.encode(x, layer)[..., features]

    def read_input(self, value: Tensor, *, hook: HookPoint, layer: int) -> Tensor:
        if layer == self.first:
            self.pending = {}
        plan = self.plans[layer]
        current = self.current(value, layer)
        mask, target = (t.to(value.device) for t in plan.targets(value.shape[-2]))
        delta = torch.where(mask, target.to(current.dtype) - current, 0)
        rows = plan.rows.to(value.device, value.dtype)
        contrib = torch.einsum("...pm,mld->l...pd", delta, rows)
        for i, target_layer in enumerate(range(layer, self.clt.n_layers)):
            prev = self.pending.get(target_layer)
            self.pending[target_layer] = contrib[i] if prev is None else prev + contrib[i]
        return value

    def write_output(self, mlp_out: Tensor, *, hook: HookPoint, layer: int) -> Tensor:
        if self.clean is not None:
            mlp_out = self.clean.mlp_out[layer].to(mlp_out.dtype).expand_as(mlp_out)
        delta = self.pending.pop(layer, None)
        return mlp_out if delta is None else mlp_out + delta


def _bind(fn: Callable, layer: int) -> Callable:
    def hook_fn(tensor: Tensor, *, hook: HookPoint) -> Tensor:
        return fn(tensor, hook=hook, layer=layer)

    return hook_fn


def _length_guard(n_pos: int) -> Callable:
    def hook_fn(embed: Float[Tensor, "batch pos d_model"], *, hook: HookPoint) -> Tensor:
        if embed.shape[-2] != n_pos:
            raise ValueError(
                f"These steering hooks were built for tokens= of {n_pos} tokens, but the model "
                f"ran on {embed.shape[-2]}. Build them with the tokens you run "
                "(tl_clt.to_tokens(model, prompt) puts the '<|endoftext|>' sink in front)."
            )
        return embed

    return hook_fn


def _frozen_values(state: PromptState, direct_effects: bool) -> dict[str, Tensor]:
    if direct_effects:
        return {**state.frozen, "ln_final.hook_scale": state.final_scale[None]}
    return {n: t for n, t in state.frozen.items() if n.endswith("attn.hook_pattern")}


def steering_hooks(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    interventions: Intervention | Iterable[Intervention],
    tokens: Prompt | None = None,
    freeze_attention: bool = True,
    direct_effects: bool = False,
) -> HookList:
    """TL forward hooks `[(hook_name, fn), ...]` that apply `interventions` (see module docstring).

    `tokens`: the prompt you will run (`tl_clt.to_tokens` convention). Needed for
    `freeze_attention` / `direct_effects` (a clean pass over it gives the frozen values); optional
    otherwise, where positions are resolved against whatever sequence the model runs on.
    `direct_effects=True` implies frozen attention. Use with `model.hooks(fwd_hooks=...)`; to steer
    the replacement model, put these after `replacement_hooks(...)` (both write `hook_mlp_out`).
    """
    check_compatible(model, clt)
    if (freeze_attention or direct_effects) and tokens is None:
        mode = "direct_effects=True" if direct_effects else "freeze_attention=True"
        raise ValueError(
            f"{mode} needs tokens= (the unsteered prompt) to compute the frozen values; pass "
            "tokens=tl_clt.to_tokens(model, prompt), or use freeze_attention=False."
        )
    toks = None if tokens is None else to_tokens(model, tokens)
    n_pos = None if toks is None else len(toks)
    ivs = [check_intervention(iv, clt, n_pos) for iv in as_interventions(interventions)]
    plans = _plans(clt, ivs)
    hooks: HookList = [] if toks is None else [("hook_embed", _length_guard(len(toks)))]
    clean = None
    if freeze_attention or direct_effects:
        with preserve(model), torch.no_grad():
            state = clean_pass(model, clt, toks)
        hooks += freeze_hooks(_frozen_values(state, direct_effects))
        clean = state if direct_effects else None
    st = _SteeringState(model, clt, plans, clean)
    for plan in plans:
        hooks.append((input_hook_name(clt, plan.layer), _bind(st.read_input, plan.layer)))
    first_out = 0 if direct_effects else st.first
    if first_out is not None:
        for layer in range(first_out, clt.n_layers):
            hooks.append((output_hook_name(layer), _bind(st.write_output, layer)))
    return hooks


def steer(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    prompt: Prompt,
    interventions: Intervention | Iterable[Intervention],
    freeze_attention: bool = True,
    direct_effects: bool = False,
) -> Float[Tensor, "pos d_vocab"]:
    """Logits of `prompt` (sink token at 0 included) with `interventions` applied, as by
    `steering_hooks`."""
    check_compatible(model, clt)
    tokens = to_tokens(model, prompt)
    with preserve(model), torch.no_grad():
        hooks = steering_hooks(model, clt, interventions, tokens, freeze_attention, direct_effects)
        with model.hooks(fwd_hooks=hooks):
            return model(tokens[None])[0]


# ------------------------------------------------------------------------ scale / ablate
def _activation_lookup(source: AttributionGraph | Tensor) -> tuple[dict[tuple, float], int]:
    """{(layer, pos, feature): activation} of the active features, and the number of positions."""
    if isinstance(source, AttributionGraph):
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
    lookup, n_pos = _activation_lookup(source)
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
        out.append(Intervention(layer, key[1], feature, float(factor) * lookup[key]))
    return out


def ablate(nodes: NodeLike | Iterable[NodeLike]) -> list[Intervention]:
    """Interventions setting each feature (node ids or (layer, pos, feature) keys) to 0."""
    keys = [feature_key(node) for node in as_node_list(nodes)]
    return [Intervention(layer, pos, feature, 0.0) for layer, pos, feature in keys]


# ------------------------------------------------------------------------ generation
def _absolute(iv: Intervention, n_prompt: int) -> Intervention:
    """Negative positions resolved against the prompt; an open-ended slice stays open-ended."""
    pos = iv.pos
    if isinstance(pos, int):
        pos = pos % n_prompt
    else:
        start = pos.start + n_prompt if pos.start is not None and pos.start < 0 else pos.start
        stop = pos.stop + n_prompt if pos.stop is not None and pos.stop < 0 else pos.stop
        pos = slice(start, stop, pos.step)
    return Intervention(iv.layer, pos, iv.feature, iv.value)


def _sample(
    logits: Float[Tensor, " d_vocab"],
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None:
        cut = logits.topk(min(top_k, len(logits))).values[-1]
        logits = logits.masked_fill(logits < cut, -math.inf)
    probs = torch.softmax(logits, -1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    prompt: Prompt,
    interventions: Intervention | Iterable[Intervention],
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int | None = None,
    freeze_attention: bool = False,
    stop_at_eos: bool = True,
    seed: int | None = None,
    return_type: Literal["input", "str", "tokens"] = "input",
) -> str | Int[Tensor, " pos"]:
    """Sample `max_new_tokens` tokens with `interventions` applied (greedy for temperature=0).

    Each step is `steer(model, clt, tokens_so_far, interventions, freeze_attention)` on the full
    sequence (no KV cache). Positions refer to the full sequence: ints and negative slice bounds are
    resolved against the prompt once (pos=-1 is the prompt's last token), and an open-ended slice
    `slice(k, None)` keeps acting on every generated token. `freeze_attention` defaults to False
    here: with it, each step freezes patterns to an unsteered pass over the sequence so far.
    Returns the text (without the added sink token) for a str prompt or return_type="str", else
    the full token tensor (sink included).
    """
    check_compatible(model, clt)
    for name, x in (("max_new_tokens", max_new_tokens), ("top_k", top_k)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, int)):
            raise TypeError(f"{name} must be an int, got {x!r} ({type(x).__name__}).")
    if max_new_tokens < 0 or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(
            f"max_new_tokens and temperature must be finite and >= 0, got {max_new_tokens}, {temperature}."
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}.")
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}.")
    tokens = to_tokens(model, prompt)
    n_prompt = len(tokens)
    ivs = [
        _absolute(check_intervention(iv, clt, n_prompt), n_prompt) for iv in as_interventions(interventions)
    ]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    for _ in range(max_new_tokens):
        logits = steer(model, clt, tokens, ivs, freeze_attention=freeze_attention)[-1]
        nxt = _sample(logits, temperature, top_k, generator)
        tokens = torch.cat([tokens, tokens.new_tensor([nxt])])
        if stop_at_eos and nxt == eos:
            break
    if return_type == "tokens" or (return_type == "input" and not isinstance(prompt, str)):
        return tokens
    start = n_prompt - _n_raw_tokens(model, prompt)
    return model.tokenizer.decode(tokens[start:].tolist())


def _n_raw_tokens(model: HookedTransformer, prompt: Prompt) -> int:
    if isinstance(prompt, str):
        return len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return torch.as_tensor(prompt).numel()


# ------------------------------------------------------------------------ before/after table
class TokenProb(NamedTuple):
    token: str
    token_id: int
    prob: float  # in this column's distribution
    other_prob: float  # the same token in the other distribution


@dataclass
class PredictionTable:
    """Top-k next tokens before and after steering. Prints as text; renders as HTML in notebooks."""

    before: list[TokenProb]
    after: list[TokenProb]

    def rows(self) -> list[tuple[int, TokenProb, TokenProb]]:
        return [(i + 1, b, a) for i, (b, a) in enumerate(zip(self.before, self.after, strict=True))]

    def __str__(self) -> str:
        cells = [
            (
                str(r),
                repr(b.token),
                f"{b.prob:.3f}",
                f"{b.other_prob:.3f}",
                repr(a.token),
                f"{a.prob:.3f}",
                f"{a.other_prob:.3f}",
            )
            for r, b, a in self.rows()
        ]
        head = ("#", "before", "p", "p after", "after", "p", "p before")
        widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
        lines = [
            "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
            for line in [head, *cells]
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("#", "before", "p", "p after", "after", "p", "p before"))
        body = "".join(
            f"<tr><td>{r}</td><td><code>{html.escape(repr(b.token))}</code></td>"
            f"<td>{b.prob:.3f}</td><td>{b.other_prob:.3f}</td>"
            f"<td><code>{html.escape(repr(a.token))}</code></td>"
            f"<td>{a.prob:.3f}</td><td>{a.other_prob:.3f}</td></tr>"
            for r, b, a in self.rows()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _next_token_logits(logits: Tensor, pos: int) -> Float[Tensor, " d_vocab"]:
    if logits.ndim == 3:
        if logits.shape[0] != 1:
            raise ValueError(f"Expected logits of one prompt, got batch size {logits.shape[0]}.")
        logits = logits[0]
    if logits.ndim == 2 and not -len(logits) <= pos < len(logits):
        raise IndexError(f"pos {pos} is out of range for logits of {len(logits)} positions.")
    return logits[pos] if logits.ndim == 2 else logits


def prediction_table(
    model: HookedTransformer,
    before_logits: Tensor,
    after_logits: Tensor,
    k: int = 5,
    pos: int = -1,
) -> PredictionTable:
    """Top-k next tokens (at `pos`) with probabilities, before and after steering.

    Logits: [d_vocab], [pos, d_vocab] or [1, pos, d_vocab]. Each entry also shows the same token's
    probability in the other distribution.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1 (tokens per column), got {k!r}.")
    p_before, p_after = (
        torch.softmax(_next_token_logits(x, pos).float(), -1) for x in (before_logits, after_logits)
    )
    if p_before.shape != p_after.shape:
        raise ValueError(f"before/after logits differ in shape: {p_before.shape} vs {p_after.shape}.")

    def column(p: Tensor, other: Tensor) -> list[TokenProb]:
        top = p.topk(min(k, len(p)))
        return [
            TokenProb(model.tokenizer.decode([i]), i, float(p[i]), float(other[i]))
            for i in top.indices.tolist()
        ]

    return PredictionTable(column(p_before, p_after), column(p_after, p_before))


__all__ = [
    "Intervention",
    "PredictionTable",
    "TokenProb",
    "ablate",
    "generate",
    "prediction_table",
    "scale",
    "steer",
    "steering_hooks",
]
