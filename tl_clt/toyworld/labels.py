"""Ground-truth labels for the toy world's CLT features, defined from the corpus.

The toy world's latent structure is known: every prompt has an office (or a plain noun in its
place), a place, a year, and the era the year falls in. A feature's label says which of these it follows,
measured on a probe set of corpus prompts (every fact's sentence up to " was", each with a twin that
has a plain noun instead of the office):

- "year": at least half its activation sits on the year's tokens (" ", digits);
- "filler": it fires mostly without an office (office share of its activation <= 0.25);
- "era": it needs an office (office share >= 0.6) and its activation per decade is peaked: two
  adjacent decades hold >= 0.6 of the decade-mean activation (0.25 if it ignored the era);
- "place": it needs an office and one place holds >= 0.6 of the place-mean activation;
- "office": it needs an office and follows neither the era nor the place;
- "other": anything else (a template word, a position, a mix), and features that never fire.

Labels are used to measure the purity of proposed supernodes (`tl_clt.propose_supernodes`); they
are not an input to the proposals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.toyworld.corpus import (
    DEFAULT_PLACE,
    DEFAULT_TEMPLATE,
    FACT_TEMPLATES,
    HOLDERS,
    NOUNS,
    YEARS,
)

LABELS = ("office", "place", "year", "era", "filler", "other")
DECADES = tuple(range(1950, 2030, 10))
_FIELD = re.compile(r"\{(\w+)\}")

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class ProbePrompt:
    """A corpus prompt with its latent facts; `office` is None for a plain-noun twin."""

    text: str
    office: str | None
    place: str
    year: int
    spans: tuple[tuple[str, int, int], ...]  # (field, start, end) character spans, space included


def _fill(template: str, values: dict[str, str]) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """Format `template`, recording each field's character span (with the space before it)."""
    out, spans, last = "", [], 0
    for m in _FIELD.finditer(template):
        out += template[last : m.start()]
        start = len(out) - 1 if out.endswith(" ") else len(out)
        out += values[m.group(1)]
        spans.append((m.group(1), start, len(out)))
        last = m.end()
    return out + template[last:], tuple(spans)


def probe_prompts(year_step: int = 2) -> list[ProbePrompt]:
    """Fact prompts (every `year_step`-th year, every template), each followed by its plain-noun
    twin; a fixed order."""
    out = []
    keys = [(o, p, a) for (o, p, a), table in HOLDERS.items()]
    for i, (office, place, adj) in enumerate(keys):
        for j, year in enumerate(YEARS[::year_step]):
            templates = FACT_TEMPLATES + ((DEFAULT_TEMPLATE,) if DEFAULT_PLACE[office] == place else ())
            for k, template in enumerate(templates):
                noun = NOUNS[(i + j + k) % len(NOUNS)]
                for who in (office, None):
                    values = dict(office=who or noun, place=place, adj=adj, year=str(year))
                    text, spans = _fill(template, values)
                    out.append(ProbePrompt(text, who, place, year, spans))
    return out


@dataclass
class FeatureLabels:
    """Per-feature labels and the statistics they come from; tensors are [n_layers, n_features]."""

    label: list[list[str]]
    mass: Float[Tensor, "n_layers n_features"]  # total activation over the probe set
    year_share: Float[Tensor, "n_layers n_features"]
    office_share: Float[Tensor, "n_layers n_features"]
    era_peak: Float[Tensor, "n_layers n_features"]
    place_peak: Float[Tensor, "n_layers n_features"]

    def __getitem__(self, node: str) -> str:
        """Label of a feature node id "F:layer:pos:feature"."""
        _, layer, _, feature = node.split(":")
        return self.label[int(layer)][int(feature)]

    def counts(self) -> dict[str, int]:
        flat = [x for row in self.label for x in row]
        return {name: flat.count(name) for name in LABELS}


