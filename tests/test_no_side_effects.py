"""After every public call that takes a model — successful, raising, or interrupted from inside a hook —
the model is exactly as it was: the same hooks (the user's own, permanent ones included, still there and
still called), cfg, requires_grad, train/eval mode, grads, and bit-identical logits.

The hook functions we return (replacement_hooks, steering_hooks) keep no state that corrupts a later
forward pass with another batch size or sequence length, or a pass after an interrupted one.
"""

from __future__ import annotations

import inspect
import tempfile

import pytest
import torch
from conftest import PROMPT
from model_state import assert_unchanged, snapshot

import tl_clt
from tl_clt import Intervention


class Tripwire:
    """A user's permanent hook that counts its calls and, when armed, raises at the k-th one."""

    def __init__(self):
        self.calls, self.at, self.exc = 0, None, None

    def arm(self, at: int, exc: type[BaseException]) -> None:
        self.calls, self.at, self.exc = 0, at, exc

    def disarm(self) -> None:
        self.at = None

    def __call__(self, tensor, hook):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise self.exc("tripwire")
        return tensor


@pytest.fixture(scope="module")
def user(model_dir, small_clt_dir, backend):
    """The user's model as they left it: a permanent hook, a temporary hook, a torch module hook, a frozen
    parameter, train mode. Shared by the tests of this module: each checks it is unchanged by its call."""
    model = tl_clt.load_qwen3(model_dir, backend=backend)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    trip = Tripwire()
    counted = []
    model.add_perma_hook("blocks.1.hook_attn_out", trip)
    model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: counted.append(1) or t)
    model.blocks[2].mlp.register_forward_hook(lambda mod, args, out: None)
    next(model.blocks[1].attn.parameters()).requires_grad_(False)  # W_Q's (HT) or q_proj's (bridge)
    model.train()
    model.blocks[0].eval()  # mixed modes must survive too
    return model, clt, trip, counted


def _tokens(model):
    return tl_clt.to_tokens(model, PROMPT)


IVS = [Intervention(0, 3, 1, 0.0), Intervention(1, slice(2, None), 5, 2.0)]


def _with_hooks(model, hooks):
    with model.hooks(fwd_hooks=hooks):
        return model(_tokens(model)[None])


def _swapped(model):
    """The prompt's tokens with the second-to-last one changed (same length, for contrast_features)."""
    tokens = tl_clt.to_tokens(model, PROMPT).clone()
    tokens[-2] = (tokens[-2] + 1) % model.cfg.d_vocab
    return tokens


def _preserve_body(model):
    """What a careless caller might do inside `preserve`: all of it is undone on exit."""
    with tl_clt.preserve(model):
        model.add_hook("blocks.0.hook_mlp_out", lambda t, hook: t * 2)
        model.add_perma_hook("blocks.2.hook_resid_post", lambda t, hook: t)
        model.cfg.use_attn_result = True
        model.eval()
        model.requires_grad_(False)
        model.W_E.grad = torch.ones_like(model.W_E)
        return model(_tokens(model)[None])


def _mediators(model, clt):
    graph = tl_clt.attribute(model, clt, PROMPT, verbose=False)
    ids = [graph.node_id(i) for i in range(graph.n_features)]
    return tl_clt.mediators(model, clt, graph, ids[:2], ids[2:6], 2)


def _group_effects(model, clt):
    graph = tl_clt.attribute(model, clt, PROMPT, verbose=False)
    ids = [graph.node_id(i) for i in range(graph.n_features)]
    return tl_clt.group_effects(model, clt, graph, {"a": ids[:2], "b": ids[2:4]}, batch_size=2)


def _attribute_many(model, clt):
    """A batch run on the user's objects; a prompt's recorded failure is raised, as `attribute` would."""
    with tempfile.TemporaryDirectory() as out:
        tables = tl_clt.attribute_many(model, clt, [PROMPT], out, max_n_logits=3, batch_size=4, verbose=False)
    failed = tables.manifest[tables.manifest["status"] == "failed"]
    if len(failed):
        raise RuntimeError(failed["error"].iloc[0])


