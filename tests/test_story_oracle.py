"""benchmarks/story.py --oracle: the greedy search over the last word's features that bounds the strict
reading of "say a name" (a filler word on top). On the seed's prompt a few features suffice; what it
reports is what the independent steering of tests/test_tutorials.py's Judge measures, and each feature it
adds widened the margin it reports."""

from __future__ import annotations

import benchmark_scripts
import pytest
import torch
from test_tutorials import Judge

from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.story import FILLER_WORDS, SEED


@pytest.fixture(scope="module")
def story():
    return benchmark_scripts.load("story")


@pytest.fixture(scope="module")
def row(story):
    torch.set_grad_enabled(False)
    try:
        model, clt = load_toyworld()
        return story.oracle_row(model, clt, SEED, steps=3)
    finally:
        torch.set_grad_enabled(True)


def test_oracle_puts_a_filler_word_on_top_of_the_seed_prompt(row):
    last = len(Judge().tokens(SEED.prompt)) - 1
    assert 1 <= len(row["chosen"]) <= 3
    assert all(int(n.split(":")[2]) == last for n in row["chosen"])  # features on the last word only
    assert row["top_is_filler"] and row["top"] in FILLER_WORDS
    assert row["margins"][-1] > 0 > row["margins"][0]  # a name on top before, a filler word after
    assert all(b > a for a, b in zip(row["margins"], row["margins"][1:], strict=False))


def test_oracle_report_matches_an_independent_steering(row):
    judge = Judge()
    logits = judge.steer(SEED.prompt, row["chosen"], -1.0)
    p = logits[-1].float().softmax(-1)
    filler = judge.ids(list(FILLER_WORDS))
    assert judge.model.tokenizer.decode(p.argmax()) == row["top"]
    assert abs(float(p[filler].sum()) - row["p_filler"]) < 1e-4
    logp = p.log()
    other = logp.clone()
    other[filler] = -torch.inf
    assert abs(float(logp[filler].max() - other.max()) - row["margins"][-1]) < 1e-3
