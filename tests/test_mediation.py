"""The "carries" signal (`propose_supernodes(..., mediate=k)`, `tl_clt.proposals.mediators`): "say a name"
narrowed to the last-word features through which the most influential word group acts. The greedy choice
is recomputed by brute force with an independent steering (tests/test_tutorials.py's Judge: raw
safetensors tensors and plain TransformerLens hooks); the narrowed group is exactly what `mediators`
gives for the groups the proposals had without it; nothing else moves; and on the seed's prompt the
narrowed group, steered down, puts a filler word on top (the strict reading of the seed's effect)."""

from __future__ import annotations

import benchmark_scripts
import pytest
import torch
from test_tutorials import Judge

import tl_clt
from tl_clt.proposals import mediators
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.story import FILLER_WORDS, SEED

K = 20  # the benchmark's choice (docs/supernodes.md)


@pytest.fixture(scope="module")
def seed():
    model, clt = load_toyworld()
    graph = tl_clt.attribute(model, clt, SEED.prompt, verbose=False)
    pruned = graph.prune(0.8, 0.98)
    base = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph)
    narrowed = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph, mediate=K)
    return model, clt, graph, pruned, base, narrowed


def _top_word(proposals) -> str:
    words = [n for n, i in proposals.info.items() if i.kind == "word"]
    return max(words, key=lambda n: proposals.info[n].influence)


def test_greedy_choice_matches_a_brute_force_with_independent_steering(seed):
    model, clt, graph, _, base, _ = seed
    judge = Judge()
    source, candidates = base.whole(_top_word(base)), base.whole("say a name")[:8]
    target = judge.steer(SEED.prompt, source, -1.0)[-1].double().log_softmax(-1)

    def kl(nodes):
        q = judge.steer(SEED.prompt, nodes, -1.0)[-1].double().log_softmax(-1)
        return float((target.exp() * (target - q)).sum())

    expected, best = [], kl([])
    for _ in range(2):  # two greedy steps, every candidate tried at each
        scores = {c: kl(expected + [c]) for c in candidates if c not in expected}
        c = min(scores, key=scores.get)
        if scores[c] >= best:
            break
        expected.append(c)
        best = scores[c]
    assert expected  # the first step brings the output closer to the source's
    assert mediators(model, clt, graph, source, candidates, 2) == expected


def test_narrowed_group_is_the_mediators_of_the_top_word_and_nothing_else_moves(seed):
    model, clt, _, pruned, base, narrowed = seed
    chosen = mediators(model, clt, pruned, base.whole(_top_word(base)), base.whole("say a name"), K)
    assert set(narrowed.whole("say a name")) == set(chosen)
    assert set(chosen) < set(base.whole("say a name"))  # narrowed, not emptied
    rest = set(base["say a name"]) - set(chosen)
    assert rest
    others = {n: set(m) for n, m in narrowed.items() if n != "say a name"}
    joined = [n for n, m in others.items() if rest & m]
    assert len(joined) == 1 and narrowed.info[joined[0]].kind == "says"  # the rest: one group of its own
    assert rest <= others[joined[0]]
    for name, members in base.items():  # every other group keeps its members
        if name != "say a name":
            assert set(members) == others[name]
    ids = [m for members in narrowed.values() for m in members]
    assert len(ids) == len(set(ids)) == sum(map(len, base.values()))  # disjoint, none lost
    assert "carries" in narrowed.signals["signals"] and "carries" not in base.signals["signals"]


def test_batched_choice_equals_one_steering_per_pass(seed):
    """The greedy choice does not depend on how many steerings share a forward pass (the default batch
    runs 16; batch_size=1 is one pass per candidate, as before batching)."""
    model, clt, graph, _, base, _ = seed
    source, candidates = base.whole(_top_word(base)), base.whole("say a name")
    one = mediators(model, clt, graph, source, candidates, 6, batch_size=1)
    assert len(one) == 6
    assert mediators(model, clt, graph, source, candidates, 6, batch_size=7) == one


