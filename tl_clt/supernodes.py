"""Supernodes: groups of graph nodes merged into one, candidate finders, and steering a group.

- `group_graph(graph, {"name": [node, ...]})` (also `AttributionGraph.group`): the graph's networkx
  view with each group merged into one node whose edges carry its members' summed edge weights.
- Candidate finders that need no hosted dashboard: `features_at` (most active features on given
  tokens), `contrast_features` (features that need what a counterfactual prompt changes),
  `top_inputs` / `top_outputs` (largest edges into / out of a node) and
  `feature_output_tokens` (a feature's top tokens through the unembedding).
- `group_interventions(graph, members, factor)`: one `Intervention` per member, to steer a group;
  `group_effects(model, clt, graph, groups)`: a table of what steering each group does to the next token.
Nodes are given in any spelling of `tl_clt.nodes` ("F:l:p:f", "E:l:p", "T:p", "L:token_id", JSON ids, or
(layer, pos, feature) keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

import networkx as nx
import torch
from torch import Tensor

from tl_clt.checks import as_int, as_number, check_k
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.fingerprints import check_clt, check_model
from tl_clt.hooks import check_compatible
from tl_clt.nodes import Node, NodeLike, as_node_list, group_members, node_id, node_kind
from tl_clt.prompts import to_tokens
from tl_clt.replacement import feature_activations
from tl_clt.steering import Intervention, scale

if TYPE_CHECKING:
    from tl_clt.graph import AttributionGraph


class Candidate(NamedTuple):
    """A node found by a candidate finder; `score` is an activation or an edge weight."""

    node: str
    score: float
    layer: int | None = None
    pos: int | None = None
    feature: int | None = None


class TokenScore(NamedTuple):
    token: str
    token_id: int
    score: float  # de-meaned logit per unit activation along the direct path


# ------------------------------------------------------------------------ grouping
def _membership(G: nx.DiGraph, groups: Mapping[str, Iterable[NodeLike]], n_layers: int) -> dict[str, str]:
    """{member node id: group name}, with clear errors for unknown or doubly grouped nodes."""
    owner: dict[str, str] = {}
    for name, members in groups.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Group names must be non-empty strings, got {name!r}.")
        ids = [node_id(m, n_layers=n_layers) for m in group_members(name, members)]
        if not ids:
            raise ValueError(f"Group {name!r} has no members.")
        for node in ids:
            if node not in G:
                raise KeyError(
                    f"Group {name!r}: node {node!r} is not in the graph (not active, left out "
                    "of the graph, or pruned away). See graph.to_networkx().nodes for its nodes."
                )
            if owner.get(node, name) != name:
                raise ValueError(
                    f"Node {node!r} is in two groups, {owner[node]!r} and {name!r}; a node can "
                    "belong to one supernode only."
                )
            owner[node] = name
    for name in groups:
        if name in G and name not in owner:
            raise ValueError(f"Group name {name!r} is also the id of an ungrouped node; pick another name.")
    return owner


def _supernode_attrs(G: nx.DiGraph, members: list[str]) -> dict:
    data = [G.nodes[m] for m in members]
    layers = sorted({d["layer"] for d in data if d.get("layer") is not None})
    positions = sorted({d["pos"] for d in data if d.get("pos") is not None})
    acts = [d["activation"] for d in data if "activation" in d]
    attrs = dict(
        kind="supernode",
        members=members,
        n_members=len(members),
        member_kinds=sorted({d["kind"] for d in data}),
        layers=layers,
        positions=positions,
        layer=layers[0] if len(layers) == 1 else None,
        pos=positions[0] if len(positions) == 1 else None,
        activation=sum(acts) if acts else None,
    )
    if all("influence" in d for d in data):
        attrs["influence"] = sum(d["influence"] for d in data)
    return attrs


def group_graph(graph: AttributionGraph, groups: Mapping[str, Iterable[NodeLike]]) -> nx.DiGraph:
    """`graph.to_networkx()` with each group of nodes merged into one supernode.

    A supernode has kind="supernode", members (node ids), n_members, member_kinds, layers,
    positions, layer/pos (when all members share one), activation (sum over feature members) and
    influence (sum, when the graph has it). Its edges carry the summed weights of its members'
    edges (`n_edges` counts them); edges between members of one group are dropped. Ungrouped nodes
    and edges stay as in `to_networkx()`, so a pruned graph groups its pruned nodes and edges.
    """
    G = graph.to_networkx()
    owner = _membership(G, groups, graph.n_layers)
    H = nx.DiGraph(**G.graph)
    for node, data in G.nodes(data=True):
        if node not in owner:
            H.add_node(node, **data)
    for name in groups:
        H.add_node(name, **_supernode_attrs(G, [m for m, g in owner.items() if g == name]))
    for u, v, w in G.edges(data="weight"):
        su, sv = owner.get(u, u), owner.get(v, v)
        if su == sv and u in owner:
            continue
        if H.has_edge(su, sv):
            H[su][sv]["weight"] += w
            H[su][sv]["n_edges"] += 1
        else:
            H.add_edge(su, sv, weight=w, n_edges=1)
    return H


def group_interventions(
    graph: AttributionGraph | Tensor, members: Iterable[NodeLike], factor: float
) -> list[Intervention]:
    """Interventions steering a whole group: every member feature set to `factor` times its
    activation in `graph` (0 ablates the group). Members must be features."""
    members = as_node_list(members)
    n_layers = getattr(graph, "n_layers", None)
    bad = [m for m in members if node_kind(m, n_layers=n_layers) != "feature"]
    if bad:
        raise ValueError(
            f"Only features can be steered; the group also holds {bad}. Drop the error, token "
            "and logit nodes from the members you steer."
        )
    return scale(members, factor, graph)


def group_effects(
    model,
    clt: CrossLayerTranscoder,
    graph: AttributionGraph,
    groups: Mapping[str, Iterable[NodeLike]],
    *,
    factors: Iterable[float] = (-1.0, 0.0),
    token_sets: Mapping[str, Iterable[str | int]] | None = None,
    k: int = 3,
    batch_size: int = 16,
    freeze_attention: bool = True,
    direct_effects: bool = False,
):
    """What steering each group does to the next token: a pandas DataFrame, a "(clean)" row then one row
    per (group, factor), each group's features set to `factor` x their activation in `graph` (0 ablates,
    -1 steers down; attention frozen unless `freeze_attention=False`; `direct_effects=True`: the graph's
    frozen linear model, as in `steer`).

    Columns: `group`, `factor`, `features` (how many steered), `top` (the `k` likeliest next tokens after,
    with their probabilities), `top_changed` (its first token differs from the clean one), `p(clean top)`
    (the clean prompt's likeliest token), `kl` (KL(clean || steered), nats) and `p(<label>)` for each
    `token_sets` entry ({label: one-token strings or ids}: summed probability). Groups from
    `propose_supernodes` are steered whole (`proposals.whole(name)`: members and the features pruning left
    out where they sit); groups' token, error and logit nodes are not steered. One `tl_clt.steer_many`
    call: `batch_size` steerings per forward pass, one clean pass for the frozen values."""
    import pandas as pd

    from tl_clt.steering import steer_many
    from tl_clt.targets import TargetError, token_id_of

    factors = [as_number(f, "factor") for f in factors]
    k = check_k(k, what="tokens in `top`")
    sets = {}
    for label, tokens in (token_sets or {}).items():
        try:
            given = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
            sets[label] = [token_id_of(model, t) for t in given]
        except TargetError as err:
            raise ValueError(f"token_sets[{label!r}]: {err}") from None
    whole = getattr(groups, "whole", None)
    n_layers = getattr(graph, "n_layers", None)
    features = {}  # name -> its feature members
    for name in groups:
        members = whole(name) if callable(whole) else group_members(name, groups[name])
        features[name] = [m for m in members if node_kind(m, n_layers=n_layers) == "feature"]
    every = [m for members in features.values() for m in members]
    scaled = [scale(every, f, graph) for f in factors]  # the graph's activations read once per factor
    rows, steerings, start = [("(clean)", float("nan"), 0)], [[]], 0
    for name, members in features.items():
        for f, ivs in zip(factors, scaled, strict=True):
            rows.append((name, f, len(members)))
            steerings.append(ivs[start : start + len(members)])
        start += len(members)
    logits = steer_many(
        model, clt, graph.tokens, steerings, batch_size=batch_size, freeze_attention=freeze_attention,
        direct_effects=direct_effects,
    )  # fmt: skip
    logp = logits.double().log_softmax(-1)
    p = logp.exp()
    clean_top = int(p[0].argmax())
    out = []
    for (name, factor, n), lp, q in zip(rows, logp, p, strict=True):
        top = q.topk(k)
        row = dict(group=name, factor=factor, features=n)
        pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        row["top"] = ", ".join(f"{model.tokenizer.decode([i])!r} {v:.2f}" for v, i in pairs)
        row["top_changed"] = int(top.indices[0]) != clean_top
        row["p(clean top)"] = float(q[clean_top])
        row["kl"] = float((p[0] * (logp[0] - lp)).sum())
        for label, ids in sets.items():
            row[f"p({label})"] = float(q[ids].sum())
        out.append(row)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------ candidate finders
def _positions_of(where, token_strs: list[str] | None, n_pos: int) -> list[int]:
    if isinstance(where, str):
        if token_strs is None:
            raise ValueError(
                "To find positions by token text, pass token_strs= (the prompt's tokens), or give "
                "positions as ints."
            )
        hits = [i for i, t in enumerate(token_strs) if t.strip() == where.strip()]
        if not hits:
            raise ValueError(f"No token {where!r} in the prompt; its tokens are {token_strs}.")
        return hits
    out = []
    for p in [where] if isinstance(where, int) else list(where):
        if not -n_pos <= p < n_pos:
            raise ValueError(f"Position {p} is out of range for a prompt of {n_pos} tokens.")
        out.append(p % n_pos)
    return out


def features_at(
    source: AttributionGraph | Tensor,
    where: int | Iterable[int] | str,
    k: int = 10,
    token_strs: list[str] | None = None,
) -> list[Candidate]:
    """The `k` most active features at positions `where` (ints, or a token's text, stripped).

    `source`: an AttributionGraph (its feature nodes, so the result can be grouped) or activations
    [n_layers, pos, n_features] from `tl_clt.feature_activations` (then token text needs
    `token_strs`). Sorted by activation, largest first.
    """
    if not isinstance(source, Tensor):  # an AttributionGraph
        present = source.present_mask()[: source.n_features]
        keys = source.feature_keys[present]
        values = source.activation_values[source.selected_features][present]
        token_strs, n_pos = token_strs or source.token_strs, source.n_pos
    else:
        acts = source.coalesce() if source.is_sparse else source.to_sparse().coalesce()
        keys, values, n_pos = acts.indices().T, acts.values(), source.shape[1]
    k = check_k(k, what="how many features")
    pos = torch.tensor(_positions_of(where, token_strs, n_pos))
    hit = torch.isin(keys[:, 1], pos)
    keys, values = keys[hit], values[hit].float()
    order = torch.argsort(values, descending=True, stable=True)[:k]
    return [_feature_candidate(key, float(values[i])) for i, key in zip(order.tolist(), keys[order].tolist())]


def _feature_candidate(key: list[int], score: float) -> Candidate:
    return Candidate(Node("feature", *key).id, score, *key)


def contrast_features(
    model,
    clt: CrossLayerTranscoder,
    graph: AttributionGraph,
    counterfactual: str | list[int] | Tensor,
    min_drop: float = 0.5,
) -> list[Candidate]:
    """Feature nodes of `graph` that lose at least `min_drop` of their activation on `counterfactual`.

    `counterfactual` is the graph's prompt with one thing changed (the office word, the year, ...) and
    the same number of tokens, so positions line up. A feature that needs the changed thing drops;
    score = the drop (activation - counterfactual activation), largest first.
    """
    check_model(graph.meta.get("model_fingerprint"), model, "This graph")
    check_clt(graph.meta.get("clt_fingerprint"), clt, "This graph")
    tokens = to_tokens(model, counterfactual)
    if len(tokens) != graph.n_pos:
        raise ValueError(
            f"The counterfactual has {len(tokens)} tokens and the graph's prompt {graph.n_pos}; "
            "change one thing while keeping the token count, so positions line up."
        )
    min_drop = as_number(min_drop, "min_drop")
    if not 0 < min_drop <= 1:
        raise ValueError(f"min_drop is a share of the activation in (0, 1], got {min_drop}.")
    other = feature_activations(model, clt, tokens).to_dense()
    present = graph.present_mask()[: graph.n_features]
    keys = graph.feature_keys[present]
    acts = graph.activation_values[graph.selected_features][present].float()
    drop = acts - other[keys[:, 0], keys[:, 1], keys[:, 2]].float().cpu()
    hit = drop >= min_drop * acts
    order = torch.argsort(drop[hit], descending=True, stable=True)
    keys, drop = keys[hit][order], drop[hit][order]
    return [_feature_candidate(key, d) for d, key in zip(drop.tolist(), keys.tolist(), strict=True)]


def _edges(graph: AttributionGraph | nx.DiGraph, node: NodeLike, direction: str):
    """(other node id, weight, attributes) of each edge into / out of `node`."""
    if not isinstance(graph, nx.DiGraph):  # an AttributionGraph
        yield from _adjacency_edges(graph, node_id(node, n_layers=graph.n_layers), direction)
        return
    G = graph
    name = node if isinstance(node, str) and node in G else node_id(node, n_layers=G.graph.get("n_layers"))
    if name not in G:
        raise KeyError(f"Node {name!r} is not in the graph.")
    edges = G.in_edges(name, data="weight") if direction == "in" else G.out_edges(name, data="weight")
    for u, v, w in edges:
        other = u if direction == "in" else v
        yield other, w, G.nodes[other]


def _adjacency_edges(graph: AttributionGraph, name: str, direction: str):
    """`_edges` read straight from the adjacency (no networkx graph of the whole prompt)."""
    ids = graph.node_ids()
    present = graph.present_mask()
    i = ids.index(name) if name in ids else None
    if i is None or not present[i]:
        raise KeyError(f"Node {name!r} is not in the graph (or was pruned away).")
    weights = graph.adjacency[i] if direction == "in" else graph.adjacency[:, i]
    for j in ((weights != 0) & present).nonzero().squeeze(-1).tolist():
        yield ids[j], float(weights[j]), graph.node_info(j)


def _top_edges(graph, node, k, kinds, direction) -> list[Candidate]:
    k = check_k(k, what="how many nodes")
    found = [
        (o, w, d) for o, w, d in _edges(graph, node, direction) if kinds is None or d.get("kind") in kinds
    ]
    found.sort(key=lambda x: -abs(x[1]))
    return [Candidate(o, float(w), d.get("layer"), d.get("pos"), d.get("feature")) for o, w, d in found[:k]]


def top_inputs(
    graph: AttributionGraph | nx.DiGraph,
    node: NodeLike,
    k: int = 10,
    kinds: tuple[str, ...] | None = ("feature",),
) -> list[Candidate]:
    """The `k` nodes with the largest |edge weight| into `node` (features only by default; `kinds`
    None for all). Works on grouped graphs too; scores are signed edge weights."""
    return _top_edges(graph, node, k, kinds, "in")


def top_outputs(
    graph: AttributionGraph | nx.DiGraph,
    node: NodeLike,
    k: int = 10,
    kinds: tuple[str, ...] | None = ("feature",),
) -> list[Candidate]:
    """The `k` nodes with the largest |edge weight| out of `node` (features only by default; use
    kinds=("logit",) for the logits it pushes, None for all)."""
    return _top_edges(graph, node, k, kinds, "out")


def feature_output_tokens(
    model,
    clt: CrossLayerTranscoder,
    layer: int,
    feature: int,
    k: int = 10,
    read: Literal["sum", "last"] | int = "sum",
    largest: bool = True,
) -> list[TokenScore]:
    """A feature's top output tokens: its decoder direction read by the unembedding.

    `read="sum"` (default): the sum of the feature's decoder rows over every layer it writes to,
    i.e. all it adds to the residual stream; "last": only its row into the last layer; an int:
    its row into that layer. The direction is multiplied by the final norm's weight, read by `W_U` and
    de-meaned over the vocabulary: the direct path to the de-meaned logits, ignoring later
    attention/MLPs and the final norm's per-position scale (a positive factor that keeps the
    order). `largest=False` gives the most suppressed tokens.
    """
    sites = check_compatible(model, clt)
    k = check_k(k, what="how many tokens")
    feature = as_int(feature, "feature")
    rows = clt.decoder_rows(layer, [feature])[0]  # [n_layers - layer, d_model]; range checked there
    if read == "sum":
        direction = rows.sum(0)
    elif read == "last":
        direction = rows[-1]
    elif isinstance(read, int) and layer <= read < clt.n_layers:
        direction = rows[read - layer]
    else:
        raise ValueError(
            f"read must be 'sum', 'last' or a layer in {layer}..{clt.n_layers - 1} (a layer-"
            f"{layer} feature writes to those), got {read!r}."
        )
    W_U = sites.weight(model, sites.W_U).detach()
    scores = (direction.to(W_U.dtype) * sites.weight(model, sites.final_norm_weight).detach()) @ W_U
    scores = scores - scores.mean()
    top = scores.topk(min(k, len(scores)), largest=largest)
    return [
        TokenScore(model.tokenizer.decode([i]), i, float(s))
        for i, s in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]
