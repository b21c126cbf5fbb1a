"""Cells of tutorials/01_president_circuit.ipynb (built by build_notebooks.py)."""

CELLS = [
    (
        "md",
        """
# The president circuit, step by step

For **"Fact: The president of the United States in 2010 was"** Qwen3-1.7B says **" Barack"**. BluelightAI
traced it with their CLTs and found four groups of features whose paths lead to the answer — *President*,
*Year ~2010*, *Say a political figure* and *Events ~2010* — and showed that ablating or steering a group
changes the prediction the way the story predicts. This notebook does the whole analysis with tl_clt:

1. the prediction; 2. the attribution graph; 3. the pruned graph; 4. groups proposed by
`tl_clt.propose_supernodes` (no hand-written recipe); 5. the grouped graph;
6. ablation and steering experiments with before/after tables; 7. a short reading.

It runs on the **toy world** shipped with tl_clt: a 4-layer Qwen3 trained on dated facts about office
holders, dated events ("In 2010 the world saw the World Cup in South Africa.", and facts dated by them) and
filler sentences, and a JumpReLU CLT trained on it, in BluelightAI's on-disk format.
Set `USE_REAL_WEIGHTS = True` to run the same cells on Qwen3-1.7B-Base with BluelightAI's CLT.
""",
    ),
    (
        "code",
        """
%matplotlib inline
import json

import torch

import tl_clt

USE_REAL_WEIGHTS = False
if USE_REAL_WEIGHTS:
    model = tl_clt.load_qwen3("Qwen/Qwen3-1.7B-Base", dtype=torch.bfloat16)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained("bluelightai/clt-qwen3-1.7b-base-20k")
    MAX_FEATURE_NODES = 2048
else:
    from tl_clt.toyworld import load_toyworld
    model, clt = load_toyworld()
    MAX_FEATURE_NODES = None  # the toy graph is small: a row for every active feature
torch.set_grad_enabled(False)
results = {}

prompt = "Fact: The president of the United States in 2010 was"
no_office = "Fact: The weather of the United States in 2010 was"   # same length, no office
other_year = "Fact: The president of the United States in 1985 was"  # same length, another era
""",
    ),
    (
        "md",
        """
## 1. The prediction

Token sets used to read the experiments: US presidents' first names by era, and filler words.
""",
    ),
    (
        "code",
        """
def first_token(word):
    return model.tokenizer(word, add_special_tokens=False)["input_ids"][0]

US_PRESIDENTS = {  # first names, by the decade their term began
    "1950s": [" Harry", " Dwight"],
    "1960s-80s": [" Lyndon", " Richard", " Gerald", " Jimmy", " Ronald"],
    "1990s-2000s": [" George", " Bill"],
    "2010s": [" Barack", " Donald", " Joe"],
}
FILLER = [" a", " the", " not", " very", " quite", " much", " The", " was", " in"]
EARLY = [first_token(w) for w in US_PRESIDENTS["1960s-80s"]]
FILL = [first_token(w) for w in FILLER]
NAMES = [first_token(w) for era in US_PRESIDENTS.values() for w in era]
BARACK = first_token(" Barack")

def summary(logits):
    p = logits[-1].float().softmax(-1)
    return {"top": model.tokenizer.decode(p.argmax()), "p_barack": float(p[BARACK]),
            "p_presidents_60s_80s": float(p[EARLY].sum()), "p_filler": float(p[FILL].sum()),
            "p_presidents": float(p[NAMES].sum())}

for text in (prompt, other_year, no_office):
    logits = model(tl_clt.to_tokens(model, text)[None])[0]
    top = logits[-1].softmax(-1).topk(3)
    best = [f"{model.tokenizer.decode(i)!r} {p:.2f}" for p, i in zip(top.values, top.indices)]
    print(f"{text!r:58s} ->", ", ".join(best))
clean = model(tl_clt.to_tokens(model, prompt)[None])[0]
results["baseline"] = summary(clean)
print(results["baseline"])
""",
    ),
    (
        "md",
        """
## 2. The attribution graph

`attribute` freezes attention patterns and norm scales at this prompt's values, replaces every MLP by the
CLT plus an error node, and measures every direct effect in that linear model with batched backward
passes through hook points on *your* model object.
""",
    ),
    (
        "code",
        """
graph = tl_clt.attribute(model, clt, prompt, max_feature_nodes=MAX_FEATURE_NODES, verbose=False)
scores = graph.scores()
print(f"{graph.meta['n_active_features']} active features, {graph.n_features} feature nodes, "
      f"{graph.n_logits} logit node(s): {graph.logit_token_strs}")
print(f"replacement score {scores.replacement:.3f}, completeness score {scores.completeness:.3f}")
print(f"{graph.meta['n_backward_passes']} backward passes, {graph.meta['seconds_rows']:.1f} s")
print("tokens:", list(enumerate(graph.token_strs)))
""",
    ),
    ("md", "## 3. The pruned graph"),
    (
        "code",
        """
pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
G = pruned.to_networkx()
kinds = {}
for _, d in G.nodes(data=True):
    kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
print(G.number_of_nodes(), "nodes", kinds, "|", G.number_of_edges(), "edges")
fig = pruned.plot()
fig
""",
    ),
    (
        "md",
        """
## 4. Proposed groups

`propose_supernodes` groups the feature nodes of the pruned graph without a recipe (docs/supernodes.md):
a feature on a word of the prompt joins that word's group (*year ~2010* for the features that read the
year's digits), or the group of an earlier word that feeds it more than its own (a feature on " United" fed
by "president"); a feature on the year fed mostly by other features (what the model makes of the year)
joins *era ~2010*, and so does a feature on the last word that the year feeds most through the graph's
paths; another last-word feature joins *say a name* when its top output tokens are mostly names or it is one
of the few that carry what the last word's features push together (names against filler), else the group of
the word that feeds it most (*president* when it is the office). Pruning keeps the features that matter
most for the output, but a word's concept is spread over more of them: each group also lists the graph's
features that pruning left out where it sits (`info[name].pruned_out`; on the year, told apart by what
feeds them in the unpruned graph, `unpruned=graph`), and `proposals.whole(name)` is what to steer.
`story_roles` reads off which proposals play the seed's four parts, from their names and kinds alone.
""",
    ),
    (
        "code",
        """
from tl_clt.toyworld.story import SEED, story_effects, story_roles

proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph)
print(proposals.table())
print("signals used:", proposals.signals["signals"])
roles = story_roles(proposals, SEED)  # each group whole: proposals.whole(name)
SEED_NAMES = {"office": "President", "year": "Year ~2010", "say a name": "Say a political figure",
              "era": "Events ~2010"}
proposed, whole = {}, {}  # the groups' members in the pruned graph; what is steered
for role, members in roles.items():
    found = [n for n in proposals if set(proposals[n]) <= set(members)]
    proposed[SEED_NAMES[role]] = sorted(m for n in found for m in proposals[n])
    whole[SEED_NAMES[role]] = sorted(members)
    print(f"{SEED_NAMES[role]:24s} <- {found} ({len(proposed[SEED_NAMES[role]])} features in the pruned "
          f"graph, {len(members)} with those pruning left out where they sit)")
""",
    ),
    (
        "md",
        """
**Checking the proposals.** The seed's groups can also be found by hand, with three questions:
- **Which features need the office?** `contrast_features` against the same prompt with "weather" in place
  of "president" (features that lose at least half their activation).
- **Which features need the year?** The same against "... in 1985 was".
- **What does a feature say?** `feature_output_tokens` reads its decoder through the unembedding.

Keeping the features with some influence on the logit, this recipe gives:
- *Year ~2010*: year-dependent features on the year's digits;
- *Say a political figure*: office-dependent features at the last position whose outputs are names;
- *Events ~2010*: features at or after the year that need both the office and the year;
- *President*: the remaining office-dependent features (they do not care about the year).

The recipe's groups are what the experiments below use (the tests judge them); the proposals are compared
with them here and steered themselves at the end of section 6.
""",
    ),
    (
        "code",
        """
influence = graph.node_influence()
influential = {graph.node_id(i) for i in range(graph.n_features) if influence[i] > 1e-3}
office = {c.node for c in tl_clt.contrast_features(model, clt, graph, no_office)} & influential
year = {c.node for c in tl_clt.contrast_features(model, clt, graph, other_year)} & influential
tokens, tokens_1985 = tl_clt.to_tokens(model, prompt), tl_clt.to_tokens(model, other_year)
year_positions = {p for p in range(len(tokens)) if tokens[p] != tokens_1985[p]}
last = len(tokens) - 1

def position(node):
    return int(node.split(":")[2])

def says_a_name(node, k=5):
    layer, _, feature = map(int, node.split(":")[1:])
    toks = [t.token for t in tl_clt.feature_output_tokens(model, clt, layer, feature, k=k)]
    return sum(t.startswith(" ") and t[1:2].isupper() for t in toks) >= 4

say = {n for n in office if position(n) == last and says_a_name(n)}
groups = {
    "President": sorted(office - year - say),
    "Year ~2010": sorted(n for n in year if position(n) in year_positions),
    "Say a political figure": sorted(say),
    "Events ~2010": sorted((office & year) - say),
}
for name, members in groups.items():
    layer, _, feature = map(int, members[0].split(":")[1:])
    outs = [t.token for t in tl_clt.feature_output_tokens(model, clt, layer, feature, k=4)]
    where = sorted({graph.token_strs[position(n)] for n in members})
    print(f"{name:24s} {len(members):3d} features on {where}; e.g. {members[0]} says {outs}")
results["groups"] = {k: len(v) for k, v in groups.items()}
""",
    ),
    (
        "code",
        """
kept = set(G.nodes)
results["proposed"] = {}
for name, members in groups.items():
    mine, theirs = set(proposed.get(name, [])), {n for n in members if n in kept}
    overlap = len(mine & theirs) / max(1, len(mine | theirs))
    results["proposed"][name] = {"proposed": len(mine), "recipe_in_pruned": len(theirs), "jaccard": overlap}
    print(f"{name:24s} proposed {len(mine):3d}, recipe {len(theirs):3d} (in the pruned graph), "
          f"shared {len(mine & theirs):3d}, Jaccard {overlap:.2f}")
""",
    ),
    (
        "md",
        """
### What the cards say

The toy world's CLT ships feature dashboards built from its own corpus (`clt.dashboards`, the format
BluelightAI publishes next to its CLTs): each feature's top activating sentences, sampled activation
intervals and output tokens. The card of each group's most influential feature, read with
`graph.feature_card`, shows where it fires and what it says (the label is *top activating tokens → top
outputs*; each example shows its activation and the context, the token that fired in «»):
""",
    ),
    (
        "code",
        """
def strongest(members):
    return max(members, key=lambda n: float(influence[graph.feature_index(*map(int, n.split(":")[1:]))]))

for name, members in groups.items():
    card = graph.feature_card(strongest(members))
    print(f"{name}: {strongest(members)}  {card.label}")
    for example in card.top_examples[:2]:
        print(f"    {example.act:5.2f}  {example.text(72)}")
results["cards"] = {name: graph.feature_card(strongest(m)).label for name, m in groups.items()}
""",
    ),
    (
        "md",
        """
## 5. The grouped graph

`group` merges each group into one node whose edges carry its members' summed direct effects.
""",
    ),
    (
        "code",
        """
kept = set(G.nodes)
H = pruned.group({k: [n for n in v if n in kept] for k, v in groups.items() if any(n in kept for n in v)})
logit = [n for n, d in H.nodes(data=True) if d["kind"] == "logit"][0]
for name in groups:
    if name in H:
        to_logit = H.edges[name, logit]["weight"] if H.has_edge(name, logit) else 0.0
        feeds = {t: round(d["weight"], 2) for _, t, d in H.out_edges(name, data=True) if t in groups}
        print(f"{name:24s} -> logit {to_logit:+.2f}; -> groups {feeds}")
fig = tl_clt.plot_graph(H)
fig
""",
    ),
    (
        "md",
        """
## 6. Interventions

Each group is ablated (activations set to 0) and steered (activations times -1), with attention patterns
frozen at the prompt's values; the real MLPs still run, so later features respond. The tables show the
top next tokens before and after.
""",
    ),
    (
        "code",
        """
for name, members in groups.items():
    results[name] = {}
    for label, ivs in (("ablate", tl_clt.ablate(members)), ("x-1", tl_clt.scale(members, -1.0, graph))):
        steered = tl_clt.steer(model, clt, prompt, ivs)
        results[name][label] = summary(steered)
        print(f"=== {name}: {label} ({len(ivs)} features)")
        print(tl_clt.prediction_table(model, clean, steered, k=4))
""",
    ),
    (
        "code",
        """
def row(name, label, r):
    cells = f"{r['p_barack']:9.3f} {r['p_presidents_60s_80s']:10.3f} {r['p_filler']:9.3f}"
    print(f"{name:24s} {label:7s} {r['top']!r:10s} {cells}")

print(f"{'group':24s} {'change':7s} {'top':10s} {'p(Barack)':>9s} {'p(60s-80s)':>10s} {'p(filler)':>9s}")
row("(none)", "", results["baseline"])
for name in groups:
    for label, r in results[name].items():
        row(name, label, r)
""",
    ),
    (
        "md",
        """
A sweep of the steering factor for the era-carrying groups:
""",
    ),
    (
        "code",
        """
for name in ("Year ~2010", "Events ~2010"):
    row = []
    for factor in (1.0, 0.5, 0.0, -0.5, -1.0, -2.0):
        r = summary(tl_clt.steer(model, clt, prompt, tl_clt.scale(groups[name], factor, graph)))
        row.append(f"x{factor:+.1f}: {r['top']!r}")
    print(f"{name:14s}", " | ".join(row))
""",
    ),
    (
        "md",
        """
The proposed groups steered the way the story says (`story_effects`: each group times -1), with the
outcome each should have: another US president for the year and era groups; filler
words up and names down for the office and name groups.
""",
    ),
    (
        "code",
        """
story = story_effects(model, clt, SEED, graph, roles)
results["proposed_effects"] = {}
for role, e in story.effects.items():
    results["proposed_effects"][SEED_NAMES[role]] = e.holds
    print(f"{SEED_NAMES[role]:24s} x{e.factor:+.0f}: {e.top_before!r} -> {e.top_after!r}  "
          f"p(names) {e.p_names[0]:.2f} -> {e.p_names[1]:.2f}  p(filler) {e.p_filler[0]:.2f} -> "
          f"{e.p_filler[1]:.2f}  {'holds' if e.holds else 'does not hold'}")
""",
    ),
    (
        "md",
        """
The same for every proposed group in one call, ablated (x0) and steered down (x-1): `tl_clt.group_effects`
steers each group whole, 16 steerings per forward pass, and returns a pandas DataFrame (it displays itself
in a notebook).
""",
    ),
    (
        "code",
        """
effects = tl_clt.group_effects(
    model, clt, graph, proposals, factors=(0.0, -1.0),
    token_sets={"presidents": [w for era in US_PRESIDENTS.values() for w in era], "filler": FILLER},
)
results["group_effects"] = effects.to_dict("records")
effects.round(3)
""",
    ),
    (
        "md",
        """
## 7. Reading

- **Year ~2010** carries the era. Ablating it, the model still names a US president but one of another era
  (" Richard", p(Barack) below 0.01), as in the story; steering it negative does the same (" Richard";
  presidents of the 60s-80s 0.82).
- **President** carries "an office holder is asked for". Ablating it lowers " Barack" from 0.99 to 0.68,
  and steering it negative gives filler words almost surely (0.98, " the" on top): without the office the
  model continues the sentence without committing to a claim, as in the story.
- **Say a political figure** says the names. Ablating it barely moves the answer (" Barack" 0.86, filler
  0.01); steering it negative takes " Barack" to 0.007 and the presidents to 0.12, and puts a filler word
  on top (" a"; filler words 0.38).
- **Events ~2010** as the recipe finds it (features that need both the office and the year, all on the
  last word) does not move the answer: steered x-1 it leaves " Barack" on top at 0.92.
  The era is carried by the year's features that other features feed (what the model makes of "2010") and
  the last word's features that the year feeds most, which the proposals call *era ~2010*: steered down,
  they move the answer to a president of another era (" Richard", section 6, last table).
- Like the real model, the toy world barely needs "the United States": "president" alone means the US one.
- **The proposals** (section 4) find the four parts without a recipe, and all four, steered whole (their
  members and the features pruning left out where they sit), have the story's effects on this prompt
  (section 6, last table): steered down, the year gives another era's president (" Dwight"), *president*
  puts a filler word on top, the era gives " Richard". *Say a name* takes the names away (p(names) 1.00 ->
  0.00) and raises the filler words 5x and above them (0.10), which is the story's test; read strictly it
  does not hold here, as a digit (" 2") comes on top. They share most of their features with the recipe's
  *President* and *Year ~2010* (Jaccard 0.67, 0.55) and fewer with its *Say a political figure* and
  *Events ~2010* (0.29, 0.35).
""",
    ),
    (
        "code",
        """
print("TUTORIAL_RESULTS", json.dumps(results))
""",
    ),
]
