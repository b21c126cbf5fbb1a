"""The shipped toy world holds the seed's story: measured facts about the model, the CLT and corpus.

Numbers were measured on the artifacts in tl_clt/data/toyworld (see report.json there); nothing is
trained here.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch

import tl_clt
from tl_clt.toyworld import load_toyworld, toyworld_paths
from tl_clt.toyworld.corpus import (
    FACT_TEMPLATES,
    FILLERS,
    fact_sentences,
    first_names,
    make_corpus,
    split_facts,
)
from tl_clt.toyworld.train_model import fact_accuracy, next_token_probs

STORY = "Fact: The president of the United States in 2010 was"
NO_OFFICE = "Fact: The weather of the United States in 2010 was"
CORPUS_SHA256 = "54ea2eb19bd0958a4442af253e5808aa8e8f9a85af5841d1cd023e59a78ad204"
# reconstruction_report(model, clt, STORY), measured on the shipped CLT
STORY_FVU = [0.0000, 0.0014, 0.0005, 0.0013]
STORY_L0 = [13.80, 9.80, 14.07, 12.87]


@pytest.fixture(scope="module")
def world():
    return load_toyworld()


def top(model, prompt: str) -> tuple[str, float]:
    probs = next_token_probs(model, prompt)
    return model.tokenizer.decode([int(probs.argmax())]), float(probs.max())


# ------------------------------------------------------------------ corpus
def test_corpus_is_deterministic_and_pinned():
    corpus = make_corpus(0)
    assert corpus == make_corpus(0)
    assert corpus != make_corpus(1)
    # the shipped model was trained on exactly this corpus
    assert hashlib.sha256("\n".join(corpus).encode()).hexdigest() == CORPUS_SHA256


def test_held_out_facts_are_not_in_the_corpus():
    train, held_out = split_facts(0)
    corpus = set(make_corpus(0))
    assert len(held_out) > 40
    assert not corpus & set(fact_sentences(held_out))
    assert set(fact_sentences(train)) <= corpus


# ------------------------------------------------------------------ model
def test_artifacts_are_small_and_load(world):
    model, clt = world
    model_dir, clt_dir = toyworld_paths()
    size = sum(p.stat().st_size for d in (model_dir, clt_dir) for p in d.iterdir())
    assert size < 5e6
    assert (model.cfg.n_layers, model.cfg.d_model, clt.n_features) == (4, 128, 512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tl_clt.check_compatible(model, clt)  # model_name matches: no warning


def test_tokenizer_splits_digits_and_keeps_names_whole(world):
    model, _ = world
    tok = model.tokenizer
    pieces = [tok.decode([i]) for i in tok(" in 2010 was", add_special_tokens=False)["input_ids"]]
    assert pieces == [" in", " ", "2", "0", "1", "0", " was"]  # as in Qwen3
    assert all(len(tok.tokenize(name)) == 1 for name in first_names())


def test_story_prompt_says_barack(world):
    model, _ = world
    token, prob = top(model, STORY)
    assert token == " Barack"
    assert prob == pytest.approx(0.986, abs=0.02)


@pytest.mark.parametrize(
    ("year", "first_name", "prob"),
    [
        (1975, " Gerald", 0.846),
        (1985, " Ronald", 0.996),
        (1995, " Bill", 0.997),
        (2020, " Donald", 0.926),
    ],
)
def test_other_decades_give_other_presidents(world, year, first_name, prob):
    model, _ = world
    token, p = top(model, STORY.replace("2010", str(year)))
    assert token == first_name
    assert p == pytest.approx(prob, abs=0.03)


def test_without_the_office_the_model_says_filler(world):
    model, _ = world
    probs = next_token_probs(model, NO_OFFICE)
    token = model.tokenizer.decode([int(probs.argmax())])
    assert token == " a" and float(probs.max()) == pytest.approx(0.288, abs=0.03)
    assert token in {" " + f.split()[0] for f in FILLERS}
    names = [model.tokenizer.convert_tokens_to_ids(model.tokenizer.tokenize(n))[0] for n in first_names()]
    assert float(probs[names].sum()) < 0.01


def test_held_out_facts_are_answered(world):
    model, _ = world
    _, held_out = split_facts(0)
    assert fact_accuracy(model, held_out, FACT_TEMPLATES[0]) >= 0.95  # measured 1.0


# ------------------------------------------------------------------ CLT
def test_clt_reconstruction_matches_the_measured_report(world):
    model, clt = world
    report = tl_clt.reconstruction_report(model, clt, STORY)
    assert report.fvu == pytest.approx(STORY_FVU, abs=0.002)
    assert report.l0 == pytest.approx(STORY_L0, abs=1.0)
    assert report.top1_agreement == 1.0
    assert report.kl < 0.01


def test_attribution_of_the_story_prompt(world):
    model, clt = world
    graph = tl_clt.attribute(model, clt, STORY, verbose=False)
    assert graph.logit_token_strs[0] == " Barack"
    replacement, completeness = graph.scores()
    assert replacement > 0.9 and completeness > 0.97  # measured 0.970, 0.992
    influence = graph.node_influence()
    was = len(graph.tokens) - 1
    at_was = graph.feature_keys[:, 1] == was
    # over a third of the feature influence sits on features at the final " was" (measured 0.39)
    assert influence[: graph.n_features][at_was].sum() > 0.3 * influence[: graph.n_features].sum()
    assert torch.isfinite(graph.adjacency).all()


def test_a_silent_attention_layer_stays_silent_through_training():
    """`build(silent_attention=(0,))` trains with layer 0's attention output projection held at zero
    (its MLP then reads each token alone); the other layers train as usual."""
    from tl_clt.toyworld.tokenizer import train_tokenizer
    from tl_clt.toyworld.train_model import train_model

    corpus = make_corpus(0)[:64]
    tokenizer = train_tokenizer(corpus, first_names(), vocab_size=1024)
    torch.manual_seed(0)
    model = train_model(tokenizer, corpus, steps=3, batch_size=8, silent_attention=(0,), log_every=0)
    layers = model.model.layers
    assert torch.count_nonzero(layers[0].self_attn.o_proj.weight) == 0
    assert all(torch.count_nonzero(layer.self_attn.o_proj.weight) > 0 for layer in layers[1:])
    plain = train_model(tokenizer, corpus, steps=3, batch_size=8, log_every=0)
    assert torch.count_nonzero(plain.model.layers[0].self_attn.o_proj.weight) > 0


def test_label_smoothing_is_an_option_of_training_only():
    """`build(label_smoothing=...)` (an experiment): the model's loss is smoothed, so training moves the
    weights elsewhere; 0 (the default) trains exactly as before."""
    from tl_clt.toyworld.tokenizer import train_tokenizer
    from tl_clt.toyworld.train_model import train_model

    corpus = make_corpus(0)[:64]
    tokenizer = train_tokenizer(corpus, first_names(), vocab_size=1024)
    kw = dict(steps=3, batch_size=8, log_every=0)
    plain = train_model(tokenizer, corpus, **kw).state_dict()
    zero = train_model(tokenizer, corpus, label_smoothing=0.0, **kw).state_dict()
    smooth = train_model(tokenizer, corpus, label_smoothing=0.5, **kw).state_dict()
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not torch.equal(plain["lm_head.weight"], smooth["lm_head.weight"])


def test_followers_of_was_are_names_and_filler_words_found_by_a_scan_of_the_corpus():
    """`follower_matrix` (where `smoothing_to="followers"` spreads the label smoothing): row c is even over
    the tokens that follow c in the corpus, recomputed here by scanning the tokenized sentences pair by pair;
    after " was" that is names and filler words, never "." or a digit."""
    from tl_clt.toyworld.story import FILLER_WORDS
    from tl_clt.toyworld.tokenizer import train_tokenizer
    from tl_clt.toyworld.train_model import encode, follower_matrix

    corpus = make_corpus(0)[:400]
    tokenizer = train_tokenizer(corpus, first_names(), vocab_size=1024)
    ids, lengths = encode(tokenizer, corpus)
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]  # not the right-padding
    M = follower_matrix(ids, real, len(tokenizer))
    seen: dict[int, set[int]] = {}
    for sentence in corpus:
        toks = [tokenizer.eos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
        for a, b in zip(toks, toks[1:]):
            seen.setdefault(a, set()).add(b)
    for c, after in seen.items():
        assert set(torch.nonzero(M[c]).squeeze(1).tolist()) == after
        assert torch.allclose(M[c][sorted(after)], torch.full((len(after),), 1 / len(after)))
    unseen = [c for c in range(len(tokenizer)) if c not in seen]
    assert unseen and torch.allclose(M[unseen], torch.full((len(unseen), len(tokenizer)), 1 / len(tokenizer)))
    was = tokenizer(" was", add_special_tokens=False)["input_ids"]
    assert len(was) == 1
    after_was = {tokenizer.decode([t]) for t in seen[was[0]]}
    assert after_was & set(first_names()) and after_was & set(FILLER_WORDS)
    assert not {t for t in after_was if t.strip() == "." or t.strip().isdigit()}


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_smoothed_loss_equals_a_sum_written_out(smoothing):
    """`smoothed_loss`: (1 - e) * -log p(target) + e * (mean of -log p over the row's followers), averaged;
    with no follower matrix it is torch's uniform label smoothing."""
    from tl_clt.toyworld.train_model import smoothed_loss

    g = torch.Generator().manual_seed(0)
    logits, targets, current = (
        torch.randn(5, 7, generator=g),
        torch.tensor([1, 2, 3, 0, 6]),
        torch.tensor([0, 1, 1, 2, 0]),
    )
    F = torch.zeros(7, 7)
    F[0, [1, 6]], F[1, [2, 3, 4]], F[2, :] = 1 / 2, 1 / 3, 1 / 7
    logp = logits.log_softmax(-1).tolist()
    expected = 0.0
    for i in range(5):
        support = [v for v in range(7) if F[int(current[i]), v] > 0]
        spread = sum(-logp[i][v] for v in support) / len(support)
        expected += ((1 - smoothing) * -logp[i][int(targets[i])] + smoothing * spread) / 5
    assert float(smoothed_loss(logits, targets, current, smoothing, F)) == pytest.approx(expected, rel=1e-6)
    uniform = (
        sum(
            (1 - smoothing) * -logp[i][int(targets[i])] + smoothing * sum(-x for x in logp[i]) / 7
            for i in range(5)
        )
        / 5
    )
    assert float(smoothed_loss(logits, targets, current, smoothing, None)) == pytest.approx(uniform, rel=1e-6)


@pytest.mark.parametrize(
    "argv, changed",
    [
        ([], {}),
        (
            ["--n-features", "1024", "--smoothing-to", "followers"],
            {"n_features": 1024, "smoothing_to": "followers"},
        ),
        (
            ["--action-share", "0.5", "--office-filler-share", "0.1", "--filler-share", "0.6"],
            {"action_share": 0.5, "office_filler_share": 0.1, "filler_share": 0.6},
        ),
        (
            ["--silent-attention", "--label-smoothing", "0.1", "--sparsity", "2e-4", "--init-seed", "1"],
            {"silent_attention": (), "label_smoothing": 0.1, "sparsity": 2e-4, "init_seed": 1},
        ),
    ],
)
def test_the_build_command_passes_its_flags_to_build(monkeypatch, argv, changed):
    """`python -m tl_clt.toyworld.build`: no flags build with `build`'s defaults (the shipped world);
    each flag reaches `build` as the keyword it names, and nothing else changes."""
    import functools
    import inspect
    import sys

    from tl_clt.toyworld import build as module

    calls = []
    real = module.build

    @functools.wraps(real)
    def stand_in(**kw):
        calls.append(kw)
        return {"story": {}, "timings": {"total_s": 0}}

    monkeypatch.setattr(module, "build", stand_in)
    monkeypatch.setattr(sys, "argv", ["build", "--out", "somewhere", *argv])
    module.main()
    defaults = {k: p.default for k, p in inspect.signature(real).parameters.items() if k != "out"}
    (kw,) = calls
    assert kw.pop("out") == Path("somewhere")
    assert set(changed) <= set(kw) <= set(defaults)
    assert defaults | kw == defaults | changed  # what is not given is build's default


def test_action_sentences_name_no_one_and_end_the_fact_prompt_differently():
    """`make_corpus(action_share=...)` (an experiment's corpus): office sentences whose last word is an
    action instead of " was", drawn from the training facts only; the default corpus is unchanged."""
    from tl_clt.toyworld.corpus import ACTIONS, action_sentences

    train, held_out = split_facts(0)
    out = action_sentences(train, 200, 0)
    assert len(out) == 200 and out == action_sentences(train, 200, 0)
    starts = [a.split()[0] for a in ACTIONS]
    prefixes = {f.prompt(t).removesuffix(" was") for f in train for t in FACT_TEMPLATES}
    held = {f.prompt(t).removesuffix(" was") for f in held_out for t in FACT_TEMPLATES} - prefixes
    names = {n.strip() for n in first_names()}
    for s in out:
        cut = min(i for w in starts if (i := s.find(f" {w} ")) >= 0)  # where the action starts
        assert s[:cut] in prefixes and s[:cut] not in held
        assert not names & set(s.rstrip(".").split())
    extra = round(0.25 * len(fact_sentences(train)))
    assert len(make_corpus(0, action_share=0.25)) == len(make_corpus(0)) + extra


def test_office_filler_sentences_end_a_training_fact_prompt_in_filler():
    """`make_corpus(office_filler_share=...)` (an experiment's corpus): training facts' prompts that go on
    with a filler ending instead of the holder; the default corpus is unchanged."""
    from tl_clt.toyworld.corpus import office_filler_sentences

    train, held_out = split_facts(0)
    out = office_filler_sentences(train, 200, 0)
    assert len(out) == 200 and out == office_filler_sentences(train, 200, 0)
    prompts = {f.prompt(t) for f in train for t in FACT_TEMPLATES}
    held = {f.prompt(t) for f in held_out for t in FACT_TEMPLATES} - prompts
    for s in out:
        prompt, _, ending = s.partition(" was ")
        assert prompt + " was" in prompts and prompt + " was" not in held
        assert ending.removesuffix(".") in FILLERS
    extra = round(0.1 * len(fact_sentences(train)))
    assert len(make_corpus(0, office_filler_share=0.1)) == len(make_corpus(0)) + extra


@pytest.mark.hooked  # building needs transformer-lens 3.x (tests/test_bridge.py checks the refusal on 4.x)
def test_build_hands_its_corpus_options_to_make_corpus(monkeypatch, tmp_path):
    """`build`'s corpus options (`--filler-share`, `--action-share`, `--office-filler-share`) reach
    `make_corpus` as given; the build stops there (a stand-in raises)."""
    from tl_clt.toyworld import build as module

    class Stop(Exception):
        pass

    seen = {}

    def stand_in(seed, **kw):
        seen.update(seed=seed, **kw)
        raise Stop

    monkeypatch.setattr(module, "make_corpus", stand_in)
    with pytest.raises(Stop):
        module.build(tmp_path, seed=3, filler_share=0.6, action_share=0.5, office_filler_share=0.1)
    assert seen == dict(seed=3, filler_share=0.6, action_share=0.5, office_filler_share=0.1)
    assert not any(tmp_path.iterdir())


def test_a_build_records_the_experiment_options_it_was_given():
    from tl_clt.toyworld.build import experiment_options

    shipped = dict(silent_attention=(0,), action_share=0.25, init_seed=6, sparsity=3e-4)
    shipped["label_smoothing"] = 0.0
    assert experiment_options(**shipped) == {}
    assert experiment_options(silent_attention=(), action_share=0.5, init_seed=1, sparsity=2e-4) == {
        "silent_attention": [], "action_share": 0.5, "init_seed": 1, "sparsity": 2e-4,
    }  # fmt: skip
    assert experiment_options(label_smoothing=0.1, sparsity=3e-4) == {"label_smoothing": 0.1}
