"""The story measurement (`tl_clt.toyworld.story`, used by benchmarks/story.py and tutorial 01): its
held-out prompts are held out (and which of them the corpus reaches through an event of their year is what a
scan of the corpus' sentences finds), its roles come from the proposals' names, and the effects it reports are
what an independent steering computation (tests/test_tutorials.py's Judge: raw safetensors tensors and
plain TransformerLens hooks) measures. On the seed's prompt every effect holds; the held-out fractions are
measured by the benchmark, not asserted here.
"""

from __future__ import annotations

import re

import pytest
from test_tutorials import Judge

import tl_clt
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.corpus import FACT_TEMPLATES, fact_sentences, first_names, make_corpus
from tl_clt.toyworld.labels import _fill, _roles
from tl_clt.toyworld.story import (
    FILLER_WORDS,
    SEED,
    STEERING,
    event_reachable,
    held_out_prompts,
    reaching_events,
    story_effects,
    story_roles,
    token_ids,
    top_holder,
    validation_prompts,
)


@pytest.fixture(scope="module")
def world():
    return load_toyworld()


def test_held_out_prompts_are_held_out_and_varied(world):
    prompts = held_out_prompts()
    corpus = set(make_corpus(0))
    assert not corpus & set(fact_sentences([p.fact for p in prompts]))
    assert len({(p.fact.office, p.fact.place) for p in prompts}) >= 6
    assert len({p.fact.office for p in prompts}) >= 4 and len({p.fact.place for p in prompts}) >= 5
    assert {p.prompt for p in prompts}.isdisjoint({SEED.prompt})
    used = {t for t in FACT_TEMPLATES if any(p.prompt == p.fact.prompt(t) for p in prompts)}
    assert len(used) >= 3
    for p in prompts:
        assert p.answer not in p.other_holders and p.other_holders


def test_validation_prompts_are_held_out_and_apart_from_the_test_prompts():
    corpus = set(make_corpus(0))
    test, validation = held_out_prompts(3), validation_prompts()
    assert not corpus & set(fact_sentences([p.fact for p in validation]))
    assert not {p.fact for p in test} & {p.fact for p in validation}
    assert len({(p.fact.office, p.fact.place) for p in validation}) >= 4 and len(validation) >= 8
    assert SEED.fact not in {p.fact for p in validation}


def test_event_reachable_prompts_match_a_scan_of_the_corpus():
    """A held-out prompt is event-reachable when the corpus has a sentence dating an event in the
    prompt's year and a sentence naming the prompt's holder during that event; found here by reading
    the corpus' sentences with regular expressions, not from the corpus code."""
    corpus = make_corpus(0)
    year_of: dict[str, set[int]] = {}
    for pattern in (r"In (\d{4}) the world saw (.+)\.", r"Fact: In (\d{4}), (.+) made the news\."):
        for s in corpus:
            if m := re.fullmatch(pattern, s):
                year_of.setdefault(m[2], set()).add(int(m[1]))
    during = []  # (office, place, event, name)
    for s in corpus:
        if m := re.fullmatch(r"Fact: The (.+?) of (.+?) during (.+) was (.+)\.", s):
            during.append((m[1], m[2], m[3], m[4]))
        elif m := re.fullmatch(r"During (.+), the (.+?) of (.+?) was (.+)\.", s):
            during.append((m[2], m[3], m[1], m[4]))
    assert during and year_of
    prompts = held_out_prompts(3)
    for p in prompts:
        f = p.fact
        here = [(e, name) for o, pl, e, name in during if (o, pl) == (f.office, f.place)]
        found = sorted({e for e, _ in here if f.year in year_of.get(e, ())})
        assert sorted(reaching_events(p)) == found, p.prompt
        assert event_reachable(p) == bool(found)
        names = {name for e, name in here if e in found}
        assert names <= {f.name}  # the event leads to the prompt's own holder
    reach = [p for p in prompts if event_reachable(p)]
    assert 0 < len(reach) < len(prompts)  # both kinds are there to be reported apart


@pytest.fixture(scope="module")
def seed(world):
    model, clt = world
    graph = tl_clt.attribute(model, clt, SEED.prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt, unpruned=graph)
    roles = story_roles(proposals, SEED)
    return graph, proposals, roles, story_effects(model, clt, SEED, graph, roles)


def test_roles_are_read_from_the_proposals_names(seed):
    """Each role is its group whole: the members, then the features pruning left out where it sits."""
    _, proposals, roles, _ = seed
    for role, name in [("year", "year ~2010"), ("era", "era ~2010"), ("say a name", "say a name"),
                       ("office", "president")]:  # fmt: skip
        assert roles[role] == proposals[name] + proposals.info[name].pruned_out
        assert proposals.info[name].pruned_out  # the seed's prompt completes every role


def test_reported_effects_equal_an_independent_steering(world, seed):
    model, _ = world
    _, _, roles, result = seed
    judge = Judge()
    names = token_ids(model, first_names())
    filler = token_ids(model, FILLER_WORDS)
    others = token_ids(model, SEED.other_holders)
    clean = judge.logits(SEED.prompt)[-1].softmax(-1)
    assert result.answered == (model.tokenizer.decode([int(clean.argmax())]) == SEED.answer)
    for role, effect in result.effects.items():
        after = judge.steer(SEED.prompt, roles[role], STEERING[role])[-1].softmax(-1)
        assert effect.n_features == len(roles[role])
        assert effect.top_after == model.tokenizer.decode([int(after.argmax())])
        assert effect.p_names[1] == pytest.approx(float(after[names].sum()), abs=2e-3)
        assert effect.p_filler[1] == pytest.approx(float(after[filler].sum()), abs=2e-3)
        pn0, pn1 = float(clean[names].sum()), float(after[names].sum())
        pf0, pf1 = float(clean[filler].sum()), float(after[filler].sum())
        if role in ("year", "era"):
            expected = int(after.argmax()) in others  # the seed's holders' first names all differ
            assert effect.holder_after is not None
            assert " " + effect.holder_after.split()[0] == effect.top_after
        else:
            expected = pf1 >= 5 * pf0 and pn1 < pf1 and pn1 < 0.5 * pn0
        assert effect.holds == expected, role


