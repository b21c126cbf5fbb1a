"""Cells of tutorials/03_second_prompt.ipynb (built by build_notebooks.py)."""

CELLS = [
    (
        "md",
        """
# A second prompt, asked a sharper question

Tutorial 01 follows the seed's prompt. This one runs the whole analysis on a prompt it never used —
another office, place and year — and asks the graph a sharper question than "why the top token?": **why
" Brian" rather than " Pierre"?** (Brian Mulroney took office in 1984, Pierre Trudeau left it that year.)
The attribution target is `tl_clt.logit_diff(" Brian", " Pierre")`, the difference of the two de-meaned
logits, so every edge in the graph says how much a node moves that difference.

1. the prediction; 2. the graph of the logit difference; 3. groups proposed by `propose_supernodes`;
4. each group ablated and steered down, read as the logit difference and the top token; 5. the story's
effects measured on this prompt.
""",
    ),
    (
        "code",
        """
%matplotlib inline
import json

import torch

import tl_clt
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.corpus import Fact
from tl_clt.toyworld.story import story_effects, story_prompt, story_roles

model, clt = load_toyworld()
torch.set_grad_enabled(False)
results = {}

fact = Fact("prime minister", "Canada", "Canadian", 1985, "Brian Mulroney")
prompt = fact.prompt()  # "Fact: The prime minister of Canada in 1985 was"
A, B = " Brian", " Pierre"
a, b = (model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (A, B))

def diff(logits):
    return float(logits[-1, a] - logits[-1, b])

clean = model(tl_clt.to_tokens(model, prompt)[None])[0]
top = clean[-1].softmax(-1).topk(3)
best = [f"{model.tokenizer.decode(i)!r} {p:.2f}" for p, i in zip(top.values, top.indices)]
print(prompt, "->", ", ".join(best))
results["top"] = model.tokenizer.decode(clean[-1].argmax())
results["diff"] = diff(clean)
print(f"logit({A}) - logit({B}) = {results['diff']:.2f}")
""",
    ),
    (
        "md",
        """
## 2. The graph of the logit difference

`targets=[tl_clt.logit_diff(A, B)]` gives the graph one output node: the difference. Pruning keeps what
matters for it.
""",
    ),
    (
        "code",
        """
graph = tl_clt.attribute(model, clt, prompt, targets=[tl_clt.logit_diff(A, B)], verbose=False)
scores = graph.scores()
print("target:", graph.logit_token_strs, "| features:", graph.n_features)
print(f"replacement score {scores.replacement:.3f}, completeness score {scores.completeness:.3f}")
pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
print(pruned.to_networkx().number_of_nodes(), "nodes in the pruned graph")
results["target"] = list(graph.logit_token_strs)
""",
    ),
    (
        "md",
        """
## 3. Proposed groups

The same call as in tutorial 01, on this graph. `story_roles` reads off which proposals play the seed's
parts (year, office, say a name, era) from their names alone; each is steered whole (`proposals.whole`: its
members and the features pruning left out where it sits).
""",
    ),
    (
        "code",
        """
proposals = tl_clt.propose_supernodes(pruned, model=model, clt=clt, unpruned=graph)
print(proposals.table())
sp = story_prompt(fact)
roles = story_roles(proposals, sp)
print({role: len(members) for role, members in roles.items()})
fig = pruned.plot(supernodes=dict(proposals))
fig
""",
    ),
    (
        "md",
        """
## 4. Interventions, read as the logit difference

Each proposed group, whole, ablated (x0) and steered down (x-1), attention frozen at the prompt's values.
""",
    ),
    (
        "code",
        """
results["groups"] = {}
print(f"{'group':18s} {'n':>3s}  {'ablated: diff, top':28s} {'x-1: diff, top':28s}")
for name in proposals:
    members = proposals.whole(name)
    cells = {}
    for label, ivs in (("ablate", tl_clt.ablate(members)), ("x-1", tl_clt.scale(members, -1.0, graph))):
        steered = tl_clt.steer(model, clt, prompt, ivs)
        cells[label] = {"diff": diff(steered), "top": model.tokenizer.decode(steered[-1].argmax())}
    results["groups"][name] = {"members": list(members), **cells}
    print(f"{name:18s} {len(members):3d}  " + " ".join(
        f"{c['diff']:+6.2f} {c['top']!r:20s}" for c in cells.values()))
""",
    ),
    (
        "md",
        """
## 5. The story's effects on this prompt

`story_effects` steers each role the way the seed's story does (year ablated, the others x-1) and checks
the outcome: another holder of the office for the year and era; filler words up and names down for the
office and "say a name".
""",
    ),
    (
        "code",
        """
story = story_effects(model, clt, sp, graph, roles)
results["effects"] = {}
for role, e in story.effects.items():
    results["effects"][role] = e.holds
    print(f"{role:10s} x{e.factor:+.0f}: {e.top_before!r} -> {e.top_after!r}  p(names) {e.p_names[0]:.2f} -> "
          f"{e.p_names[1]:.2f}  p(filler) {e.p_filler[0]:.2f} -> {e.p_filler[1]:.2f}  "
          f"{'holds' if e.holds else 'does not hold'}")
print("TUTORIAL_RESULTS", json.dumps(results))
""",
    ),
    (
        "md",
        """
## Reading
The table in section 4 answers "why Brian rather than Pierre". On the toy world Brian's lead (4.27) comes
mostly from the year: steering the *year* group (the features that read the digits) down turns the lead to
-2.81 and the answer to " Justin" (Trudeau, the 2010s); ablating it takes the lead to 1.86, " Justin" on
top as well. The *era* group (the year's features fed by other features, and the last word's features that
the year feeds most) steered down takes the lead to 1.24 and the answer to " John" (Diefenbaker, the 1950s);
ablated, it leaves " Brian" on top with a lead of 2.83. The *say a name* and *minister* groups, ablated,
keep most of Brian's lead (4.50, 4.62): they push Brian and Pierre alike (ablated, *minister* leaves Brian
on top, *say a name* puts a filler word there, " the"). Steered down, *say a name* puts " the" on top with
the names at 0.01; *minister* alone leaves " Brian" there (lead 5.57), while the story's office role,
*prime* and *minister* together, puts " the" on top (section 5). All four of the story's effects hold on
this prompt, by the story's test (filler words up 5x, names below them and halved) and read strictly, with
a filler word on top. Over held-out prompts `benchmarks/story.py` measures how often each holds, both
ways.
""",
    ),
]
