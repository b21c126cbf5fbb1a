"""The sites table: every name it gives exists on the model, and models not in it are refused."""

from __future__ import annotations

import dataclasses

import pytest
from transformer_lens import HookedTransformer, HookedTransformerConfig

import tl_clt
from tl_clt.sites import HOOKED_TRANSFORMER_QWEN3, REGISTRY, UnsupportedModelError, sites_for


def test_qwen3_sites_name_real_hooks_and_weights(model, clt):
    sites = sites_for(model)
    assert sites is REGISTRY[("HookedTransformer", "Qwen3ForCausalLM")] is HOOKED_TRANSFORMER_QWEN3
    n = model.cfg.n_layers
    names = [sites.embed, sites.final_scale, *sites.block_hooks(sites.frozen_scales + sites.patterns, n)]
    names += [sites.mlp_out_hook(k) for k in range(n)]
    names += [sites.clt_input_hook(h, k) for h in sites.clt_inputs for k in range(n)]
    assert not [name for name in names if name not in model.hook_dict]
    assert sites.weight(model, sites.ln2_weight, 1) is model.blocks[1].ln2.w
    assert sites.weight(model, sites.final_norm_weight) is model.ln_final.w
    assert sites.weight(model, sites.W_U) is model.unembed.W_U
    assert sites.weight(model, sites.b_U) is model.unembed.b_U
    assert tl_clt.check_compatible(model, clt) is sites


def _tiny(**overrides) -> HookedTransformer:
    cfg = dict(
        n_layers=1,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=50,
        n_ctx=16,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=4,
        gated_mlp=True,
        final_rms=True,
        use_qk_norm=True,
        original_architecture="Qwen3ForCausalLM",
    )
    return HookedTransformer(HookedTransformerConfig(**{**cfg, **overrides}), move_to_device=False)


def test_a_tiny_qwen3_is_supported():
    assert sites_for(_tiny()) is HOOKED_TRANSFORMER_QWEN3


@pytest.mark.parametrize(
    "overrides, excerpt",
    [
        (dict(original_architecture="Gemma2ForCausalLM"), "original_architecture='Gemma2ForCausalLM'"),
        (dict(original_architecture="LlamaForCausalLM", use_qk_norm=False), "LlamaForCausalLM"),
        (dict(original_architecture=None), "original_architecture=None"),
        (dict(use_qk_norm=False), "use_qk_norm=False (needs True)"),
    ],
)
def test_other_architectures_are_refused_naming_what_is_supported(overrides, excerpt):
    with pytest.raises(UnsupportedModelError, match="HookedTransformer \\+ Qwen3ForCausalLM") as err:
        sites_for(_tiny(**overrides))
    assert excerpt in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)


def test_an_unknown_clt_input_is_refused(model, clt):
    sites = dataclasses.replace(HOOKED_TRANSFORMER_QWEN3, clt_inputs={})
    with pytest.raises(UnsupportedModelError, match="cannot be placed"):
        sites.clt_input_hook(clt.feature_input_hook, 0)


def test_kv_weights_are_the_stored_value_heads_uncopied(model):
    """kv_weights gives one value head per key/value head: the expanded W_V's every group-th head, read from
    the attention's stored (unexpanded) weight without a copy; W_O is the model's own."""
    import torch

    sites = sites_for(model)
    n_kv, n_heads = model.cfg.n_key_value_heads, model.cfg.n_heads
    assert n_kv < n_heads
    for j in range(model.cfg.n_layers):
        W_V, W_O = sites.kv_weights(model, j)
        attn = model.blocks[j].attn
        assert W_V.shape[0] == n_kv and torch.equal(W_V, attn.W_V[:: n_heads // n_kv])
        assert W_V.data_ptr() == attn._W_V.data_ptr() and W_O.data_ptr() == attn.W_O.data_ptr()
