"""Sites: every place tl_clt touches a model, per backend and architecture, in one table.

The algorithms (clean pass, frozen model, attribution, replacement, steering) never spell a hook name or
a weight path themselves: they ask the model's `Sites`. `sites_for(model)` finds them in `REGISTRY`,
keyed by (backend, architecture), and refuses a model that is not there with `UnsupportedModelError`.

Adding an architecture or a backend is one more registry entry: a `Sites` whose hook-name templates
(`{layer}` is filled in) and weight paths (dotted attribute paths from the model, `{layer}` filled in)
say where that model keeps each thing, plus `requires`, the cfg values the algorithms' exactness relies on.
"""

from __future__ import annotations

import dataclasses
import operator
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float
from torch import Tensor

HOOKED_TRANSFORMER = "HookedTransformer"
TRANSFORMER_BRIDGE = "TransformerBridge"
QWEN3 = "Qwen3ForCausalLM"


class UnsupportedModelError(TypeError, ValueError):
    """The model's backend or architecture is not in the sites registry (or its cfg contradicts it)."""


@dataclass(frozen=True)
class CLTInput:
    """Where a CLT reads its input: a hook point, and whether the ln2 weight is still to be applied."""

    hook: str  # template with {layer}
    times_ln2_weight: bool
    normalized: bool = True  # the hook's value is resid_mid / ln2's scale (False: resid_mid itself)