@pytest.mark.parametrize(("n", "k"), [(10, 3), (8, 20)])
def test_the_benchmark_counts_the_steerings_and_passes_mediators_runs(seed, monkeypatch, n, k):
    """benchmarks/mediate.py's table prints steerings and forward passes from a formula; it equals what
    `mediators` ran (k reached; all candidates taken or an early stop)."""
    from tl_clt.steering import Steerer

    mediate = benchmark_scripts.load("mediate")
    model, clt, graph, _, base, _ = seed
    counted = []
    real = Steerer.last

    def spy(self, steerings, *, batch_size):
        steerings = list(steerings)
        counted.append(len(steerings))
        return real(self, steerings, batch_size=batch_size)

    monkeypatch.setattr(Steerer, "last", spy)
    source, candidates = base.whole(_top_word(base)), base.whole("say a name")[:n]
    chosen = mediators(model, clt, graph, source, candidates, k, batch_size=4)
    passes = sum(-(-c // 4) for c in counted)
    assert mediate.steering_counts(n, k, len(chosen), 4) == (sum(counted), passes)


def test_the_cap_pushes_no_group_out(seed):
    model, clt, graph, pruned, base, _ = seed
    capped = tl_clt.propose_supernodes(
        pruned, model=model, clt=clt, unpruned=graph, mediate=K, max_groups=len(base)
    )
    assert set(capped) == set(base)  # the rest has no room: left out, no other group cut
    assert set(capped["say a name"]) < set(base["say a name"])


def test_narrowed_group_steered_down_puts_a_filler_word_on_top_of_the_seed_prompt(seed):
    *_, narrowed = seed
    judge = Judge()
    p = judge.steer(SEED.prompt, narrowed.whole("say a name"), -1.0)[-1].float().softmax(-1)
    assert judge.model.tokenizer.decode(p.argmax()) in FILLER_WORDS
    assert float(p[judge.ids([" Barack"])].sum()) < 0.5


# a validation prompt where the group without the signal puts a digit on top (benchmarks/story.py
# --prompts validation, with and without --mediate 20)
OTHER = "The German chancellor in 1953 was"


def test_on_another_prompt_only_the_narrowed_group_puts_a_filler_word_on_top():
    model, clt = load_toyworld()
    graph = tl_clt.attribute(model, clt, OTHER, verbose=False)
    pruned = graph.prune(0.8, 0.98)
    judge = Judge()
    tops = {}
    for k in (0, K):
        proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph, mediate=k)
        p = judge.steer(OTHER, proposals.whole("say a name"), -1.0)[-1].float().softmax(-1)
        tops[k] = judge.model.tokenizer.decode(p.argmax())
    assert tops[K] in FILLER_WORDS and tops[0] not in FILLER_WORDS, tops


@pytest.mark.parametrize(
    ("kwargs", "excerpt"), [(dict(mediate=-1), "mediate"), (dict(mediate=3, with_model=False), "mediate")]
)
def test_bad_mediate(seed, kwargs, excerpt):
    model, clt, _, pruned, _, _ = seed
    with_model = kwargs.pop("with_model", True)
    extra = dict(model=model, clt=clt) if with_model else {}
    with pytest.raises(ValueError, match=excerpt):
        tl_clt.propose_supernodes(pruned, **extra, **kwargs)


def test_no_grad_state_is_left_behind(seed):
    assert torch.is_grad_enabled()


def test_mediators_refuses_a_negative_count_and_chooses_nothing_without_candidates(seed):
    model, clt, graph, _, base, _ = seed
    with pytest.raises(ValueError, match="count"):
        mediators(model, clt, graph, base.whole(_top_word(base)), base.whole("say a name"), -1)
    assert mediators(model, clt, graph, base.whole(_top_word(base)), [], 5) == []
