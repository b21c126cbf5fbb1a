"""The seed's story, found by `propose_supernodes` without a recipe, on the seed's prompt and on
held-out prompts (other offices, places, years, templates): every effect is measured here, by
steering the proposed groups in this process with attention frozen.

Expected directions come from the seed: the year group ablated and the era group steered down move
the answer to another holder of the same office; the office and "say a name" groups steered down
make a filler word the answer and names less likely than filler. The held-out prompts are the
first two of `held_out_prompts()` whose office differs from the seed's (a rule, not a pick);
`benchmarks/story.py` measures all of them.
"""

from __future__ import annotations

import pytest
import torch

import tl_clt
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.corpus import FILLERS, first_names
from tl_clt.toyworld.labels import _fill, _roles
from tl_clt.toyworld.story import SEED, held_out_prompts, story_roles

OTHER_OFFICES = [p for p in held_out_prompts() if p.fact.office != SEED.fact.office][:2]
PROMPTS = [SEED, *OTHER_OFFICES]


@pytest.fixture(scope="module")
def world():
    return load_toyworld()


def ids(model, words) -> list[int]:
    return [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]


def probs_after(model, clt, prompt, members, factor, graph) -> torch.Tensor:
    return tl_clt.steer(model, clt, prompt, tl_clt.scale(members, factor, graph))[-1].softmax(-1)


@pytest.fixture(scope="module", params=PROMPTS, ids=lambda p: p.prompt)
def case(request, world):
    model, clt = world
    sp = request.param
    graph = tl_clt.attribute(model, clt, sp.prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt)
    return sp, graph, proposals, story_roles(proposals, sp)


def test_the_model_answers_right(world, case):
    model, _ = world
    sp, *_ = case
    clean = model(tl_clt.to_tokens(model, sp.prompt)[None])[0, -1]
    assert model.tokenizer.decode([int(clean.argmax())]) == sp.answer


def test_all_four_roles_are_proposed(case):
    _, _, proposals, roles = case
    assert all(roles[r] for r in ("year", "office", "say a name", "era")), proposals.table()


@pytest.mark.parametrize(("role", "factor"), [("year", 0.0), ("era", -1.0)])
def test_year_and_era_groups_carry_the_era(world, case, role, factor):
    model, clt = world
    sp, graph, _, roles = case
    after = probs_after(model, clt, sp.prompt, roles[role], factor, graph)
    top = int(after.argmax())
    assert top in ids(model, sp.other_holders), model.tokenizer.decode([top])


@pytest.mark.parametrize("role", ["office", "say a name"])
def test_office_groups_carry_saying_a_name(world, case, role):
    model, clt = world
    sp, graph, _, roles = case
    after = probs_after(model, clt, sp.prompt, roles[role], -1.0, graph)
    filler = ids(model, sorted({" " + f.split()[0] for f in FILLERS}))
    names = ids(model, first_names())
    assert int(after.argmax()) in filler, model.tokenizer.decode([int(after.argmax())])
    assert after[names].sum() < after[filler].sum()


def test_era_group_fires_on_events_of_its_era_without_digits(world):
    """The seed's 'Events ~2010': the era group of the seed's prompt is more active on a prompt
    dated by an event of 2010 than by an event of 1969 (no digits in either)."""
    model, clt = world
    graph = tl_clt.attribute(model, clt, SEED.prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt)
    era = story_roles(proposals, SEED)["era"]
    keys = {(int(n.split(":")[1]), int(n.split(":")[3])) for n in era}

    def era_activation(prompt: str) -> float:
        acts = tl_clt.feature_activations(model, clt, prompt).to_dense()[:, -1]  # at the last word
        return float(sum(acts[layer, feature] for layer, feature in keys))

    near = era_activation("Fact: The president of the United States during the World Cup in South Africa was")
    far = era_activation("Fact: The president of the United States during the moon landing was")
    assert near > 2 * far and near > 0


def test_probe_prompts_know_where_each_field_is(world):
    model, _ = world
    text, spans = _fill("Fact: The {office} of {place} in {year} was", dict(office="king", place="Spain", year="1977"))
    assert text == "Fact: The king of Spain in 1977 was"
    offsets = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    probe = type("P", (), {"spans": spans})()
    roles = _roles(probe, offsets)
    pieces = [text[a:b] for a, b in offsets]
    assert [p for p, r in zip(pieces, roles) if r == "year"] == [" ", "1", "9", "7", "7"]
    assert [p for p, r in zip(pieces, roles) if r == "office"] == [" king"]
