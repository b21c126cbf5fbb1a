"""Influence, pruning and scores of attribution graphs, as plain functions.

Influence is Anthropic's *Circuit Tracing* measure: with A = row-normalised |adjacency| (rows = targets),
a node's influence on the logits is `w @ (A + A^2 + ...)` for the logit probabilities w.
`AttributionGraph.prune` / `.scores` / `.node_influence` call these.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_clt.checks import as_number

if TYPE_CHECKING:
    from tl_clt.graph import AttributionGraph

NODE_THRESHOLD = 0.8  # default share of the logits' influence the kept nodes carry
EDGE_THRESHOLD = 0.98  # default share the kept edges carry


class GraphScores(NamedTuple):
    replacement: float  # share of end-to-end influence on the logits coming from tokens, not errors
    completeness: float  # influence-weighted share of incoming (normalised) edge mass not from errors


def normalize_rows(matrix: Float[Tensor, "n m"]) -> Float[Tensor, "n m"]:
    """|A| with each row scaled to sum to 1 (rows of zeros stay zero)."""
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def total_influence(A: Float[Tensor, "n n"], weights: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """`weights @ (A + A^2 + ...)`: each node's influence through all paths (A nilpotent: a DAG)."""
    if not torch.isfinite(A).all():
        raise ValueError("The adjacency matrix has NaN or inf edge weights; the graph is corrupt.")
    step = weights @ A
    total = step.clone()
    for _ in range(A.shape[0] + 1):
        if not step.any():
            return total
        step = step @ A
        total += step
    raise RuntimeError("Influence did not converge: the adjacency matrix has a cycle.")


def partial_influence(
    rows: Float[Tensor, "r n_sources"],
    logit_probs: Float[Tensor, " t"],
    row_nodes: Int[Tensor, " r"],
    n_sources: int,
) -> Float[Tensor, " n_sources"]:
    """Influence on the logits of every source, from the rows computed so far.

    `row_nodes[i]` is the source index of row i (a feature), or >= n_sources for the logit rows,
    which come first and carry `logit_probs`.
    """
    A = normalize_rows(rows)
    weight = torch.zeros(len(rows))
    weight[: len(logit_probs)] = logit_probs
    is_feature = row_nodes < n_sources
    total = torch.zeros(n_sources)
    for _ in range(len(rows) + 1):
        step = weight @ A
        if not step.any():
            return total
        total += step
        weight = torch.zeros(len(rows))
        weight[is_feature] = step[row_nodes[is_feature]]
    raise RuntimeError("Influence did not converge: the partial graph has a cycle.")


def cumulative_cutoff(scores: Float[Tensor, " n"], threshold: float) -> float:
    """Smallest score kept when keeping the top scores that make up `threshold` of the total."""
    ranked = torch.sort(scores.flatten(), descending=True).values
    total = ranked.sum()
    if total <= 0:
        return float("inf")
    cum = torch.cumsum(ranked, 0) / total
    i = min(int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype))), len(ranked) - 1)
    return float(ranked[i])


def node_influence(graph: AttributionGraph) -> Float[Tensor, " n_nodes"]:
    """Each node's total (path-summed, row-normalised |A|) influence on the logits."""
    return total_influence(normalize_rows(graph.adjacency), graph.logit_weights())


def scores(graph: AttributionGraph) -> GraphScores:
    """Replacement and completeness scores (Anthropic's *Circuit Tracing* definitions)."""
    A = normalize_rows(graph.adjacency)
    w = graph.logit_weights()
    infl = total_influence(A, w)
    errors = slice(graph.error_index(0, 0), graph.token_index(0))
    tokens = slice(graph.token_index(0), graph.token_index(0) + graph.n_pos)
    tok, err = infl[tokens].sum(), infl[errors].sum()
    replacement = float(tok / (tok + err)) if tok + err > 0 else float("nan")
    non_error = 1 - A[:, errors].sum(1)
    out = infl + w
    completeness = float((non_error * out).sum() / out.sum())
    return GraphScores(replacement, completeness)


def prune(
    graph: AttributionGraph, *, node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD
) -> AttributionGraph:
    """Keep the nodes, then edges, that carry `threshold` of the influence on the logits.

    Tokens and logits are always kept; features/errors left without outgoing edges, and features
    without incoming edges, are removed until none remain. Returns a new AttributionGraph.
    """
    node_threshold = as_number(node_threshold, "node_threshold", finite=False)
    edge_threshold = as_number(edge_threshold, "edge_threshold", finite=False)
    for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {t}.")
    w = graph.logit_weights()
    influence = node_influence(graph)
    n_inner = graph.token_index(0)  # features + errors
    keep = graph.present_mask()
    keep[:n_inner] &= influence[:n_inner] >= cumulative_cutoff(influence, node_threshold)
    A = graph.adjacency * keep[:, None] * keep[None, :]
    A_norm = normalize_rows(A)
    edge_scores = A_norm * (total_influence(A_norm, w) + w)[:, None]
    edges = (edge_scores >= cumulative_cutoff(edge_scores[edge_scores > 0], edge_threshold)) & (A != 0)
    while True:
        before = keep.clone()
        edges &= keep[:, None] & keep[None, :]
        keep[:n_inner] &= edges[:, :n_inner].any(0)  # has an outgoing edge
        keep[: graph.n_features] &= edges[: graph.n_features].any(1)  # has an incoming edge
        if torch.equal(keep, before):
            break
    return replace(graph, adjacency=graph.adjacency * edges, node_mask=keep, influence=influence)