@torch.no_grad()
def probe_activations(
    model: HookedTransformer, clt: CrossLayerTranscoder, texts: list[str], batch_size: int = 256
) -> tuple[list[Tensor], list[list[tuple[int, int]]]]:
    """CLT activations [n_layers, pos, n_features] of each text (sink token excluded), and each
    token's character offsets. The toy CLT reads `ln2.hook_normalized * ln2.w`."""
    tok = model.tokenizer
    sink = tok.eos_token_id
    enc = [tok(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
    names = [f"blocks.{layer}.ln2.hook_normalized" for layer in range(clt.n_layers)]
    acts = []
    for start in range(0, len(texts), batch_size):
        chunk = enc[start : start + batch_size]
        width = 1 + max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), sink, dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, 1 : 1 + len(e["input_ids"])] = torch.tensor(e["input_ids"])
        _, cache = model.run_with_cache(ids.to(model.cfg.device), names_filter=names, return_type=None)
        layers = [
            clt.encode(cache[n].to(clt.dtype) * model.blocks[k].ln2.w.to(clt.dtype), k)
            for k, n in enumerate(names)
        ]
        batch = torch.stack(layers, 1).float().cpu()  # [b, n_layers, pos, n_features]
        acts += [batch[i, :, 1 : 1 + len(e["input_ids"])] for i, e in enumerate(chunk)]
    return acts, [e["offset_mapping"] for e in enc]


def _roles(prompt: ProbePrompt, offsets: list[tuple[int, int]]) -> list[str]:
    """Each token's field name ("office", "year", "place", ...) or "template"."""
    out = []
    for a, b in offsets:
        hit = [f for f, s, e in prompt.spans if a < e and b > s]
        out.append(hit[0] if hit else "template")
    return out


def _peak(means: Float[Tensor, "n_bins ..."], window: int) -> Float[Tensor, "..."]:
    """Largest share of the summed bin means held by `window` adjacent bins."""
    total = means.sum(0).clamp(min=1e-9)
    windows = torch.stack([means[i : i + window].sum(0) for i in range(len(means) - window + 1)])
    return windows.max(0).values / total


def _bin_means(values: list[Tensor], keys: list, levels: list) -> Float[Tensor, "n_levels ..."]:
    out = []
    for level in levels:
        hit = [v for v, k in zip(values, keys, strict=True) if k == level]
        out.append(torch.stack(hit).mean(0) if hit else torch.zeros_like(values[0]))
    return torch.stack(out)


def feature_labels(
    model: HookedTransformer, clt: CrossLayerTranscoder, prompts: list[ProbePrompt] | None = None
) -> FeatureLabels:
    """Label every CLT feature from its activations on `prompts` (default `probe_prompts()`)."""
    prompts = probe_prompts() if prompts is None else prompts
    acts, offsets = probe_activations(model, clt, [p.text for p in prompts])
    shape = (clt.n_layers, clt.n_features)
    mass, on_year = torch.zeros(shape), torch.zeros(shape)
    office_mass, noun_mass = torch.zeros(shape), torch.zeros(shape)
    per_prompt, decade, place = [], [], []
    for p, a, off in zip(prompts, acts, offsets, strict=True):
        year_tok = torch.tensor([r == "year" for r in _roles(p, off)])
        total, rest = a.sum(1), a[:, ~year_tok].sum(1)
        mass += total
        on_year += total - rest
        if p.office is None:
            noun_mass += rest
            continue
        office_mass += rest
        per_prompt.append(rest)
        decade.append(p.year // 10 * 10)
        place.append(p.place)
    places = sorted({p.place for p in prompts})
    era_peak = _peak(_bin_means(per_prompt, decade, list(DECADES)), 2)
    place_peak = _peak(_bin_means(per_prompt, place, places), 1)
    year_share = on_year / mass.clamp(min=1e-9)
    office_share = office_mass / (office_mass + noun_mass).clamp(min=1e-9)
    label = [
        [
            _label(float(mass[k, f]), float(year_share[k, f]), float(office_share[k, f]),
                   float(era_peak[k, f]), float(place_peak[k, f]))
            for f in range(clt.n_features)
        ]
        for k in range(clt.n_layers)
    ]  # fmt: skip
    return FeatureLabels(label, mass, year_share, office_share, era_peak, place_peak)


def _label(mass: float, year_share: float, office_share: float, era_peak: float, place_peak: float) -> str:
    if mass <= 0:
        return "other"
    if year_share >= 0.5:
        return "year"
    if office_share <= 0.25:
        return "filler"
    if office_share < 0.6:
        return "other"
    if era_peak >= 0.6:
        return "era"
    if place_peak >= 0.6:
        return "place"
    return "office"