# name -> (public function it exercises, whether it runs the model forward, call(model, clt))
CALLS = {
    "attribute_many": ("attribute_many", True, _attribute_many),
    "attribute": (
        "attribute",
        True,
        lambda m, c: tl_clt.attribute(m, c, PROMPT, max_n_logits=3, batch_size=4, verbose=False),
    ),
    "attribute_max_feature_nodes": (
        "attribute",
        True,
        lambda m, c: tl_clt.attribute(
            m, c, PROMPT, max_feature_nodes=4, batch_size=2, update_interval=1, verbose=False
        ),
    ),
    "feature_activations": (
        "feature_activations",
        True,
        lambda m, c: tl_clt.feature_activations(m, c, PROMPT),
    ),
    "reconstruction_report": (
        "reconstruction_report",
        True,
        lambda m, c: tl_clt.reconstruction_report(m, c, PROMPT),
    ),
    "replacement_hooks_error_term": (
        "replacement_hooks",
        True,
        lambda m, c: _with_hooks(m, tl_clt.replacement_hooks(m, c, use_error_term=True)),
    ),
    "replacement_hooks": (
        "replacement_hooks",
        True,
        lambda m, c: _with_hooks(m, tl_clt.replacement_hooks(m, c)),
    ),
    "steering_hooks_frozen": (
        "steering_hooks",
        True,
        lambda m, c: _with_hooks(m, tl_clt.steering_hooks(m, c, IVS, tokens=_tokens(m))),
    ),
    "steering_hooks_unfrozen": (
        "steering_hooks",
        True,
        lambda m, c: _with_hooks(m, tl_clt.steering_hooks(m, c, IVS, freeze_attention=False)),
    ),
    "steering_hooks_direct": (
        "steering_hooks",
        True,
        lambda m, c: _with_hooks(m, tl_clt.steering_hooks(m, c, IVS, tokens=_tokens(m), direct_effects=True)),
    ),
    "steer": ("steer", True, lambda m, c: tl_clt.steer(m, c, PROMPT, IVS)),
    "steer_direct": ("steer", True, lambda m, c: tl_clt.steer(m, c, PROMPT, IVS, direct_effects=True)),
    "steer_many": (
        "steer_many",
        True,
        lambda m, c: tl_clt.steer_many(m, c, PROMPT, [IVS, IVS[:1], []], batch_size=2),
    ),
    "steer_many_direct": (
        "steer_many",
        True,
        lambda m, c: tl_clt.steer_many(m, c, PROMPT, [IVS, IVS[:1]], direct_effects=True),
    ),
    "generate": ("generate", True, lambda m, c: tl_clt.generate(m, c, PROMPT, IVS, max_new_tokens=2)),
    "generate_frozen": (
        "generate",
        True,
        lambda m, c: tl_clt.generate(
            m, c, PROMPT, IVS, max_new_tokens=2, freeze_attention=True, temperature=1.0
        ),
    ),
    "contrast_features": (
        "contrast_features",
        True,
        lambda m, c: tl_clt.contrast_features(
            m, c, tl_clt.attribute(m, c, PROMPT, verbose=False), _swapped(m)
        ),
    ),
    "feature_output_tokens": (
        "feature_output_tokens",
        False,
        lambda m, c: tl_clt.feature_output_tokens(m, c, layer=1, feature=3, k=5),
    ),
    "prediction_table": (
        "prediction_table",
        False,
        lambda m, c: tl_clt.prediction_table(m, torch.randn(12, m.cfg.d_vocab), torch.randn(m.cfg.d_vocab)),
    ),
    "check_compatible": ("check_compatible", False, lambda m, c: tl_clt.check_compatible(m, c)),
    "to_tokens": ("to_tokens", False, lambda m, c: tl_clt.to_tokens(m, PROMPT)),
    "sites_for": ("sites_for", False, lambda m, c: tl_clt.sites_for(m)),
    "preserve": ("preserve", True, lambda m, c: _preserve_body(m)),
    "propose_supernodes": (
        "propose_supernodes",
        False,
        lambda m, c: tl_clt.propose_supernodes(
            tl_clt.attribute(m, c, PROMPT, verbose=False).prune(), model=m, clt=c
        ),
    ),
    "propose_supernodes_mediate": (
        "propose_supernodes",
        True,
        lambda m, c: tl_clt.propose_supernodes(
            tl_clt.attribute(m, c, PROMPT, verbose=False).prune(), model=m, clt=c, mediate=2
        ),
    ),
    "mediators": ("mediators", True, _mediators),
    "group_effects": ("group_effects", True, _group_effects),
    "build_feature_dashboards": (
        "build_feature_dashboards",
        True,
        lambda m, c: tl_clt.build_feature_dashboards(
            m,
            c,
            [PROMPT, "the cat sat"] * 3,
            tempfile.mkdtemp(),
            context_len=16,
            batch_size=2,
            progress=False,
        ),
    ),
}
FORWARD_CALLS = [name for name, (_, forward, _) in CALLS.items() if forward]


