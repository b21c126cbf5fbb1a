"""SAELens next to tl_clt: SAEs the user attached with `HookedSAETransformer.add_sae` (issue 15, item 13).

With its error term an attached SAE is the identity (reconstruction + error = the activation), so tl_clt
routes around it: graphs and steering are those of the plain model, exactly. Without its error term the
model's activations are SAE reconstructions; tl_clt refuses, naming `reset_saes()`. The user's SAEs are
still attached afterwards, in both cases.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT

import tl_clt
from tl_clt import CrossLayerTranscoder, Intervention

sae_lens = pytest.importorskip("sae_lens", reason="sae_lens is not installed (pip install 'tl-clt[saelens]')")

SAE_HOOKS = ["blocks.1.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.ln2.hook_normalized"]


@pytest.fixture(scope="module")
def plain(model_dir):
    return tl_clt.load_qwen3(model_dir)


@pytest.fixture(scope="module")
def clt(small_clt_dir):
    return CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)


def hooked_sae_model(plain) -> sae_lens.HookedSAETransformer:
    """The same tiny Qwen3 as a HookedSAETransformer (same weights in the same memory layout, same
    tokenizer: graphs of the two are compared exactly, and a reduction over a weight rounds by layout)."""
    model = sae_lens.HookedSAETransformer(plain.cfg, move_to_device=False)
    model.load_state_dict({k: v.clone() for k, v in plain.state_dict().items()}, assign=True)
    model.tokenizer = plain.tokenizer
    return model.eval()


def make_sae(hook: str, d_model: int, seed: int) -> sae_lens.SAE:
    cfg = sae_lens.StandardSAEConfig(d_in=d_model, d_sae=48)
    cfg.metadata.hook_name = hook
    sae = sae_lens.StandardSAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a far-from-perfect SAE: its nonlinearity matters, its reconstruction is poor
        for p in sae.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return sae


def _attr(model, clt):
    return tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, batch_size=8, verbose=False)


def test_attached_saes_with_error_term_are_routed_around_exactly(plain, clt):
    expected = _attr(plain, clt)
    iv = [Intervention(0, 2, 1, 4.0)]
    steered = tl_clt.steer(plain, clt, PROMPT, iv)
    model = hooked_sae_model(plain)
    saes = [make_sae(h, plain.cfg.d_model, i) for i, h in enumerate(SAE_HOOKS)]
    for sae in saes:
        model.add_sae(sae, use_error_term=True)
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    with torch.no_grad():
        with_saes = model(tokens)
    graph = _attr(model, clt)
    torch.testing.assert_close(graph.adjacency, expected.adjacency, rtol=1e-5, atol=1e-5)
    assert sorted(graph.meta["saes_routed_around"]) == sorted(SAE_HOOKS)
    torch.testing.assert_close(tl_clt.steer(model, clt, PROMPT, iv), steered, rtol=1e-5, atol=1e-5)
    acts = tl_clt.feature_activations(model, clt, PROMPT)
    assert torch.equal(acts.to_dense(), tl_clt.feature_activations(plain, clt, PROMPT).to_dense())
    # the user's SAEs are still attached, at their hook points, and run as before
    assert sorted(model._acts_to_saes) == sorted(SAE_HOOKS)
    for hook in SAE_HOOKS:
        assert model.get_submodule(hook) is model._acts_to_saes[hook]
    with torch.no_grad():
        assert torch.equal(model(tokens), with_saes)
    _, cache = model.run_with_cache(tokens)
    assert "blocks.1.hook_mlp_out.hook_sae_acts_post" in cache


def test_attached_sae_without_error_term_is_refused_naming_reset_saes(plain, clt):
    model = hooked_sae_model(plain)
    model.add_sae(make_sae("blocks.1.hook_mlp_out", plain.cfg.d_model, 0), use_error_term=False)
    for call in (
        lambda: _attr(model, clt),
        lambda: tl_clt.steer(model, clt, PROMPT, []),
        lambda: tl_clt.feature_activations(model, clt, PROMPT),
    ):
        with pytest.raises(ValueError, match=r"use_error_term=False.*model\.reset_saes\(\)"):
            call()
        assert list(model._acts_to_saes) == ["blocks.1.hook_mlp_out"]
    with pytest.raises(ValueError, match=r"model\.reset_saes\(\)"):  # hooks handed to the user
        tl_clt.replacement_hooks(model, clt)
    model.reset_saes()
    torch.testing.assert_close(_attr(model, clt).adjacency, _attr(plain, clt).adjacency, rtol=0, atol=0)
