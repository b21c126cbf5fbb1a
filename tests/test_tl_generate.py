"""Steering and replacement hooks inside TransformerLens' own `model.generate` (issue 14, part 5).

On the shipped toy world, on both backends, with and without `use_past_kv_cache`:
- the tokens equal `tl_clt.generate` with the same interventions (which reruns the whole sequence per
  token, every pass at offset 0);
- the logits of each step equal an independent computation: `test_steering.reference_steer` (the CLT read
  from its safetensors files, plain TL hooks, no tl_clt code) on the whole generated sequence in one
  non-cached forward, with each intervention at the absolute positions its `pos` means (docs/tl_generate.md),
  and also the same hooks run on that whole sequence.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT
from test_steering import RawCLT, reference_steer

import tl_clt
from tl_clt import Intervention
from tl_clt.toyworld import toyworld_paths

N_NEW = 4
WHERE = ["pos=-1", "slice", "generated", "ablate"]
ATOL = 1e-4  # logits of the toy world are O(10); float32 cached vs full forwards differ by ~1e-5


@pytest.fixture(scope="module")
def world(backend):
    model_dir, clt_dir = toyworld_paths()
    model = tl_clt.load_qwen3(model_dir, backend=backend)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    tokens = tl_clt.to_tokens(model, PROMPT)  # the prompt as tl_clt runs it: the sink, then the prompt
    acts = tl_clt.feature_activations(model, clt, tokens)
    plain = tl_clt.generate(model, clt, tokens, [], max_new_tokens=N_NEW, stop_at_eos=False)
    return model, clt, RawCLT(clt_dir, model.cfg.n_layers), tokens, acts.to_dense(), plain


@pytest.fixture()
def kv_cache(monkeypatch, world):
    """Make the bridge's KV cache work. transformers >= 5 hands each attention layer its cache as
    `cache=`, and TransformerBridge (transformer-lens 3.9 and 4.3) reads only `past_key_values` /
    `layer_past`: its cached passes then attend to their own new token alone, and its cached `generate`
    gives other tokens than its uncached one with no hook at all (docs/tl_generate.md). Passing the cache
    on under the name the bridge reads makes its cached passes real ones, which is what is tested here;
    `test_bridge_kv_cache_as_transformer_lens_ships_it` covers the bridge without this."""
    if tl_clt.sites_for(world[0]).backend != "TransformerBridge":
        return
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    update = AttentionBridge._update_kv_cache

    def update_with_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
            kwargs["past_key_values"] = kwargs.get("cache")
        return update(self, k, v, **kwargs)

    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", update_with_cache)


def _interventions(world, where: str) -> list[Intervention]:
    """Layer-3 features of the prompt's last position set to -3x their activation there, at `where`;
    or ("ablate") the layer-0 features of that position set to 0. Each changes the generated tokens."""
    _, _, _, tokens, acts, _ = world
    return _steer_last(tokens, acts, where)


def _steer_last(tokens, acts, where: str) -> list[Intervention]:
    last = len(tokens) - 1
    layer = 0 if where == "ablate" else 3
    features = acts[layer, last].nonzero().squeeze(-1).tolist()
    if where == "ablate":
        return tl_clt.ablate([(layer, last, f) for f in features])
    pos = {"pos=-1": -1, "slice": slice(last, None), "generated": "generated"}[where]
    return [Intervention(layer, pos, f, -3.0 * float(acts[layer, last, f])) for f in features]


def _absolute(iv: Intervention, n_prompt: int, n_seq: int) -> list[int]:
    """The positions of a sequence of `n_seq` tokens that `iv` means (docs/tl_generate.md), spelled out
    here from the documented rules, not by tl_clt."""
    if iv.pos == "generated":
        return list(range(n_prompt, n_seq))
    if isinstance(iv.pos, int):
        return [iv.pos + n_prompt if iv.pos < 0 else iv.pos]
    start = iv.pos.start + n_prompt if iv.pos.start < 0 else iv.pos.start
    return list(range(start, n_seq))


def _tl_generate(model, hooks, tokens, use_past_kv_cache: bool):
    """TL's own generate, greedy: (tokens [pos], logits of each step [n_new, d_vocab])."""
    with model.hooks(fwd_hooks=hooks):
        out = model.generate(
            tokens[None],
            max_new_tokens=N_NEW,
            do_sample=False,
            use_past_kv_cache=use_past_kv_cache,
            stop_at_eos=False,
            verbose=False,
            output_logits=True,
        )
    return out.sequences[0], torch.stack([step[0] for step in out.logits])


def _full_forward(model, hooks, tokens):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens[None])[0]