@pytest.mark.parametrize("factor", [0.0, 0.5])
def test_steering_overrides_a_roles_factor_as_an_independent_steering_measures(world, seed, factor):
    """`steering={"year": f}` steers the year group by f instead of steering it down (benchmarks/story.py
    reports the seed's ablation, x0, beside the year steered down); the other roles keep `STEERING`."""
    model, clt = world
    graph, _, roles, default = seed
    result = story_effects(model, clt, SEED, graph, roles, steering={"year": factor})
    after = Judge().steer(SEED.prompt, roles["year"], factor)[-1].softmax(-1)
    effect = result.effects["year"]
    assert effect.factor == factor and STEERING["year"] == -1.0
    assert effect.top_after == model.tokenizer.decode([int(after.argmax())])
    assert effect.p_answer[1] == pytest.approx(float(after[token_ids(model, [SEED.answer])[0]]), abs=2e-3)
    down = Judge().steer(SEED.prompt, roles["year"], -1.0)[-1].softmax(-1)
    assert float((after - down).abs().sum()) > 0.05  # the factor changes what is measured
    others = token_ids(model, SEED.other_holders)
    assert effect.holds == (int(after.argmax()) in others)
    for role in ("office", "say a name", "era"):
        assert vars(result.effects[role]) == vars(default.effects[role])


def test_a_shared_first_name_is_told_apart_by_the_steered_surname(world):
    """Harold Wilson and Harold Macmillan both led the UK: the year effect on a 1967 prompt is read
    from the surname the steered model gives after " Harold", recomputed here by the Judge."""
    model, clt = world
    (sp,) = [p for p in held_out_prompts() if p.fact.name == "Harold Wilson"]
    assert {"Harold Wilson", "Harold Macmillan"} <= set(sp.holders)
    clean = model(tl_clt.to_tokens(model, sp.prompt)[None])[0, -1].softmax(-1)
    assert top_holder(model, clt, sp, [], clean) == "Harold Wilson"  # the model answers right
    graph = tl_clt.attribute(model, clt, sp.prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt, unpruned=graph)
    roles = story_roles(proposals, sp)
    effect = story_effects(model, clt, sp, graph, roles).effects["year"]
    judge = Judge()
    after = judge.steer(sp.prompt, roles["year"], STEERING["year"])[-1]
    top = model.tokenizer.decode([int(after.argmax())])
    assert effect.top_after == top
    same = [h for h in sp.holders if h.split()[0] == top.strip()]
    if len(same) == 1:
        expected = same[0]
    elif not same:
        expected = None
    else:
        following = judge.steer(sp.prompt + top, roles["year"], STEERING["year"])[-1]
        surname = judge.ids([" " + h.split(maxsplit=1)[1] for h in same])
        expected = max(zip(following[surname].tolist(), same, strict=True))[1]
    assert effect.holder_after == expected
    assert effect.holds == (expected not in (None, sp.fact.name))


def test_both_words_of_a_two_word_office_get_a_group_and_the_office_effect_holds(world):
    """ "prime" and "minister" of "prime minister" each get a group, the office role steers both together,
    and the office effect holds on UK 1967 (on the world shipped before, "prime" had a few features of
    little influence, kept only because the group filters' defaults keep every group: docs/supernodes.md,
    "The group filters")."""
    model, clt = world
    (sp,) = [p for p in held_out_prompts() if p.fact.name == "Harold Wilson"]
    assert sp.office_words == ("prime", "minister")
    graph = tl_clt.attribute(model, clt, sp.prompt, verbose=False)
    pruned = graph.prune(0.8, 0.98)
    proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph)
    assert {"prime", "minister"} <= set(proposals)
    roles = story_roles(proposals, sp)
    assert set(proposals.whole("prime")) | set(proposals.whole("minister")) == set(roles["office"])
    effects = story_effects(model, clt, sp, graph, roles).effects
    assert effects["office"].holds
    # without "prime", "minister" alone: the measured effect is weaker (names keep more of their mass)
    alone = {**roles, "office": list(proposals.whole("minister"))}
    minister_alone = story_effects(model, clt, sp, graph, alone).effects["office"]
    assert minister_alone.p_names[1] > effects["office"].p_names[1]


def test_on_the_seed_every_effect_holds(seed):
    """Measured on the shipped world (benchmarks/story.py); the effects themselves are checked against
    the Judge above."""
    _, _, _, result = seed
    assert result.answered and result.holds
    assert result.effects["year"].holds  # x-1: a president of another era
    assert result.effects["office"].holds  # x-1: filler words up, names down
    assert result.effects["say a name"].holds  # x-1: filler words up, names down
    assert result.effects["era"].holds  # x-1: a president of another era


def test_probe_prompts_know_where_each_field_is(world):
    model, _ = world
    template = "Fact: The {office} of {place} in {year} was"
    text, spans = _fill(template, dict(office="chancellor", place="Germany", year="1977"))
    assert text == "Fact: The chancellor of Germany in 1977 was"
    offsets = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    probe = type("P", (), {"spans": spans})()
    roles = _roles(probe, offsets)
    pieces = [text[a:b] for a, b in offsets]
    assert [p for p, r in zip(pieces, roles) if r == "year"] == [" ", "1", "9", "7", "7"]
    assert [p for p, r in zip(pieces, roles) if r == "office"] == [" chancellor"]
