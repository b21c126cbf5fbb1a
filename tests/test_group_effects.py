"""`tl_clt.group_effects`: the table of what steering each group does to the next token. Every number is
recomputed with the independent steering of tests/test_tutorials.py's Judge (raw safetensors tensors and
plain TransformerLens hooks, no tl_clt code) on the seed's prompt, the proposals' groups steered whole."""

from __future__ import annotations

import math

import pytest
import torch
from test_tutorials import Judge

import tl_clt
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.story import FILLER_WORDS, SEED

NAMES = [" Barack", " George", " Bill", " Ronald", " Donald"]


@pytest.fixture(scope="module")
def seed():
    model, clt = load_toyworld()
    graph = tl_clt.attribute(model, clt, SEED.prompt, verbose=False)
    proposals = tl_clt.propose_supernodes(graph.prune(0.8, 0.98), model=model, clt=clt, unpruned=graph)
    table = tl_clt.group_effects(
        model, clt, graph, proposals, token_sets={"names": NAMES, "filler": FILLER_WORDS}, batch_size=5
    )
    return model, clt, graph, proposals, table


def test_every_row_equals_the_independent_steering_of_its_group(seed):
    model, _, _, proposals, table = seed
    judge = Judge()
    names, filler = judge.ids(NAMES), judge.ids(FILLER_WORDS)
    clean = judge.logits(SEED.prompt)[-1].double().log_softmax(-1)
    top = int(clean.argmax())
    assert len(table) == 1 + 2 * len(proposals)
    assert list(table["group"]) == ["(clean)"] + [g for g in proposals for _ in (0, 1)]
    for _, row in table.iterrows():
        if row["group"] == "(clean)":
            logp = clean
            assert math.isnan(row["factor"]) and row["features"] == 0
        else:
            features = [n for n in proposals.whole(row["group"]) if n.startswith("F:")]
            assert row["features"] == len(features)
            logp = judge.steer(SEED.prompt, features, row["factor"])[-1].double().log_softmax(-1)
        p = logp.exp()
        first = model.tokenizer.decode([int(p.argmax())])
        assert row["top"].startswith(repr(first)), (row["group"], row["top"])
        assert row["top_changed"] == (int(p.argmax()) != top)
        assert row["p(clean top)"] == pytest.approx(float(p[top]), abs=1e-4)
        assert row["kl"] == pytest.approx(float((clean.exp() * (clean - logp)).sum()), abs=1e-4)
        assert row["p(names)"] == pytest.approx(float(p[names].sum()), abs=1e-4)
        assert row["p(filler)"] == pytest.approx(float(p[filler].sum()), abs=1e-4)
    # the table tells the seed's story: some group's steering moves the answer off " Barack"
    assert table["top_changed"].any() and table.iloc[0]["top"].startswith("' Barack'")


def test_hand_made_groups_steer_only_their_features(seed):
    """A plain dict of groups: members as given (token and error nodes are not steered), any factors,
    k tokens in `top`."""
    model, clt, graph, _, _ = seed
    feats = [graph.node_id(i) for i in range(4)]
    groups = {"two": feats[:2], "with a token": [feats[2], "T:3"], "one id": feats[3]}
    table = tl_clt.group_effects(model, clt, graph, groups, factors=[0.0, 2.0, 1.0], k=2)
    assert list(table["features"]) == [0, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert list(table["factor"])[1:] == [0.0, 2.0, 1.0] * 3
    assert all(len(t.split(", ")) == 2 for t in table["top"])
    unchanged = table[table["factor"] == 1.0]  # x1 is the clean prompt
    assert (unchanged["kl"].abs() < 1e-6).all() and not unchanged["top_changed"].any()
    steered = table[table["factor"] == 0.0]
    assert (steered["kl"] > 0).all()


@pytest.mark.parametrize("mode", ["unfrozen", "direct"])
def test_other_steering_modes_equal_steer_one_by_one(seed, mode):
    """`freeze_attention=False` and `direct_effects=True` reach the steering: each row equals `steer` in
    that mode (unfrozen and direct give other numbers than frozen)."""
    model, clt, graph, proposals, frozen = seed
    kw = dict(freeze_attention=mode != "unfrozen", direct_effects=mode == "direct")
    table = tl_clt.group_effects(model, clt, graph, proposals, factors=[-1.0], **kw)
    clean_top = int(model(graph.tokens[None])[0, -1].argmax())
    for _, row in table.iloc[1:].iterrows():
        ivs = tl_clt.scale([n for n in proposals.whole(row["group"]) if n.startswith("F:")], -1.0, graph)
        p = tl_clt.steer(model, clt, graph.tokens, ivs, **kw)[-1].double().softmax(-1)
        assert row["p(clean top)"] == pytest.approx(float(p[clean_top]), abs=1e-4), row["group"]
    same_rows = frozen[frozen["factor"] == -1.0].reset_index(drop=True)
    assert (table.iloc[1:].reset_index(drop=True)["kl"] - same_rows["kl"]).abs().max() > 1e-3


def test_bad_token_sets_and_factors_are_refused(seed):
    model, clt, graph, proposals, _ = seed
    with pytest.raises(ValueError, match=r"token_sets\['names'\].*tokens"):
        tl_clt.group_effects(model, clt, graph, proposals, token_sets={"names": [" Barack Obama"]})
    with pytest.raises(TypeError, match="factor"):
        tl_clt.group_effects(model, clt, graph, proposals, factors=["down"])


@pytest.mark.parametrize("grad", [True, False])
def test_the_gradient_mode_is_left_as_found(seed, grad):
    model, clt, graph, _, _ = seed
    with torch.set_grad_enabled(grad):
        tl_clt.group_effects(model, clt, graph, {"a": [graph.node_id(0)]})
        assert torch.is_grad_enabled() == grad
