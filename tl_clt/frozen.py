"""The frozen model of one prompt: its clean pass, the values it freezes, and the hooks that freeze them.

A clean forward pass records, at the model's `Sites`, each layer's CLT input and true MLP output, every
per-block norm scale and attention pattern, the final norm's scale, the embeddings and the logits
(`PromptState`).
Holding the scales and patterns at those values (`freeze_hooks`) makes the residual stream linear in
the embeddings and the MLP outputs: attribution builds its linear model on it, steering's
`freeze_attention` / `direct_effects` modes freeze part or all of it, and the replacement report reads
the recorded inputs and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.hooks import HookList, added_hooks, layer_hook
from tl_clt.prefix_cache import tl_cache_kwargs
from tl_clt.sites import Sites, sites_for


@dataclass
class PromptState:
    """What one clean forward pass tells us about a prompt."""

    sites: Sites
    tokens: Int[Tensor, " pos"]
    logits: Float[Tensor, "pos d_vocab"]
    mlp_in: Float[Tensor, "n_layers pos d_model"]  # the CLT's input at each layer
    mlp_out: Float[Tensor, "n_layers pos d_model"]  # the true MLP outputs
    frozen: dict[str, Tensor]  # hook name -> per-block norm scale or attention pattern of the clean pass
    final_scale: Float[Tensor, "pos 1"]
    embed: Float[Tensor, "pos d_model"]  # the token embeddings (the embedding hook's value)

    @property
    def n_layers(self) -> int:
        return len(self.mlp_in)

    def patterns(self) -> dict[str, Tensor]:
        """The attention patterns only (steering's `freeze_attention`)."""
        names = set(self.sites.block_hooks(self.sites.patterns, self.n_layers))
        return {n: t for n, t in self.frozen.items() if n in names}

    def everything(self) -> dict[str, Tensor]:
        """Every norm scale, the final one included, and every pattern (steering's `direct_effects`)."""
        return {**self.frozen, self.sites.final_scale: self.final_scale[None]}


def capture_hooks(model, clt: CrossLayerTranscoder, sites: Sites, store: dict[str, list]) -> HookList:
    """Forward hooks that record each layer's CLT input and true MLP output into `store`."""
    store["mlp_in"] = [None] * clt.n_layers
    store["mlp_out"] = [None] * clt.n_layers

    def record_input(tensor: Float[Tensor, "batch pos d"], *, hook, layer: int) -> Tensor:
        store["mlp_in"][layer] = sites.to_clt_input(model, clt.feature_input_hook, layer, tensor).detach()
        return tensor

    def record_output(tensor: Float[Tensor, "batch pos d"], *, hook, layer: int) -> Tensor:
        store["mlp_out"][layer] = tensor.detach()
        return tensor

    hooks: HookList = []
    for layer in range(clt.n_layers):
        hooks.append((sites.clt_input_hook(clt.feature_input_hook, layer), layer_hook(record_input, layer)))
        hooks.append((sites.mlp_out_hook(layer), layer_hook(record_output, layer)))
    return hooks


def clean_pass(
    model,
    clt: CrossLayerTranscoder,
    tokens: Int[Tensor, " pos"],
    sites: Sites | None = None,
    kv_cache=None,
) -> PromptState:
    """One no-grad forward pass over `tokens` caching CLT inputs, MLP outputs, norm scales and patterns.

    Public entries check model and CLT once (`tl_clt.hooks.check_compatible` gives `sites`) and guard
    the model with `preserve`; without `sites` they are looked up here. `kv_cache`: an empty
    TransformerLens KV cache (HookedTransformer) that the pass fills with the prompt's keys and values.
    """
    sites = sites or sites_for(model)
    store: dict[str, list] = {}
    frozen: dict[str, Tensor] = {}

    def save(name: str):  # keyed by the requested name: a bridge's hook.name may be another alias
        def fn(tensor: Tensor, *, hook) -> Tensor:
            frozen[name] = tensor.detach()
            return tensor

        return fn

    names = sites.block_hooks(sites.frozen_scales + sites.patterns, clt.n_layers) + [sites.final_scale]
    names.append(sites.embed)
    hooks = capture_hooks(model, clt, sites, store) + [(n, save(n)) for n in names]
    kv = {} if kv_cache is None else tl_cache_kwargs(kv_cache, tokens[None])
    with torch.no_grad(), added_hooks(model, hooks):
        logits = model(tokens[None], **kv)
    final_scale = frozen.pop(sites.final_scale)
    embed = frozen.pop(sites.embed)
    return PromptState(
        sites=sites,
        tokens=tokens,
        logits=logits[0],
        mlp_in=torch.cat(store["mlp_in"]),
        mlp_out=torch.cat(store["mlp_out"]),
        frozen=frozen,
        final_scale=final_scale[0],
        embed=embed[0],
    )


def last_positions(value: Float[Tensor, "... pos d"], n: int) -> Float[Tensor, "... n d"]:
    """A clean value's last `n` positions (dim -2): what a pass over the prompt's last `n` tokens only (a
    KV cache holding the others) is frozen to; the whole value when it has no more than `n`."""
    return value[..., value.shape[-2] - n :, :] if value.shape[-2] > n else value


def freeze_hooks(frozen: dict[str, Tensor]) -> HookList:
    """Forward hooks that replace norm scales and attention patterns by their clean-pass values. A pass
    over the prompt's last positions only (a KV cache holding the others) gets those positions' values:
    scales [batch, pos, 1] and patterns [batch, head, query, key] both have positions at dim -2."""

    def replace(value: Tensor):  # bound per name (a bridge's hook.name may be another alias)
        def fn(tensor: Tensor, *, hook) -> Tensor:
            held = last_positions(value, tensor.shape[-2])
            return held.to(tensor.dtype).expand_as(
                tensor
            )  # a new tensor: the bridge detects edits by identity

        return fn

    return [(name, replace(value)) for name, value in frozen.items()]


def all_activations(
    clt: CrossLayerTranscoder, mlp_in: Float[Tensor, "n_layers pos d_model"]
) -> Float[Tensor, "n_layers pos n_features"]:
    """Every layer's feature activations (dense) for the recorded CLT inputs."""
    return torch.stack([clt.encode(mlp_in[k], k) for k in range(clt.n_layers)])
