"""The seed's story as a measurement on the toy world: prompts, roles of proposed groups, effects.

- `SEED`: the seed's prompt; `held_out_prompts()`: prompts the tutorial never uses, defined from
  the corpus: facts held out of training (years never seen for that office), two per (office,
  place) with more than one holder (the earliest and the latest held-out year), the templates taken
  in turn, so other offices, places, years and templates. Their sentences are not in the corpus, but
  where an event is dated in the prompt's year the corpus still reaches the holder through it
  (`event_reachable`, `reaching_events`): benchmarks/story.py reports both kinds apart.
- `story_roles(proposals, prompt)`: which proposed groups (from `tl_clt.propose_supernodes`, each
  whole: `proposals.whole(name)`) play the seed's four parts, read from the names and kinds the
  proposals gave them: "year" (sits on the year, reads its digits), "era" (on the year and fed by
  features, or at the answer and reads the year), "say a name" (at the answer, says names) and the
  office (named after the office's word).
- `story_effects(model, clt, prompt, graph, roles)`: each role steered with attention frozen, and
  whether the seed's effect holds:
  year or era steered down (x-1; `steering={"year": 0.0}` ablates the year instead, as the seed
  does: the issue allows either) -> the top answer is another holder of the same office
  (`top_holder`: where holders share the first name on top, " Harold", the surname the steered
  model gives after it tells which holder it is);
  office / "say a name" steered down (x-1) -> filler words up, names down: p(filler words) at
  least 5x what it was, p(names) below p(filler words) and below half of what it was (whether a
  filler word is also the top answer is recorded as `top_is_filler`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.prompts import to_tokens
from tl_clt.steering import scale, steer
from tl_clt.toyworld.corpus import (
    FACT_TEMPLATES,
    FILLERS,
    HOLDERS,
    Fact,
    event_facts,
    first_names,
    split_facts,
)

ROLES = ("year", "office", "say a name", "era")
# how each role is steered, and the factor: 0 ablates, -1 steers down
STEERING = {"year": -1.0, "office": -1.0, "say a name": -1.0, "era": -1.0}

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class StoryPrompt:
    """A fact prompt with what the model should answer and the other holders of its office."""

    prompt: str
    fact: Fact
    answer: str  # first-name token, e.g. " Barack"
    office_words: tuple[str, ...]  # the office's words, e.g. ("prime", "minister")
    holders: tuple[str, ...]  # full names of the office's holders, the answer's included

    @property
    def other_holders(self) -> tuple[str, ...]:
        """First-name tokens of the office's other holders (not sharing the answer's first name)."""
        return tuple(sorted({" " + n.split()[0] for n in self.holders} - {self.answer}))


def story_prompt(fact: Fact, template: str = FACT_TEMPLATES[0]) -> StoryPrompt:
    table = HOLDERS[next(k for k in HOLDERS if k[:2] == (fact.office, fact.place))]
    answer = " " + fact.name.split()[0]
    holders = tuple(sorted({n for n in table.values() if n}))
    return StoryPrompt(fact.prompt(template), fact, answer, tuple(fact.office.split()), holders)


SEED = story_prompt(Fact("president", "the United States", "US", 2010, "Barack Obama"))


def held_out_prompts(per_key: int = 2) -> list[StoryPrompt]:
    """Held-out facts of every office with more than one holder: the earliest and the latest
    held-out year of each (per_key=2), templates in turn; a fixed order."""
    _, held = split_facts(0)
    out: list[StoryPrompt] = []
    for key, table in HOLDERS.items():
        if len({n for n in table.values() if n}) < 2:
            continue
        facts = sorted((f for f in held if (f.office, f.place) == key[:2]), key=lambda f: f.year)
        picks = (
            facts
            if len(facts) <= per_key
            else [facts[round(i * (len(facts) - 1) / (per_key - 1))] for i in range(per_key)]
        )
        for fact in picks:
            out.append(story_prompt(fact, FACT_TEMPLATES[len(out) % len(FACT_TEMPLATES)]))
    return out


def validation_prompts(per_key: int = 2, test_per_key: int = 3) -> list[StoryPrompt]:
    """Other held-out facts, for choosing between worlds or rules without looking at the test prompts
    (`held_out_prompts(test_per_key)`, benchmarks/story.py's 21): per office with more than one holder,
    `per_key` facts evenly spread over the held-out years those do not use (where any are left: US and UK
    have none), templates in turn."""
    _, held = split_facts(0)
    used = {sp.fact for sp in held_out_prompts(test_per_key)}
    out: list[StoryPrompt] = []
    for key, table in HOLDERS.items():
        if len({n for n in table.values() if n}) < 2:
            continue
        facts = sorted(
            (f for f in held if (f.office, f.place) == key[:2] and f not in used), key=lambda f: f.year
        )
        step = len(facts) / per_key
        for fact in (
            [facts[int(step * (i + 0.5))] for i in range(per_key)] if len(facts) >= per_key else facts
        ):
            out.append(story_prompt(fact, FACT_TEMPLATES[(len(out) + 1) % len(FACT_TEMPLATES)]))
    return out


def reaching_events(prompt: StoryPrompt) -> tuple[str, ...]:
    """The events through which the corpus reaches the prompt's answer: `make_corpus` keeps every
    event-dated fact (`event_facts`, "The president of the United States during the London Olympics
    was Barack Obama.") and every event's date, so a held-out (office, place, year) whose year has an
    event is reachable year -> event -> holder without its own sentence. Empty when none."""
    f = prompt.fact
    return tuple(e.event for e in event_facts() if (e.office, e.place, e.year) == (f.office, f.place, f.year))


def event_reachable(prompt: StoryPrompt) -> bool:
    """Whether the corpus reaches the prompt's holder through an event of its year (`reaching_events`)."""
    return bool(reaching_events(prompt))


def story_roles(proposals, prompt: StoryPrompt) -> dict[str, list[str]]:
    """{role: node ids to steer} for the seed's four roles: each group whole (`proposals.whole`: its
    members and the features pruning left out where it sits); groups of one role are joined."""
    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for name, info in proposals.info.items():
        if info.kind in ("year", "era", "say a name"):
            roles[info.kind] += proposals.whole(name)
        elif info.kind == "word" and name.split(" #")[0] in prompt.office_words:
            roles["office"] += proposals.whole(name)
    return roles


def token_ids(model: HookedTransformer, words) -> list[int]:
    """First token id of each word (a leading space included)."""
    return [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]


def top_holder(model, clt, prompt: StoryPrompt, interventions, after) -> str | None:
    """The holder of the prompt's office the steered model names (full name), None when its top
    token is no holder's first name. `after`: the steered next-token probabilities [vocab]. Holders
    sharing that first name are told apart by the next token the same steering gives after it (the
    first token of each surname)."""
    best = int(after.argmax())
    same = [h for h in prompt.holders if token_ids(model, [" " + h.split()[0]])[0] == best]
    if len(same) <= 1:
        return same[0] if same else None
    first = " " + same[0].split()[0]
    following = steer(model, clt, prompt.prompt + first, interventions)[-1]
    surname = token_ids(model, [" " + h.split(maxsplit=1)[1] for h in same])
    return same[max(range(len(same)), key=lambda i: float(following[surname[i]]))]


@dataclass
class Effect:
    """One role steered: top answers and probabilities before and after, and whether it holds."""

    role: str
    n_features: int
    factor: float
    top_before: str
    top_after: str
    p_answer: tuple[float, float]
    p_names: tuple[float, float]
    p_filler: tuple[float, float]
    holds: bool
    top_is_filler: bool  # the stricter reading of "filler words likely": a filler word is on top
    holder_after: str | None = None  # year / era: the holder named after steering (`top_holder`)


@dataclass
class StoryResult:
    prompt: StoryPrompt
    top: str
    answered: bool
    effects: dict[str, Effect] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        """The model answers right and every role exists and has its effect."""
        return self.answered and all(r in self.effects and self.effects[r].holds for r in ROLES)


FILLER_WORDS = tuple(sorted({" " + f.split()[0] for f in FILLERS}))


def filler_effect_holds(p_names: tuple[float, float], p_filler: tuple[float, float]) -> bool:
    """The office / "say a name" effect from (before, after) probabilities of names and filler words:
    filler at least 5x what it was, names below filler and below half of what they were."""
    return p_filler[1] >= 5 * p_filler[0] and p_names[1] < p_filler[1] and p_names[1] < 0.5 * p_names[0]


@torch.no_grad()
def story_effects(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    prompt: StoryPrompt,
    graph,
    roles: dict[str, list[str]],
    steering: dict[str, float] | None = None,
) -> StoryResult:
    """Steer each role's features (attention frozen) and check the seed's effect (module docstring).
    `steering`: {role: factor} over `STEERING` (e.g. {"year": 0.0}: the year ablated, as in the seed)."""
    steering = {**STEERING, **(steering or {})}
    names = token_ids(model, first_names())
    filler = token_ids(model, FILLER_WORDS)
    answer = token_ids(model, [prompt.answer])[0]
    clean = model(to_tokens(model, prompt.prompt)[None])[0, -1].softmax(-1)
    top = model.tokenizer.decode([int(clean.argmax())])
    result = StoryResult(prompt, top, int(clean.argmax()) == answer)
    for role, members in roles.items():
        if not members:
            continue
        factor = steering[role]
        interventions = scale(members, factor, graph)
        after = steer(model, clt, prompt.prompt, interventions)[-1].softmax(-1)
        best = int(after.argmax())
        pn, pf = (
            (float(clean[names].sum()), float(after[names].sum())),
            (
                float(clean[filler].sum()),
                float(after[filler].sum()),
            ),
        )
        holder = None
        if role in ("year", "era"):
            holder = top_holder(model, clt, prompt, interventions, after)
            holds = holder is not None and holder != prompt.fact.name
        else:
            holds = filler_effect_holds(pn, pf)
        result.effects[role] = Effect(
            role, len(members), factor, top, model.tokenizer.decode([best]),
            (float(clean[answer]), float(after[answer])), pn, pf, holds, best in filler, holder,
        )  # fmt: skip
    return result