def test_every_public_function_taking_a_model_is_covered():
    takes_model = {
        name
        for name in tl_clt.__all__
        if inspect.isfunction(getattr(tl_clt, name))
        and "model" in inspect.signature(getattr(tl_clt, name)).parameters
    }
    assert takes_model <= {fn for fn, _, _ in CALLS.values()}, takes_model - {
        fn for fn, _, _ in CALLS.values()
    }
    assert len(takes_model) >= 12


def _state(model):
    tokens = _tokens(model)[None]
    with torch.no_grad():
        logits = model(tokens)
    return tokens, logits, snapshot(model)


@pytest.mark.parametrize("name", list(CALLS))
def test_successful_call_leaves_nothing(user, name):
    model, clt, trip, counted = user
    tokens, logits, before = _state(model)
    counted.clear()
    trip.disarm()
    CALLS[name][2](model, clt)
    assert_unchanged(model, before, tokens, logits)
    if CALLS[name][1]:
        assert counted, "the user's own hooks stay active during our calls"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("name", FORWARD_CALLS)
def test_call_interrupted_inside_a_forward_pass_leaves_nothing(user, name, where, exc):
    """The user's hook raises at the first or the last forward pass our call makes."""
    model, clt, trip, _ = user
    trip.disarm()
    trip.calls = 0
    CALLS[name][2](model, clt)
    n_calls = trip.calls
    assert n_calls >= 1
    tokens, logits, before = _state(model)
    trip.arm(1 if where == "first" else n_calls, exc)
    try:
        with pytest.raises(exc, match="tripwire"):
            CALLS[name][2](model, clt)
    finally:
        trip.disarm()
    assert_unchanged(model, before, tokens, logits)


@pytest.mark.parametrize(
    "name",
    [
        "attribute",
        "steer",
        "generate",
        "replacement_hooks",
        "feature_output_tokens",
        "build_feature_dashboards",
    ],
)
@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt])
def test_call_failing_while_reading_the_clt_leaves_nothing(user, name, exc, monkeypatch):
    """Reading the CLT's decoder fails midway (a disk error, or Ctrl-C): the error comes through, the
    model is untouched. In `attribute` this happens between the forward pass and the backward passes."""
    model, clt, trip, _ = user
    trip.disarm()
    tokens, logits, before = _state(model)

    def boom(*args, **kwargs):
        raise exc("disk vanished")

    monkeypatch.setattr(clt, "decoder_rows", boom)
    with pytest.raises(exc, match="disk vanished"):
        CALLS[name][2](model, clt)
    monkeypatch.undo()
    assert_unchanged(model, before, tokens, logits)


# ------------------------------------------------------------------------ returned hooks keep no stale state
def _run(model, hooks, tokens):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens)


def _batches(model):
    gen = torch.Generator().manual_seed(0)
    short = torch.randint(1, model.cfg.d_vocab, (3, 7), generator=gen)
    short[:, 0] = tl_clt.to_tokens(model, [5])[0]  # the sink first, as to_tokens does
    return [_tokens(model)[None], short, _tokens(model)[None].repeat(2, 1)]


@pytest.mark.parametrize("kind", ["replacement", "replacement_error_term", "steering_unfrozen"])
def test_reused_hooks_match_fresh_hooks_for_any_batch_and_length(user, kind):
    model, clt, trip, _ = user
    trip.disarm()

    def make():
        if kind == "steering_unfrozen":
            return tl_clt.steering_hooks(model, clt, IVS, freeze_attention=False)
        return tl_clt.replacement_hooks(model, clt, use_error_term=kind.endswith("error_term"))

    hooks = make()
    batches = _batches(model)
    for tokens in batches + batches[::-1]:
        torch.testing.assert_close(_run(model, hooks, tokens), _run(model, make(), tokens), atol=0, rtol=0)
    # a pass interrupted midway leaves nothing that changes the next one
    trip.arm(1, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(model, hooks, batches[1])
    trip.disarm()
    torch.testing.assert_close(
        _run(model, hooks, batches[0]), _run(model, make(), batches[0]), atol=0, rtol=0
    )


@pytest.mark.parametrize("direct_effects", [False, True])
def test_frozen_steering_hooks_serve_any_batch_of_their_prompt(user, direct_effects):
    model, clt, trip, _ = user
    trip.disarm()
    tokens = _tokens(model)[None]
    hooks = tl_clt.steering_hooks(model, clt, IVS, tokens=tokens, direct_effects=direct_effects)
    one = _run(model, hooks, tokens)
    three = _run(model, hooks, tokens.repeat(3, 1))
    torch.testing.assert_close(three, one.expand(3, -1, -1), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="were built for tokens="):
        _run(model, hooks, tokens[:, :5])
    torch.testing.assert_close(_run(model, hooks, tokens), one, atol=0, rtol=0)
