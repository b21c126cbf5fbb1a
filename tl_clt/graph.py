"""AttributionGraph: node table + dense adjacency, networkx view, save/load.

Influence, pruning and scores are in `tl_clt.influence`; node ids in `tl_clt.nodes`.

Node order in the adjacency (rows = targets, columns = sources), as in circuit-tracer:
`[selected features | errors (layer-major, n_layers * n_pos) | tokens (n_pos) | logits]`.
Only feature and logit rows have entries: errors and tokens have no incoming edges. Error nodes at
position 0 (the attention sink) are zero vectors and never appear in `to_networkx()`.
Node ids in networkx: `"F:{layer}:{pos}:{feature}"`, `"E:{layer}:{pos}"`, `"T:{pos}"`, `"L:{token_id}"`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import networkx as nx
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_clt import graph_file
from tl_clt import influence as influence_fns
from tl_clt.influence import EDGE_THRESHOLD, NODE_THRESHOLD, GraphScores
from tl_clt.nodes import Node
from tl_clt.prompts import SINK_POS


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
        return Node.from_info(self.node_info(i)).id

    def node_ids(self) -> list[str]:
        return [self.node_id(i) for i in range(self.n_nodes)]

    def present_mask(self) -> Bool[Tensor, " n_nodes"]:
        """Nodes that are in the graph: not pruned away, and not an error at the sink position."""
        mask = (
            torch.ones(self.n_nodes, dtype=torch.bool) if self.node_mask is None else self.node_mask.clone()
        )
        errors = mask[self.error_index(0, 0) : self.token_index(0)].view(self.n_layers, self.n_pos)
        errors[:, SINK_POS] = False
        return mask

    _present = present_mask  # the old private name, for code written against it

    # ---------------------------------------------------------------- analysis (tl_clt.influence)
    def node_influence(self) -> Float[Tensor, " n_nodes"]:
        """Each node's total (path-summed, row-normalised |A|) influence on the logits."""
        return influence_fns.node_influence(self)

    def scores(self) -> GraphScores:
        """Replacement and completeness scores (Anthropic's *Circuit Tracing* definitions)."""
        return influence_fns.scores(self)

    def prune(
        self, node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD
    ) -> AttributionGraph:
        """Keep the nodes, then edges, that carry `threshold` of the influence on the logits
        (see `tl_clt.influence.prune`). Returns a new AttributionGraph."""
        return influence_fns.prune(self, node_threshold=node_threshold, edge_threshold=edge_threshold)

    # ---------------------------------------------------------------- export
    def to_networkx(self) -> nx.DiGraph:
        """nx.DiGraph: nodes with kind/layer/pos/feature/token_id/activation/influence, edges s -> t
        with `weight` = direct effect of s on t."""
        G = nx.DiGraph(prompt_tokens=list(self.token_strs), model_name=self.model_name)
        present = self.present_mask().tolist()
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
        node_threshold: float | None = None,
        edge_threshold: float | None = None,
        **kwargs,
    ) -> Path:
        """Graph JSON for the circuit-tracer frontend / Neuronpedia (see `tl_clt.export`).

        Prunes with `prune(node_threshold, edge_threshold)` (default 0.8, 0.98) unless this graph is
        already pruned; thresholds for an already pruned graph are refused (they would not be applied).
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

    def plot(self, path: str | Path | None = None, *, supernodes: dict | None = None, **kwargs):
        """matplotlib Figure: the pruned graph (`tl_clt.plot_graph`), or with `supernodes`
        ({name: [node ids]}) the circuit diagram of those groups (`tl_clt.plot_circuit`)."""
        if supernodes is not None:
            from tl_clt.circuit import plot_circuit

            return plot_circuit(self, supernodes, path, **kwargs)
        from tl_clt.plot import plot_graph

        return plot_graph(self, path=path, **kwargs)

    def show(self, *, model=None, clt=None, **kwargs):
        """Interactive view in the notebook (pan, zoom, hover cards, click to highlight, a threshold
        slider), on the pruned graph; see `tl_clt.view.show`. Give `model` and `clt` for each feature's
        top output tokens (and dashboards) in its card."""
        from tl_clt.view import show

        return show(self, model=model, clt=clt, **kwargs)

    def save(self, path: str | Path) -> None:
        """Write the graph to `path`: a safetensors file + JSON metadata, whatever the name (see
        `tl_clt.graph_file`); atomic: a failed save leaves the old file, if any, and no partial file."""
        graph_file.write(path, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        """A graph written by `save`; never unpickles, and checks every field before building the graph."""
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        return cls(**graph_file.read(path, {f.name for f in fields(cls)}, required))

    # ---------------------------------------------------------------- notebooks and TransformerLens
    def node_kind(self, i: int) -> str:
        """ "feature" | "error" | "token" | "logit": the kind of node i (by its place in the layout)."""
        if not 0 <= i < self.n_nodes:
            raise IndexError(f"node {i} is out of range for a graph of {self.n_nodes} nodes.")
        if i < self.n_features:
            return "feature"
        if i < self.token_index(0):
            return "error"
        return "token" if i < self.token_index(0) + self.n_pos else "logit"

    @property
    def str_tokens(self) -> list[str]:
        """The token strings at graph positions (TransformerLens' spelling of `token_strs`).

        Position 0 is the attention sink. Graph position p is `model.to_str_tokens(prompt)[p -
        graph.prompt_offset]`.
        """
        return list(self.token_strs)

    @property
    def prompt_offset(self) -> int:
        """1 when tl_clt put the `<|endoftext|>` sink in front of the prompt, 0 when the prompt began
        with a special token itself. Graph position p = index `p - prompt_offset` into
        `model.to_str_tokens(prompt)` (with `load_qwen3`'s default, TransformerLens adds no BOS)."""
        if "prompt_offset" in self.meta:
            return int(self.meta["prompt_offset"])
        return 1 if self.token_strs and self.token_strs[0] == "<|endoftext|>" else 0

    def __repr__(self) -> str:
        from tl_clt.display import graph_repr

        return graph_repr(self)

    def _repr_html_(self) -> str:
        from tl_clt.display import graph_html

        return graph_html(self)

    def __eq__(self, other: object) -> bool:
        """Same tokens, nodes, activations, edges, logits, pruning and names (`meta` is not compared:
        it holds timings)."""
        if not isinstance(other, AttributionGraph):
            return NotImplemented
        for f in fields(self):
            if f.name == "meta":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                same = (
                    isinstance(a, Tensor)
                    and isinstance(b, Tensor)
                    and a.shape == b.shape
                    and a.dtype == b.dtype
                    and torch.equal(a.cpu(), b.cpu())
                )
            else:
                same = a == b
            if not same:
                return False
        return True

    __hash__ = None  # mutable, compared by value

    def nodes_df(self):
        """pandas DataFrame, one row per node of `to_networkx()` (pruned graphs: the kept nodes), in
        node order: node_id, kind, layer, pos, feature, token_id, token, activation, probability,
        influence (when known), index (row/column in `adjacency`)."""
        import pandas as pd

        present = self.present_mask()
        rows = []
        for i in present.nonzero().flatten().tolist():
            info = self.node_info(i)
            if info["kind"] in ("feature", "token"):
                info.setdefault("token", self.token_strs[info["pos"]])
            rows.append(dict(node_id=self.node_id(i), index=i, **info))
        df = pd.DataFrame(
            rows,
            columns=[
                "node_id", "kind", "layer", "pos", "feature", "token_id", "token", "activation",
                "probability", "index",
            ],
        )  # fmt: skip
        for col in ("layer", "pos", "feature", "token_id"):
            df[col] = df[col].astype("Int64")
        if self.influence is not None:
            df["influence"] = self.influence[present].float().numpy()
        return df.set_index("node_id")

    def edges_df(self):
        """pandas DataFrame, one row per edge of `to_networkx()`: source, target (node ids), weight
        (the direct effect of source on target), source_kind, target_kind; strongest |weight| first."""
        import pandas as pd

        present = self.present_mask()
        A = self.adjacency * present[:, None] * present[None, :]
        targets, sources = A.nonzero(as_tuple=True)
        weights = A[targets, sources]
        order = weights.abs().argsort(descending=True, stable=True)
        targets, sources, weights = targets[order].tolist(), sources[order].tolist(), weights[order]
        ids = self.node_ids()
        return pd.DataFrame(
            {
                "source": [ids[s] for s in sources],
                "target": [ids[t] for t in targets],
                "weight": weights.float().numpy(),
                "source_kind": [self.node_kind(s) for s in sources],
                "target_kind": [self.node_kind(t) for t in targets],
            }
        )