@dataclass(frozen=True)
class Sites:
    """Hook names and weights of one backend + architecture (templates take `layer=`).

    The residual stream is linear in the embedding, the MLP outputs and the error terms once every norm
    scale and attention pattern in `frozen_scales` / `patterns` (and `final_scale`) is held fixed.
    """

    backend: str
    architecture: str
    embed: str  # token embedding: the residual stream's first term
    mlp_out: str  # MLP output of block {layer} (what the CLT reconstructs)
    clt_inputs: Mapping[str, CLTInput]  # the CLT config's feature_input_hook -> where to read it
    frozen_scales: tuple[str, ...]  # per-block norm scales held at clean values in the frozen model
    patterns: tuple[str, ...]  # per-block attention patterns held at clean values
    final_scale: str  # the final norm's scale
    final_norm_weight: str  # weight path of the final norm
    ln2_weight: str  # weight path of block {layer}'s pre-MLP norm
    W_U: str  # weight path of the unembedding [d_model, d_vocab]
    b_U: str  # weight path of the unembedding bias [d_vocab]
    sink_token: str  # prepended when a prompt does not start with a special token
    forward_to: Callable[[Any, Tensor, int], Tensor]  # (model, tokens [1, pos], n) -> resid before block n
    requires: Mapping[str, Any] = field(default_factory=dict)  # cfg attribute -> required value
    resid_pre: str = "blocks.{layer}.hook_resid_pre"  # block {layer}'s input: where a forward pass enters it
    resid_post: str = "blocks.{layer}.hook_resid_post"  # block {layer}'s output
    W_V: str = "blocks.{layer}.attn.W_V"  # weight path [n_heads, d_model, d_head] (kv heads expanded)
    W_O: str = "blocks.{layer}.attn.W_O"  # weight path [n_heads, d_head, d_model]
    ln1_weight: str = "blocks.{layer}.ln1.w"  # weight path of block {layer}'s pre-attention norm
    # frozen values the transposed engine (tl_clt.transpose) reads per block (each one of frozen_scales /
    # patterns): ln1's and ln2's scale [batch, pos, 1], the attention pattern [batch, head, query, key]
    ln1_scale: str = "blocks.{layer}.ln1.hook_scale"
    ln2_scale: str = "blocks.{layer}.ln2.hook_scale"
    pattern: str = "blocks.{layer}.attn.hook_pattern"
    refuse: Callable[[Any], str | None] = lambda model: None  # why this model is unusable, or None

    # ---------------------------------------------------------------- hook names
    def block_hooks(self, templates: tuple[str, ...], n_layers: int) -> list[str]:
        return [t.format(layer=layer) for layer in range(n_layers) for t in templates]

    def mlp_out_hook(self, layer: int) -> str:
        return self.mlp_out.format(layer=layer)

    def clt_input(self, feature_input_hook: str) -> CLTInput:
        """Where a CLT with this `feature_input_hook` (its config's name) reads, on this model."""
        if feature_input_hook not in self.clt_inputs:
            raise UnsupportedModelError(
                f"A CLT reading {feature_input_hook!r} cannot be placed on a {self.backend} "
                f"{self.architecture}; known inputs: {sorted(self.clt_inputs)}."
            )
        return self.clt_inputs[feature_input_hook]

    def clt_input_hook(self, feature_input_hook: str, layer: int) -> str:
        return self.clt_input(feature_input_hook).hook.format(layer=layer)

    # ---------------------------------------------------------------- weights
    def weight(self, model, path: str, layer: int | None = None) -> Tensor:
        """The tensor at dotted attribute `path` (a field of this class, `{layer}` filled in)."""
        return operator.attrgetter(path.format(layer=layer))(model)

    def attn_weights(self, model, layer: int) -> tuple[Tensor, Tensor]:
        """(W_V [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model]) of block `layer`.

        Grouped-query key/value heads are expanded to one per query head (query head h reads kv head
        h // (n_heads / n_kv_heads)), as a HookedTransformer's `W_V` is; a bridge's `W_V` is not.
        """
        W_V, W_O = self.weight(model, self.W_V, layer), self.weight(model, self.W_O, layer)
        if W_V.shape[0] != W_O.shape[0]:
            W_V = W_V.repeat_interleave(W_O.shape[0] // W_V.shape[0], dim=0)
        return W_V, W_O

    def kv_weights(self, model, layer: int) -> tuple[Tensor, Tensor]:
        """(W_V [n_kv_heads, d_model, d_head], W_O [n_heads, d_head, d_model]) of block `layer`: one value
        head per key/value head (a HookedTransformer's expanded `W_V` repeats each one n_heads / n_kv_heads
        times in a row; every such run's first is taken)."""
        W_O = self.weight(model, self.W_O, layer)
        n_kv = getattr(model.cfg, "n_key_value_heads", None) or W_O.shape[0]
        owner, _, name = self.W_V.format(layer=layer).rpartition(".")
        stored = getattr(operator.attrgetter(owner)(model), f"_{name}", None)  # GQA's, before expanding
        if isinstance(stored, Tensor) and stored.shape[0] == n_kv:
            return stored, W_O
        W_V = self.weight(model, self.W_V, layer)
        if W_V.shape[0] != n_kv:
            W_V = W_V[:: W_V.shape[0] // n_kv]
        return W_V, W_O

    def norm_weights(self, model, layer: int) -> tuple[Tensor, Tensor]:
        """(ln1 weight, ln2 weight) [d_model] of block `layer` (unfolded RMSNorm weights)."""
        return self.weight(model, self.ln1_weight, layer), self.weight(model, self.ln2_weight, layer)

    def to_clt_input(
        self, model, feature_input_hook: str, layer: int, value: Float[Tensor, "... d_model"]
    ) -> Float[Tensor, "... d_model"]:
        """The value seen at the CLT's input hook, turned into the CLT's input (ln2 weight if needed)."""
        if self.clt_input(feature_input_hook).times_ln2_weight:
            return value * self.weight(model, self.ln2_weight, layer)
        return value


def _hooked_transformer_forward_to(model, tokens: Tensor, n: int) -> Tensor:
    return model(tokens, stop_at_layer=n)


_HT_CLT_INPUTS = {
    # circuit-tracer's mlp.hook_in is ln2's output *with* its weight; TL's hook_normalized is before it
    "mlp.hook_in": CLTInput("blocks.{layer}.ln2.hook_normalized", times_ln2_weight=True),
    "ln2.hook_normalized": CLTInput("blocks.{layer}.ln2.hook_normalized", times_ln2_weight=False),
    "hook_resid_mid": CLTInput("blocks.{layer}.hook_resid_mid", times_ln2_weight=False, normalized=False),
}

HOOKED_TRANSFORMER_QWEN3 = Sites(
    backend=HOOKED_TRANSFORMER,
    architecture=QWEN3,
    embed="hook_embed",
    mlp_out="blocks.{layer}.hook_mlp_out",
    clt_inputs=_HT_CLT_INPUTS,
    frozen_scales=("blocks.{layer}.ln1.hook_scale", "blocks.{layer}.ln2.hook_scale"),
    patterns=("blocks.{layer}.attn.hook_pattern",),
    final_scale="ln_final.hook_scale",
    final_norm_weight="ln_final.w",
    ln2_weight="blocks.{layer}.ln2.w",
    W_U="unembed.W_U",
    b_U="unembed.b_U",
    sink_token="<|endoftext|>",
    forward_to=_hooked_transformer_forward_to,
    requires={
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "use_qk_norm": True,
        "positional_embedding_type": "rotary",
        "use_split_qkv_input": False,  # split q/k/v inputs would not fit grouped-query attention
    },
)


def _bridge_forward_to(model, tokens: Tensor, n: int) -> Tensor:
    """The residual before block n; for n == n_layers the final residual, read by a hook (the bridge's
    `stop_at_layer=n_layers` returns the logits)."""
    if n < model.cfg.n_layers:
        return model(tokens, stop_at_layer=n)
    out: list[Tensor] = []

    def grab(tensor: Tensor, *, hook) -> Tensor:
        out.append(tensor)
        return tensor

    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{n - 1}.hook_resid_post", grab)])
    return out[0]


def _bridge_refuse(model) -> str | None:
    if getattr(model, "_weights_processed", False):
        return (
            "This TransformerBridge's weights were processed (enable_compatibility_mode() with its "
            "defaults folds the norm weights and centres W_out / W_U), so the true MLP input the CLT reads "
            "and its target no longer exist. Boot it again without enable_compatibility_mode(), or call "
            "enable_compatibility_mode(no_processing=True); or use tl_clt.load_qwen3(..., backend='bridge')."
        )
    return None


TRANSFORMER_BRIDGE_QWEN3 = dataclasses.replace(
    HOOKED_TRANSFORMER_QWEN3,
    backend=TRANSFORMER_BRIDGE,
    forward_to=_bridge_forward_to,
    # the bridge runs the q/k norms but reports use_qk_norm=False: not a requirement here
    requires={k: v for k, v in HOOKED_TRANSFORMER_QWEN3.requires.items() if k != "use_qk_norm"},
    refuse=_bridge_refuse,
)

REGISTRY: dict[tuple[str, str], Sites] = {
    (HOOKED_TRANSFORMER, QWEN3): HOOKED_TRANSFORMER_QWEN3,
    (TRANSFORMER_BRIDGE, QWEN3): TRANSFORMER_BRIDGE_QWEN3,
}


def _is_hooked_transformer(model) -> bool:
    module = sys.modules.get("transformer_lens.HookedTransformer")  # never imported: not one
    cls = getattr(module, "HookedTransformer", None)
    return isinstance(cls, type) and isinstance(model, cls)


def _is_transformer_bridge(model) -> bool:
    module = sys.modules.get("transformer_lens.model_bridge")  # importing it costs seconds: only if loaded
    cls = getattr(module, "TransformerBridge", None)
    return isinstance(cls, type) and isinstance(model, cls)


BACKENDS: dict[str, Callable[[Any], bool]] = {
    HOOKED_TRANSFORMER: _is_hooked_transformer,
    TRANSFORMER_BRIDGE: _is_transformer_bridge,
}


def backend_of(model) -> str | None:
    """The backend name of `model` (a key of BACKENDS), or None for an object of no known backend."""
    return next((name for name, is_backend in BACKENDS.items() if is_backend(model)), None)


def hook_points(model) -> dict[str, Any]:
    """{name: HookPoint}, each of the model's hook points once, under its TransformerLens name.

    A TransformerBridge lists an aliased hook point twice in `hook_dict`: under its own name
    (`blocks.0.ln2.hook_in`, the point's `.name`) and under the HookedTransformer name it stands for
    (`blocks.0.hook_resid_mid`); the HookedTransformer name is kept, so both backends name a hook alike.
    """
    names: dict[int, str] = {}
    points: dict[int, Any] = {}
    for name, hp in model.hook_dict.items():
        if id(hp) not in names or name != hp.name:  # an alias wins over the point's own name
            names[id(hp)], points[id(hp)] = name, hp
    return {names[key]: points[key] for key in names}


def _supported() -> str:
    return ", ".join(f"{b} + {a}" for b, a in REGISTRY)


def sites_for(model) -> Sites:
    """The Sites of `model`; UnsupportedModelError naming what is supported when it is not known."""
    backend = backend_of(model)
    if backend is None:
        raise UnsupportedModelError(
            "Expected a transformer_lens HookedTransformer or TransformerBridge, got "
            f"{type(model).__name__}. tl_clt supports "
            f"{_supported()}; load one with tl_clt.load_qwen3(...)."
        )
    cfg = model.cfg
    norm = cfg.normalization_type
    if norm in ("RMSPre", "LNPre"):
        raise UnsupportedModelError(
            "This model's norm weights were folded into the next layers (normalization_type="
            f"{norm!r}, TransformerLens' default fold_ln=True), so the true MLP input the CLT reads "
            "no longer exists. Load it with tl_clt.load_qwen3(...) or "
            "HookedTransformer.from_pretrained_no_processing(...)."
        )
    # HookedTransformer: cfg.original_architecture; TransformerBridge: cfg.architecture
    arch = getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)
    sites = REGISTRY.get((backend, arch))
    wrong = {} if sites is None else {k: getattr(cfg, k, None) for k, v in sites.requires.items()}
    wrong = {k: got for k, got in wrong.items() if got != sites.requires[k]}
    if sites is None or wrong:
        found = f"original_architecture={arch!r}, normalization_type={norm!r}, gated_mlp={cfg.gated_mlp}"
        if wrong:
            found += ", " + ", ".join(f"{k}={v!r} (needs {sites.requires[k]!r})" for k, v in wrong.items())
        raise UnsupportedModelError(
            f"tl_clt supports Qwen3-style models ({_supported()}); this {backend} has {found}. "
            "Its edges would not be exact. Load a Qwen3 checkpoint with tl_clt.load_qwen3."
        )
    reason = sites.refuse(model)
    if reason:
        raise UnsupportedModelError(reason)
    return sites