@pytest.mark.parametrize("use_past_kv_cache", [False, True], ids=["no_cache", "kv_cache"])
@pytest.mark.parametrize("where", WHERE)
def test_steering_hooks_inside_tl_generate(world, kv_cache, where, use_past_kv_cache):
    model, clt, raw, tokens, _, plain = world
    n = len(tokens)
    ivs = _interventions(world, where)
    want = tl_clt.generate(model, clt, tokens, ivs, max_new_tokens=N_NEW, stop_at_eos=False)
    assert not torch.equal(want, plain), "the steering must change the generated tokens to test anything"

    hooks = tl_clt.steering_hooks(model, clt, ivs, tokens=tokens, freeze_attention=False)
    got, step_logits = _tl_generate(model, hooks, tokens, use_past_kv_cache)
    assert got.tolist() == want.tolist()

    # step i predicts token n + i: the logits at position n - 1 + i of the whole sequence
    reference = reference_steer(
        model, raw, got, [(iv.layer, _absolute(iv, n, len(got)), iv.feature, iv.value) for iv in ivs], False
    )
    torch.testing.assert_close(step_logits, reference[n - 1 : -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(step_logits, _full_forward(model, hooks, got)[n - 1 : -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("use_past_kv_cache", [False, True], ids=["no_cache", "kv_cache"])
def test_replacement_hooks_inside_tl_generate(world, kv_cache, use_past_kv_cache):
    """The replacement model (every MLP replaced by the CLT), alone and steered, generates by TL's
    generate what greedy decoding of full non-cached forwards with the same hooks gives."""
    model, clt, _, tokens, _, _ = world
    n = len(tokens)
    replace = tl_clt.replacement_hooks(model, clt)
    steer = tl_clt.steering_hooks(
        model, clt, _interventions(world, "slice"), tokens=tokens, freeze_attention=False
    )
    outputs = []
    for hooks in (replace, replace + steer):
        want = tokens
        for _ in range(N_NEW):
            want = torch.cat([want, _full_forward(model, hooks, want)[-1].argmax()[None]])
        got, step_logits = _tl_generate(model, hooks, tokens, use_past_kv_cache)
        assert got.tolist() == want.tolist()
        torch.testing.assert_close(
            step_logits, _full_forward(model, hooks, got)[n - 1 : -1], atol=ATOL, rtol=0
        )
        outputs.append(got)
    assert not torch.equal(*outputs), "the steering must change the replacement model's tokens"


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")  # the bridge's, for direct_effects
@pytest.mark.parametrize("use_past_kv_cache", [False, True], ids=["no_cache", "kv_cache"])
@pytest.mark.parametrize("direct_effects", [False, True])
def test_frozen_steering_hooks_refuse_generated_tokens(world, kv_cache, use_past_kv_cache, direct_effects):
    """Frozen values exist only for the prompt: the first pass (the prompt) runs, the next one is refused."""
    model, clt, _, tokens, _, _ = world
    hooks = tl_clt.steering_hooks(
        model, clt, _interventions(world, "pos=-1"), tokens=tokens, direct_effects=direct_effects
    )
    with pytest.raises(ValueError, match="build them with freeze_attention=False"):
        _tl_generate(model, hooks, tokens, use_past_kv_cache)
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_negative_positions_need_the_prompt_in_a_kv_cache_pass(world, kv_cache):
    """Without tokens= the prompt's end is unknown once TL's generate runs only the new token."""
    model, clt, _, tokens, _, _ = world
    ivs = _interventions(world, "pos=-1")
    hooks = tl_clt.steering_hooks(model, clt, ivs, freeze_attention=False)
    with pytest.raises(ValueError, match="counts from the end.*build them with tokens="):
        _tl_generate(model, hooks, tokens, use_past_kv_cache=True)
    # with the prompt's absolute positions, hooks without tokens= are right in generate too
    n = len(tokens)
    absolute = [Intervention(iv.layer, n - 1, iv.feature, iv.value) for iv in ivs]
    got, _ = _tl_generate(
        model, tl_clt.steering_hooks(model, clt, absolute, freeze_attention=False), tokens, True
    )
    assert (
        got.tolist()
        == tl_clt.generate(model, clt, tokens, ivs, max_new_tokens=N_NEW, stop_at_eos=False).tolist()
    )


@pytest.mark.bridge
def test_bridge_kv_cache_as_transformer_lens_ships_it():
    """Without the `kv_cache` fixture: if the bridge's cached passes see the cache, steering inside its
    cached generate is right; if not (transformer-lens 3.9 / 4.3 with transformers >= 5), hooks built
    with tokens= raise instead of steering the wrong positions."""
    model_dir, clt_dir = toyworld_paths()
    model = tl_clt.load_qwen3(model_dir, backend="bridge")
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    tokens = tl_clt.to_tokens(model, PROMPT)
    ivs = _steer_last(tokens, tl_clt.feature_activations(model, clt, tokens).to_dense(), "slice")
    keys = []

    def see(pattern, *, hook):
        keys.append(pattern.shape[-1])
        return pattern

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", see)]):
        model.generate(tokens[None], max_new_tokens=2, do_sample=False, stop_at_eos=False, verbose=False)
    hooks = tl_clt.steering_hooks(model, clt, ivs, tokens=tokens, freeze_attention=False)
    if keys == [len(tokens), len(tokens) + 1]:  # the cache works
        got, _ = _tl_generate(model, hooks, tokens, True)
        want = tl_clt.generate(model, clt, tokens, ivs, max_new_tokens=N_NEW, stop_at_eos=False)
        assert got.tolist() == want.tolist()
    else:
        assert keys == [len(tokens), 1]  # the second pass attends to its own token alone
        with pytest.raises(
            ValueError, match=f"built for tokens= of {len(tokens)} tokens, but the model ran on 1"
        ):
            _tl_generate(model, hooks, tokens, True)


def test_named_positions_are_slices_of_the_prompt(world):
    """In `steer` (no generation): "prompt" and "all" steer every prompt position, "generated" none."""
    model, clt, _, tokens, acts, _ = world
    n = len(tokens)
    ivs = _interventions(world, "pos=-1")

    def at(pos):
        return tl_clt.steer(
            model,
            clt,
            tokens,
            [Intervention(iv.layer, pos, iv.feature, iv.value) for iv in ivs],
            freeze_attention=False,
        )

    everywhere = at(slice(0, n))
    assert not torch.allclose(everywhere, tl_clt.steer(model, clt, tokens, [], freeze_attention=False))
    torch.testing.assert_close(at("prompt"), everywhere, atol=0, rtol=0)
    torch.testing.assert_close(at("all"), everywhere, atol=0, rtol=0)
    torch.testing.assert_close(at("generated"), tl_clt.steer(model, clt, tokens, [], freeze_attention=False))
