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
from tl_clt.workspace import Workspace

if TYPE_CHECKING:
    from tl_clt.graph import AttributionGraph

NODE_THRESHOLD = 0.8  # default share of the logits' influence the kept nodes carry
EDGE_THRESHOLD = 0.98  # default share the kept edges carry
CHUNK_BYTES = 8 << 20  # |rows| taken at once by the influence sum on a CPU: small enough to stay in cache
GPU_CHUNK_BYTES = 256 << 20  # on a GPU: few launches, a bounded temporary


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
    abs_sums: Float[Tensor, " r"] | None = None,
    chunk_bytes: int | None = None,
) -> Float[Tensor, " n_sources"]:
    """Influence on the logits of every source, from the rows computed so far.

    `row_nodes[i]` is the source index of row i (a feature), or >= n_sources for the logit rows,
    which come first and carry `logit_probs`. `abs_sums`: each row's sum of |edges| if known.
    One call of a fresh `PartialInfluence` (which keeps its work between calls on growing rows).
    """
    return PartialInfluence(n_sources, chunk_bytes)(rows, logit_probs, row_nodes, abs_sums)


class PartialInfluence:
    """`partial_influence` for rows that grow between calls, as attribution's refreshes see them.

    With A = |rows| row-normalised, influence = sum_t w_t A with w_0 the logit probabilities and
    w_{t+1} at the feature rows = (w_t A)[their nodes]. The weights only need A's columns at the row
    nodes, B [r, r]; its transpose is kept between calls and only its new rows and columns are read
    (rows already seen must not change: each call checks that `row_nodes` extends the last call's).
    The weights' total per row, acc = w_0 + acc B, is summed step by step, or, given `row_layers`
    (each feature row's CLT layer; a feature only reads features of lower layers), solved one layer at
    a time from the top: one pass over B instead of one per step. New entries that break that order
    are looked for, and the steps are used from then on if one is found. The sum then meets |rows|
    once, a few rows at a time (`chunk_bytes` of |rows| at once; default `CHUNK_BYTES` on a CPU, so the
    absolute values stay in cache, `GPU_CHUNK_BYTES` elsewhere), accumulated in float64.
    """

    def __init__(
        self,
        n_sources: int,
        chunk_bytes: int | None = None,
        capacity: int = 0,
        workspace: Workspace | None = None,
    ):
        self.n_sources = n_sources
        self.chunk_bytes = chunk_bytes
        self.capacity = capacity  # rows expected in all: B^T [capacity, capacity] is allocated once
        self.workspace = workspace  # where B^T is first allocated (kept for the next graph)
        self._BT: Tensor | None = None  # B^T[j, i] = |rows[i, node of row j]| / row i's sum of |edges|
        self._nodes: Tensor | None = None  # row_nodes of the rows in B^T
        self._seen = 0
        self.layered = True  # every entry seen so far goes from a lower layer to a higher one
        self.calls = 0

    def _grow(self, r: int, dtype, device) -> None:
        """B^T at least [r, r] in this dtype and device (what was seen is kept when only the size grows)."""
        old = self._BT
        same_kind = old is not None and old.dtype == dtype and old.device == torch.device(device)
        if same_kind and old.shape[0] >= r:
            return
        cap = max(r, self.capacity, 2 * old.shape[0] if old is not None else 0)
        if old is None and self.workspace is not None:  # uninitialised: [:r, :r] is written before it is read
            self._BT = self.workspace("influence_BT", (cap, cap), dtype, device)
        else:
            self._BT = torch.zeros(cap, cap, dtype=dtype, device=device)
        if same_kind:
            self._BT[: self._seen, : self._seen] = old[: self._seen, : self._seen]
        else:
            self._seen = 0

    def _update(self, rows: Tensor, row_nodes: Tensor, inv: Tensor, layers: Tensor | None) -> Tensor:
        """B^T over the r rows given (logit rows' columns of B are zero: no row reads a logit)."""
        r, seen = len(rows), self._seen
        same = self._nodes is not None and seen <= r and torch.equal(self._nodes[:seen], row_nodes[:seen])
        if not same:
            seen, self.layered = 0, True  # other rows than last time: start again
        self._grow(r, rows.dtype, rows.device)
        seen = min(seen, self._seen)
        BT = self._BT
        cols = torch.where(row_nodes < self.n_sources, row_nodes, 0)
        is_feat = (row_nodes < self.n_sources).to(rows.dtype)
        if r > seen:
            # new rows against every row node; old rows against the new row nodes
            new_rows = rows[seen:r][:, cols].abs() * inv[seen:r, None] * is_feat[None, :]  # [k, r]
            old_rows = (
                rows[:seen][:, cols[seen:r]].abs() * inv[:seen, None] * is_feat[None, seen:]
            )  # [seen, k]
            BT[:r, seen:r] = new_rows.T
            BT[seen:r, :seen] = old_rows.T
            if layers is None:
                self.layered = False
            elif self.layered:  # an entry from a row node at the same or a higher layer breaks the order
                wrong = (layers[None, :] >= layers[seen:r, None]) & (new_rows > 0)
                wrong_old = (layers[None, seen:r] >= layers[:seen, None]) & (old_rows > 0)
                self.layered = not (bool(wrong.any()) or bool(wrong_old.any()))
        self._nodes, self._seen = row_nodes.clone(), r
        return BT[:r, :r]

    def __call__(
        self,
        rows: Float[Tensor, "r n_sources"],
        logit_probs: Float[Tensor, " t"],
        row_nodes: Int[Tensor, " r"],
        abs_sums: Float[Tensor, " r"] | None = None,
        row_layers: Int[Tensor, " r"] | None = None,
    ) -> Float[Tensor, " n_sources"]:
        """Influence of every source. `row_layers`: each row's layer (the logit / target rows' above
        every feature's), to solve layer by layer; without it, step by step."""
        r = len(rows)
        self.calls += 1
        if abs_sums is None:
            abs_sums = rows.abs().sum(1)
        inv = 1 / abs_sums.to(rows.dtype).clamp(min=1e-10)
        layers = None if row_layers is None else row_layers.to(rows.device)
        BT = self._update(rows, row_nodes, inv, layers)
        acc = torch.zeros(r, dtype=rows.dtype, device=rows.device)
        acc[: len(logit_probs)] = logit_probs.to(rows.dtype)
        if self.layered and layers is not None:
            feat = row_nodes < self.n_sources
            for layer in torch.unique(layers[feat]).flip(0).tolist():  # from the top: inputs are done
                idx = (feat & (layers == layer)).nonzero().squeeze(1)
                acc[idx] = BT.index_select(0, idx) @ acc
        else:
            weight = acc.clone()
            acc.zero_()
            for _ in range(r + 1):
                acc += weight
                weight = BT @ weight  # zero at the logit rows (their columns of B are zero)
                if not weight.any():
                    break
            else:
                raise RuntimeError("Influence did not converge: the partial graph has a cycle.")
        w = acc * inv
        total = torch.zeros(self.n_sources, dtype=torch.float64, device=rows.device)
        chunk = self.chunk_bytes or (CHUNK_BYTES if rows.device.type == "cpu" else GPU_CHUNK_BYTES)
        step = max(1, chunk // max(1, self.n_sources * rows.element_size()))
        for c in range(0, r, step):
            total += (w[c : c + step] @ rows[c : c + step].abs()).double()
        return total.to(rows.dtype)


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
