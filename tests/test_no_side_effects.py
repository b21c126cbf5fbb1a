"""After every call — successful, raising, or interrupted from inside a hook — the model is unchanged."""

from __future__ import annotations

import pytest
from conftest import PROMPT
from model_state import assert_unchanged, snapshot

import tl_clt


@pytest.fixture()
def user_model(model):
    """The user's model with their own permanent hook (which counts calls) and a frozen parameter."""
    calls = []
    model.add_perma_hook("blocks.0.hook_resid_pre", lambda t, hook: calls.append(1) or t)
    model.blocks[1].attn.W_Q.requires_grad_(False)
    model.train()
    return model, calls


def run_calls(model, clt):
    yield lambda: tl_clt.attribute(model, clt, PROMPT, batch_size=8, verbose=False)
    yield lambda: tl_clt.attribute(model, clt, PROMPT, batch_size=3, max_feature_nodes=5, verbose=False)
    yield lambda: tl_clt.feature_activations(model, clt, PROMPT)
    yield lambda: tl_clt.reconstruction_report(model, clt, PROMPT)

    def with_replacement():
        with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt, use_error_term=True)):
            model(tl_clt.to_tokens(model, PROMPT)[None])

    yield with_replacement


@pytest.mark.parametrize("i", range(5))
def test_successful_calls_leave_nothing(user_model, clt, i):
    model, calls = user_model
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    logits = model(tokens)
    before = snapshot(model)
    list(run_calls(model, clt))[i]()
    assert_unchanged(model, before, tokens, logits)
    assert calls, "the user's own permanent hook stays active during our calls"


def test_raising_call_leaves_nothing(user_model, clt, monkeypatch):
    model, _ = user_model
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    logits = model(tokens)
    before = snapshot(model)

    def boom(*a, **k):
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(clt, "decoder_rows", boom)
    with pytest.raises(RuntimeError, match="disk vanished"):
        tl_clt.attribute(model, clt, PROMPT, verbose=False)
    monkeypatch.undo()
    assert_unchanged(model, before, tokens, logits)


@pytest.mark.parametrize("i", range(5))
def test_keyboard_interrupt_inside_a_hook_leaves_nothing(user_model, clt, i):
    """A KeyboardInterrupt raised from inside a forward pass midway through our call."""
    model, _ = user_model
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    logits = model(tokens)
    armed = []

    def interrupt(t, hook):
        if armed:
            raise KeyboardInterrupt
        return t

    model.add_perma_hook("blocks.1.hook_attn_out", interrupt)
    before = snapshot(model)
    armed.append(True)
    with pytest.raises(KeyboardInterrupt):
        list(run_calls(model, clt))[i]()
    armed.clear()
    assert_unchanged(model, before, tokens, logits)
