"""AttributionGraph: node table + dense adjacency, influence, pruning, scores, networkx, save/load.

Node order in the adjacency (rows = targets, columns = sources), as in circuit-tracer:
`[selected features | errors (layer-major, n_layers * n_pos) | tokens (n_pos) | logits]`.
Only feature and logit rows have entries: errors and tokens have no incoming edges. Error nodes at
position 0 (the attention sink) are zero vectors and never appear in `to_networkx()`.
Node ids in networkx: `"F:{layer}:{pos}:{feature}"`, `"E:{layer}:{pos}"`, `"T:{pos}"`, `"L:{token_id}"`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import networkx as nx
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

GRAPH_FORMAT = "tl_clt.AttributionGraph/1"


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


@dataclass
class AttributionGraph:
    """An attribution graph of one prompt (see module docstring for the layout)."""

    tokens: Int[Tensor, " pos"]
    token_strs: list[str]
    active_features: Int[Tensor, "n_active 3"]  # (layer, pos, feature) of every active feature
    activation_values: Float[Tensor, " n_active"]
    selected_features: Int[Tensor, " n_sel"]  # indices into active_features that are nodes
    logit_tokens: Int[Tensor, " n_logits"]
    logit_probabilities: Float[Tensor, " n_logits"]
    logit_token_strs: list[str]
    adjacency: Float[Tensor, "n_nodes n_nodes"]
    n_layers: int
    model_name: str | None = None
    clt_name: str | None = None
    node_mask: Bool[Tensor, " n_nodes"] | None = None  # set by prune()
    influence: Float[Tensor, " n_nodes"] | None = None  # set by prune() / scores()
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- layout
    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.selected_features)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    def logit_index(self, i: int) -> int:
        return self.n_nodes - self.n_logits + i

    @property
    def feature_keys(self) -> Int[Tensor, "n_sel 3"]:
        """(layer, pos, feature) of each feature node, in node order."""
        return self.active_features[self.selected_features]

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        """Node index of feature (layer, pos, feature); KeyError if it is not a node of this graph."""
        hit = (self.feature_keys == torch.tensor([layer, pos, feature])).all(1).nonzero()
        if len(hit) == 0:
            raise KeyError(f"feature (layer={layer}, pos={pos}, feature={feature}) is not in the graph")
        return int(hit[0, 0])

    def logit_weights(self) -> Float[Tensor, " n_nodes"]:
        w = torch.zeros(self.n_nodes)
        w[self.n_nodes - self.n_logits :] = self.logit_probabilities.float()
        return w

    def node_info(self, i: int) -> dict:
        """The attributes of node i (kind, layer, pos, feature, token_id, activation)."""
        if i < self.n_features:
            layer, pos, feat = self.feature_keys[i].tolist()
            act = float(self.activation_values[self.selected_features[i]])
            return dict(
                kind="feature",
                layer=layer,
                pos=pos,
                feature=feat,
                activation=act,
                token_id=int(self.tokens[pos]),
            )
        i -= self.n_features
        if i < self.n_layers * self.n_pos:
            return dict(kind="error", layer=i // self.n_pos, pos=i % self.n_pos)
        i -= self.n_layers * self.n_pos
        if i < self.n_pos:
            return dict(
                kind="token",
                layer=None,
                pos=i,
                token_id=int(self.tokens[i]),
                token=self.token_strs[i],
            )
        i -= self.n_pos
        return dict(
            kind="logit",
            layer=None,
            pos=self.n_pos - 1,
            token_id=int(self.logit_tokens[i]),
            token=self.logit_token_strs[i],
            probability=float(self.logit_probabilities[i]),
        )

    def node_id(self, i: int) -> str:
        info = self.node_info(i)
        kind = info["kind"]
        if kind == "feature":
            return f"F:{info['layer']}:{info['pos']}:{info['feature']}"
        if kind == "error":
            return f"E:{info['layer']}:{info['pos']}"
        if kind == "token":
            return f"T:{info['pos']}"
        return f"L:{info['token_id']}"

    def node_ids(self) -> list[str]:
        return [self.node_id(i) for i in range(self.n_nodes)]

    def _present(self) -> Bool[Tensor, " n_nodes"]:
        mask = (
            torch.ones(self.n_nodes, dtype=torch.bool) if self.node_mask is None else self.node_mask.clone()
        )
        mask[self.error_index(0, 0) : self.token_index(0)].view(self.n_layers, self.n_pos)[:, 0] = False
        return mask

    # ---------------------------------------------------------------- analysis
    def node_influence(self) -> Float[Tensor, " n_nodes"]:
        """Each node's total (path-summed, row-normalised |A|) influence on the logits."""
        return total_influence(normalize_rows(self.adjacency), self.logit_weights())

    def scores(self) -> GraphScores:
        """Replacement and completeness scores (Anthropic's *Circuit Tracing* definitions)."""
        A = normalize_rows(self.adjacency)
        w = self.logit_weights()
        infl = total_influence(A, w)
        errors = slice(self.error_index(0, 0), self.token_index(0))
        tokens = slice(self.token_index(0), self.token_index(0) + self.n_pos)
        tok, err = infl[tokens].sum(), infl[errors].sum()
        replacement = float(tok / (tok + err)) if tok + err > 0 else float("nan")
        non_error = 1 - A[:, errors].sum(1)
        out = infl + w
        completeness = float((non_error * out).sum() / out.sum())
        return GraphScores(replacement, completeness)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """Keep the nodes, then edges, that carry `threshold` of the influence on the logits.

        Tokens and logits are always kept; features/errors left without outgoing edges, and features
        without incoming edges, are removed until none remain. Returns a new AttributionGraph.
        """
        for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {t}.")
        w = self.logit_weights()
        influence = self.node_influence()
        n_inner = self.token_index(0)  # features + errors
        keep = self._present()
        keep[:n_inner] &= influence[:n_inner] >= cumulative_cutoff(influence, node_threshold)
        A = self.adjacency * keep[:, None] * keep[None, :]
        A_norm = normalize_rows(A)
        edge_scores = A_norm * (total_influence(A_norm, w) + w)[:, None]
        edges = (edge_scores >= cumulative_cutoff(edge_scores[edge_scores > 0], edge_threshold)) & (A != 0)
        while True:
            before = keep.clone()
            edges &= keep[:, None] & keep[None, :]
            keep[:n_inner] &= edges[:, :n_inner].any(0)  # has an outgoing edge
            keep[: self.n_features] &= edges[: self.n_features].any(1)  # has an incoming edge
            if torch.equal(keep, before):
                break
        return replace(self, adjacency=self.adjacency * edges, node_mask=keep, influence=influence)

    # ---------------------------------------------------------------- export
    def to_networkx(self) -> nx.DiGraph:
        """nx.DiGraph: nodes with kind/layer/pos/feature/token_id/activation/influence, edges s -> t
        with `weight` = direct effect of s on t."""
        G = nx.DiGraph(prompt_tokens=list(self.token_strs), model_name=self.model_name)
        present = self._present().tolist()
        ids = self.node_ids()
        for i in range(self.n_nodes):
            if present[i]:
                info = self.node_info(i)
                if self.influence is not None:
                    info["influence"] = float(self.influence[i])
                G.add_node(ids[i], **info)
        targets, sources = self.adjacency.nonzero(as_tuple=True)
        weights = self.adjacency[targets, sources].tolist()
        for t, s, wt in zip(targets.tolist(), sources.tolist(), weights):
            if present[t] and present[s]:
                G.add_edge(ids[s], ids[t], weight=wt)
        return G

    def group(self, groups: dict[str, list]) -> nx.DiGraph:
        """`to_networkx()` with each group of nodes merged into one supernode whose edges carry its
        members' summed edge weights; see `tl_clt.supernodes.group_graph`."""
        from tl_clt.supernodes import group_graph

        return group_graph(self, groups)

    def to_json(
        self,
        path: str | Path,
        slug: str | None = None,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        **kwargs,
    ) -> Path:
        """Graph JSON for the circuit-tracer frontend / Neuronpedia (see `tl_clt.export`).

        Prunes with `prune(node_threshold, edge_threshold)` unless this graph is already pruned.
        """
        from tl_clt.export import to_json

        return to_json(
            self, path, slug=slug, node_threshold=node_threshold, edge_threshold=edge_threshold, **kwargs
        )

    def feature_card(self, node, dashboards=None):
        """The FeatureCard (what the feature does) of a feature node: an id `"F:12:5:847"`, a
        `(layer, pos, feature)` key or a `(layer, feature)` pair. `dashboards`: a FeatureDashboards, a
        folder or a hub id; default: the dashboards next to the CLT the graph was made with."""
        from tl_clt.dashboards.format import DashboardsNotFoundError
        from tl_clt.dashboards.reader import dashboards_for_graph, feature_of, open_dashboards

        dash = open_dashboards(dashboards) if dashboards is not None else dashboards_for_graph(self)
        if dash is None:
            raise DashboardsNotFoundError(
                f"The graph's CLT ({self.clt_name}) has no features/ dashboards: pass dashboards= (a "
                "FeatureDashboards, folder or hub id), or build them with tl_clt.build_feature_dashboards."
            )
        return dash[feature_of(node)]

    def plot(self, path: str | Path | None = None, **kwargs):
        """matplotlib Figure of the pruned graph (see `tl_clt.plot.plot_graph`)."""
        from tl_clt.plot import plot_graph

        return plot_graph(self, path=path, **kwargs)

    def save(self, path: str | Path) -> None:
        """Write the graph to `path` (a temp file renamed into place: a failed save leaves no file)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"Cannot save to {path}: the folder {path.parent} does not exist.")
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": GRAPH_FORMAT, "graph": data}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No graph file at {path}.")
        try:
            blob = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:
            raise ValueError(f"{path} is not a readable tl_clt graph file ({err}).") from err
        if not isinstance(blob, dict) or blob.get("format") != GRAPH_FORMAT:
            found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(
                f"{path} holds {found!r}, not a {GRAPH_FORMAT} graph; re-create it with this "
                "version of tl_clt (tl_clt.attribute(...).save(path))."
            )
        data = blob.get("graph")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if not isinstance(data, dict) or set(data) - names or required - set(data):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{path} says {GRAPH_FORMAT} but its fields {got} are not this version's {sorted(names)}; "
                "the file is corrupt or from another tl_clt version: re-create it with tl_clt.attribute."
            )
        return cls(**data)
