"""TransformerLens' TransformerBridge as a second backend: loading, the user's own boot, the sites' weights,
and transformer-lens 4.x (where HookedTransformer is gone). The algorithm suites run on both backends
through the `backend` fixture (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, TL_MAJOR

import tl_clt
from tl_clt.sites import TRANSFORMER_BRIDGE, sites_for


@pytest.fixture(scope="module")
def bridge(model_dir):
    return tl_clt.load_qwen3(model_dir, backend="bridge")


@pytest.mark.bridge
def test_bridge_logits_equal_transformers(bridge, model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokens = tl_clt.to_tokens(bridge, PROMPT)[None]
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=0)
    assert sites_for(bridge).backend == TRANSFORMER_BRIDGE
    assert bridge.cfg.model_name == str(model_dir)


@pytest.mark.bridge
def test_final_residual_is_read_by_a_hook(bridge):
    """The bridge's stop_at_layer=n_layers returns logits; the sites read the final residual instead."""
    sites = sites_for(bridge)
    tokens = tl_clt.to_tokens(bridge, PROMPT)[None]
    n = bridge.cfg.n_layers
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
        resid = sites.forward_to(bridge, tokens, n)
        torch.testing.assert_close(resid, cache[f"blocks.{n - 1}.hook_resid_post"], atol=0, rtol=0)
        torch.testing.assert_close(sites.forward_to(bridge, tokens, 1), cache["blocks.1.hook_resid_pre"])


@pytest.mark.bridge
def test_a_bridge_booted_by_the_user_gives_the_same_graph(bridge, model_dir, small_clt_dir):
    """The README recipe: boot_transformers on a local folder, optionally compatibility mode without
    processing; the graph equals load_qwen3(backend='bridge')'s."""
    from transformer_lens.model_bridge import TransformerBridge

    own = TransformerBridge.boot_transformers(str(model_dir), device="cpu", dtype=torch.float32)
    own.enable_compatibility_mode(no_processing=True)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    a = tl_clt.attribute(own, clt, PROMPT, max_n_logits=3, verbose=False)
    b = tl_clt.attribute(bridge, clt, PROMPT, max_n_logits=3, verbose=False)
    assert a.n_features > 5 and a.feature_keys.tolist() == b.feature_keys.tolist()
    torch.testing.assert_close(a.adjacency, b.adjacency, atol=1e-6 * float(b.adjacency.abs().max()), rtol=0)


@pytest.mark.bridge
def test_what_needs_a_hooked_transformer_says_it_needs_transformer_lens_3(model_dir, monkeypatch):
    if TL_MAJOR < 4:  # make 3.x look like 4.x, where the name raises ImportError
        import transformer_lens

        def removed(name):
            raise ImportError(f"{name!r} was removed in TransformerLens 4.0.")

        monkeypatch.delattr(transformer_lens, "HookedTransformer")
        monkeypatch.setattr(transformer_lens, "__getattr__", removed, raising=False)
    with pytest.raises(ImportError, match=r"needs transformer-lens 3\.x.*backend='bridge'"):
        tl_clt.load_qwen3(model_dir)
    with pytest.raises(ValueError, match="backend must be 'hooked'"):
        tl_clt.load_qwen3(model_dir, backend="bridged")


@pytest.mark.hooked
def test_sites_give_the_same_weights_on_both_backends(bridge, model_dir):
    hooked = tl_clt.load_qwen3(model_dir)
    a, b = sites_for(hooked), sites_for(bridge)
    for layer in range(hooked.cfg.n_layers):
        for x, y in zip(
            a.attn_weights(hooked, layer) + a.norm_weights(hooked, layer),
            b.attn_weights(bridge, layer) + b.norm_weights(bridge, layer),
        ):
            torch.testing.assert_close(x, y)
    for path in (a.W_U, a.b_U, a.final_norm_weight):
        torch.testing.assert_close(a.weight(hooked, path), b.weight(bridge, path))


@pytest.mark.bridge
def test_added_hooks_run_as_model_hooks_does(bridge):
    """Our passes' hooks on a bridge go in as one filter hook: the same logits as the bridge's own
    `hooks()` with the same list (hooks at one point chained in list order, an alias and its point's own
    name the same point), the bridge's hook dict built a fixed number of times however many hooks there
    are, nothing left after, and an unknown name refused before any hook goes in."""
    from tl_clt.hooks import added_hooks

    calls = []

    def add(value, tag):
        def fn(tensor, *, hook):
            calls.append(tag)
            return tensor + value

        return fn

    def double(tensor, *, hook):
        calls.append("x2")
        return tensor * 2

    hooks = [
        ("blocks.0.hook_mlp_out", add(1.0, "alias +1")),  # the HookedTransformer name of the point below
        ("blocks.0.mlp.hook_out", double),
        ("blocks.1.hook_resid_pre", add(-0.5, "resid")),
        ("blocks.0.hook_mlp_out", add(0.25, "again")),
    ]
    tokens = tl_clt.to_tokens(bridge, PROMPT)[None]
    with torch.no_grad():
        with bridge.hooks(fwd_hooks=hooks):
            expected = bridge(tokens)
        order = list(calls)
        calls.clear()
        with added_hooks(bridge, hooks):
            got = bridge(tokens)
        plain = bridge(tokens)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert calls == order == ["alias +1", "x2", "again", "resid"]
    assert (got - plain).abs().max() > 1e-2
    assert not any(hp.fwd_hooks for hp in bridge.hook_dict.values())
    with pytest.raises(KeyError, match="blocks.0.no_such_hook"):
        added_hooks(bridge, [*hooks, ("blocks.0.no_such_hook", double)])
    assert not any(hp.fwd_hooks for hp in bridge.hook_dict.values())
    builds = []
    cls = type(bridge)
    original = cls.hook_dict
    try:
        cls.hook_dict = property(lambda self: builds.append(1) or original.fget(self))
        counts = []
        for n in (1, 40):
            builds.clear()
            with added_hooks(bridge, hooks[1:2] * n):
                pass
            counts.append(len(builds))
        assert counts[0] == counts[1] <= 5, counts  # the bridge's own hooks(): one more per named hook
    finally:
        cls.hook_dict = original
