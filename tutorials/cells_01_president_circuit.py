"""Cells of tutorials/01_president_circuit.ipynb (built by build_notebooks.py)."""

CELLS = [
    (
        "md",
        """
# The president circuit, step by step

For **"Fact: The president of the United States in 2010 was"** Qwen3-1.7B says **" Barack"**. BluelightAI
traced it with their CLTs and found four groups of features whose paths lead to the answer — *President*,
*Year ~2010*, *Say a political figure* and *Events ~2010* — and showed that ablating or steering a group
changes the prediction the way the story predicts. This notebook does the whole analysis with tl_clt, and
lets `propose_supernodes` find the groups (no hand-written recipe):

1. the prediction; 2. the attribution graph; 3. the pruned graph; 4. proposed groups, and which of them
are the seed's four; 5. the grouped graph; 6. ablation and steering experiments with before/after tables;
7. the era group without the year's digits (events); 8. a short reading.

It runs on the **toy world** shipped with tl_clt: a 4-layer Qwen3 trained on dated facts about office
holders, dated events and filler sentences, and a JumpReLU CLT trained on it, in BluelightAI's on-disk
format. Set `USE_REAL_WEIGHTS = True` to run the same cells on Qwen3-1.7B-Base with BluelightAI's CLT.
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

Token sets used to read the experiments: US presidents' first names by era, every office holder's first
name, and filler words (how the toy corpus continues "... was" when there is no office).
""",
    ),
    (
        "code",
        """
def first_token(word):
    return model.tokenizer(word, add_special_tokens=False)["input_ids"][0]

US_PRESIDENTS = {  # first names, by the decade their term began
    "1950s-80s": [" Harry", " Dwight", " John", " Lyndon", " Richard", " Gerald", " Jimmy", " Ronald"],
    "1990s-2000s": [" George", " Bill"],
    "2010s": [" Barack", " Donald", " Joe"],
}
from tl_clt.toyworld.corpus import FILLERS, first_names
FILLER = sorted({" " + f.split()[0] for f in FILLERS})
EARLY = [first_token(w) for w in US_PRESIDENTS["1950s-80s"]]
FILL = [first_token(w) for w in FILLER]
NAMES = [first_token(w) for w in first_names()]
BARACK = first_token(" Barack")

def summary(logits):
    p = logits[-1].float().softmax(-1)
    return {"top": model.tokenizer.decode(p.argmax()), "p_barack": float(p[BARACK]),
            "p_presidents_50s_80s": float(p[EARLY].sum()), "p_filler": float(p[FILL].sum()),
            "p_names": float(p[NAMES].sum())}

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

`propose_supernodes` compares every pair of feature nodes of the pruned graph by what they **read** (which
words of the prompt feed them, summed over all paths of the graph), where they **sit**, what they **say**
(their decoder read through the unembedding), their **layer** and their **neighbours** in the graph, and
clusters them (docs/supernodes.md). Each group is named from its members: *year ~N* sits on a number;
*era ~N* sits on the last word and reads the number most; *say a name* sits on the last word and says
names; otherwise the word it sits on or reads.

`story_roles` (from the toy world's story module) reads off which proposals play the seed's four parts,
from those names alone.
""",
    ),
    (
        "code",
        """
from tl_clt.toyworld.story import SEED, story_roles

proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt)
print(proposals.table())
print("signals used:", proposals.signals["weights"])
roles = story_roles(proposals, SEED)
SEED_NAMES = {"office": "President", "year": "Year ~2010", "say a name": "Say a political figure",
              "era": "Events ~2010"}
groups = {SEED_NAMES[r]: members for r, members in roles.items() if members}
for role, members in roles.items():
    names = [n for n in proposals if set(proposals[n]) <= set(members)]
    print(f"{SEED_NAMES[role]:24s} <- {names} ({len(members)} features)")
results["groups"] = {k: len(v) for k, v in groups.items()}
""",
    ),
    (
        "md",
        """
## 5. The grouped graph

`group` merges each proposed group into one node whose edges carry its members' summed direct effects.
""",
    ),
    (
        "code",
        """
H = pruned.group(proposals)
logit = [n for n, d in H.nodes(data=True) if d["kind"] == "logit"][0]
for name in proposals:
    to_logit = H.edges[name, logit]["weight"] if H.has_edge(name, logit) else 0.0
    feeds = {t: round(d["weight"], 2) for _, t, d in H.out_edges(name, data=True) if t in proposals}
    print(f"{name:18s} -> logit {to_logit:+.2f}; -> groups {feeds}")
fig = tl_clt.plot_graph(H)
fig
""",
    ),
    (
        "md",
        """
## 6. Interventions

Each of the four groups is ablated (activations set to 0) and steered down (activations times -1), with
attention patterns frozen at the prompt's values; the real MLPs still run, so later features respond.
The tables show the top next tokens before and after.
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
    cells = f"{r['p_barack']:9.3f} {r['p_presidents_50s_80s']:10.3f} {r['p_names']:8.3f} {r['p_filler']:9.3f}"
    print(f"{name:24s} {label:7s} {r['top']!r:10s} {cells}")

print(f"{'group':24s} {'change':7s} {'top':10s} {'p(Barack)':>9s} {'p(50s-80s)':>10s} {'p(names)':>8s} "
      f"{'p(filler)':>9s}")
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
    cells = []
    for factor in (1.0, 0.5, 0.0, -0.5, -1.0, -2.0):
        r = summary(tl_clt.steer(model, clt, prompt, tl_clt.scale(groups[name], factor, graph)))
        cells.append(f"x{factor:+.1f}: {r['top']!r}")
    print(f"{name:14s}", " | ".join(cells))
""",
    ),
    (
        "md",
        """
## 7. The era without the year's digits

The toy corpus also dates facts by events ("... during the World Cup in South Africa was"). The era group
found above sits on " was" and reads the year; does it also stand for *events around 2010* when there are
no digits at all? Its summed activation at the last word of event-dated prompts:
""",
    ),
    (
        "code",
        """
keys = {(int(n.split(":")[1]), int(n.split(":")[3])) for n in groups["Events ~2010"]}
def era_activation(text):
    acts = tl_clt.feature_activations(model, clt, text).to_dense()[:, -1]
    return float(sum(acts[layer, feature] for layer, feature in keys))

results["events"] = {}
for event in ("the World Cup in South Africa", "the London Olympics", "the financial crisis",
              "the Gulf war", "the moon landing", "the coronation"):
    text = f"Fact: The president of the United States during {event} was"
    results["events"][event] = era_activation(text)
    answer = model.tokenizer.decode(model(tl_clt.to_tokens(model, text)[None])[0, -1].argmax())
    print(f"{event:32s} era-group activation {results['events'][event]:6.2f}   model says {answer!r}")
""",
    ),
    (
        "md",
        """
## 8. Reading

- **Year ~2010** sits on the year's digits and carries the era. Ablating it, the model still names a US
  president, but one of another era.
- **President** (features on " was" that read the office word) and **Say a political figure** (features
  on " was" that say names) carry "an office holder is asked for". Steering them down moves probability
  from names to filler words: without the office the model continues the sentence without committing to a
  claim, as in the story.
- **Events ~2010** sits on " was", reads the year, and is active for events around 2010 without any digit
  in the prompt (section 7); steering it down moves the answer to another era's president.
- `benchmarks/story.py` repeats this on prompts this notebook never uses (other offices, places, years
  and templates) and reports how often every effect holds and how pure the groups are.
""",
    ),
    (
        "code",
        """
print("TUTORIAL_RESULTS", json.dumps(results))
""",
    ),
]
