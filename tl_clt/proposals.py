"""Automatic supernodes: named groups of feature nodes proposed from a pruned attribution graph.

`propose_supernodes(graph, model=..., clt=...)` groups the feature nodes of a pruned graph by what
each feature *reads* (which prompt tokens feed it, through the graph's paths), where it *sits* (the
word of the prompt it is on), what it *says* (its effect on the logits), its layer, and the nodes it
shares with others (parents and children); dashboard labels join in where the CLT has them. Groups
come from average-linkage clustering of those similarities, and each gets a name from its members
("year ~2010", "era ~2010", "say a name", "president"). See docs/supernodes.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt.graph import AttributionGraph

SIGNALS = ("reads", "sits", "says", "layer", "neighbours", "labels")
DEFAULT_WEIGHTS = {"reads": 0.35, "sits": 0.2, "says": 0.25, "layer": 0.1, "neighbours": 0.1, "labels": 0.2}
_NAME_TOKEN = re.compile(r"^ [A-Z][a-z]")


@dataclass(frozen=True)
class SupernodeInfo:
    """How a proposed group looks: where it sits, what it reads and says, and why it has its name."""

    name: str
    kind: str  # "year" | "era" | "say a name" | "word" | "says"
    members: list[str]
    sits: list[str]  # the prompt's words the members are on, most influential first
    reads: list[tuple[str, float]]  # prompt words feeding the group, with their share
    says: list[str]  # top output tokens of the group's summed logit effect
    layers: list[int]
    influence: float  # summed node influence of the members


class SupernodeProposals(dict):
    """`{name: [node id, ...]}` (pass it to `graph.group(...)` or `to_json(supernodes=...)`), with
    `.info[name]` (a `SupernodeInfo`) and `.signals` (the signals used, and their weights)."""

    def __init__(self, groups: Mapping[str, list[str]], info: dict[str, SupernodeInfo], signals: dict):
        super().__init__(groups)
        self.info, self.signals = info, signals

    def by_kind(self, kind: str) -> list[str]:
        """Names of the groups of one kind, most influential first."""
        return [n for n, i in self.info.items() if i.kind == kind]

    def table(self) -> str:
        """One line per group: name, size, layers, where it sits, what it reads and says."""
        lines = []
        for name, i in self.info.items():
            reads = ", ".join(f"{w!r} {s:.2f}" for w, s in i.reads[:3])
            lines.append(
                f"{name:18s} {len(i.members):3d} features  layers {i.layers}  on {i.sits[:4]}  "
                f"reads {reads}  says {i.says[:4]}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------ the prompt's words
def word_spans(token_strs: list[str]) -> list[int]:
    """Word index of each token: a token continues the previous word when it does not start with
    whitespace and both touch as letters/digits, or when the previous token is bare whitespace
    (Qwen writes " 2010" as " ", "2", "0", "1", "0"). Position 0 (the sink) is word 0."""
    out, word = [0], 0
    for prev, tok in zip(token_strs, token_strs[1:]):
        joined = prev.strip() == "" and prev != "" and tok[:1].isalnum()
        glued = tok[:1].isalnum() and prev[-1:].isalnum() and not tok[:1].isspace()
        if len(out) == 1 or not (joined or glued):
            word += 1
        out.append(word)
    return out


def _word_texts(token_strs: list[str], spans: list[int]) -> list[str]:
    texts = [""] * (max(spans) + 1)
    for tok, w in zip(token_strs, spans):
        texts[w] += tok
    return texts


def _is_number(text: str) -> bool:
    return text.strip().isdigit()


# ------------------------------------------------------------------------ signals
@dataclass
class _Nodes:
    """The pruned graph as dense arrays over its present nodes (rows = targets, columns = sources)."""

    ids: list[str]
    attrs: list[dict]
    W: Float[Tensor, "n n"]  # signed edge weights
    features: list[int]  # indices (into ids) of the feature nodes
    tokens: dict[int, int]  # position -> index of its token node
    logits: list[int]

    @property
    def A(self) -> Float[Tensor, "n n"]:
        """|W| with each row scaled to sum to 1."""
        a = self.W.abs()
        return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def _graph_arrays(G: nx.DiGraph) -> _Nodes:
    ids = list(G.nodes)
    index = {n: i for i, n in enumerate(ids)}
    W = torch.zeros(len(ids), len(ids), dtype=torch.float64)
    for u, v, w in G.edges(data="weight"):
        W[index[v], index[u]] = w
    attrs = [G.nodes[n] for n in ids]
    kinds = [a["kind"] for a in attrs]
    features = [i for i, k in enumerate(kinds) if k == "feature"]
    tokens = {a["pos"]: i for i, a in enumerate(attrs) if a["kind"] == "token"}
    logits = [i for i, k in enumerate(kinds) if k == "logit"]
    return _Nodes(ids, attrs, W, features, tokens, logits)


def _reads(graph: AttributionGraph, nodes: _Nodes, spans: list[int]) -> Float[Tensor, "n_feat n_words"]:
    """Signed share of each feature's input that each word's token embeddings make, through every
    path of feature nodes in `nodes` (the pruned graph's features).

    An edge s -> t is `a_s * d(pre_t)/d(a_s)` in the frozen linear model, so per unit of source
    activation it is `J = edge / a_s`, and the total contribution of the tokens through all paths is
    `C = (I - J)^-1 E` (E: the direct token edges). Rows are scaled to unit L1 norm.
    """
    rows = [_graph_index(graph, nodes.attrs[i]) for i in nodes.features]
    rows_t = torch.tensor(rows, dtype=torch.long)
    adjacency = graph.adjacency.double()
    acts = graph.activation_values[graph.selected_features].double()[rows_t]
    J = adjacency[rows_t][:, rows_t] / acts.abs().clamp(min=1e-12)[None, :]
    first = graph.token_index(0)
    E = adjacency[rows_t, first : first + graph.n_pos]
    C = torch.linalg.solve(torch.eye(len(rows), dtype=J.dtype) - J, E)  # [n_feat, n_pos]
    out = torch.zeros(len(rows), max(spans) + 1, dtype=C.dtype)
    for pos in range(1, graph.n_pos):
        out[:, spans[pos]] += C[:, pos]
    return (out / out.abs().sum(1, keepdim=True).clamp(min=1e-30)).float()


def _graph_index(graph: AttributionGraph, attrs: dict) -> int:
    return graph.feature_index(attrs["layer"], attrs["pos"], attrs["feature"])


def _neighbours(nodes: _Nodes) -> Float[Tensor, "n_feat two_n"]:
    """Each feature's normalised incoming and outgoing edge weights, side by side."""
    a = nodes.W.abs()
    outgoing = a.T / a.T.sum(1, keepdim=True).clamp(min=1e-30)
    return torch.cat([nodes.A[nodes.features], outgoing[nodes.features]], 1).float()


def logit_readout(model) -> Float[Tensor, "d_model d_vocab"]:
    """`ln_final.w`-scaled unembedding, de-meaned over the vocabulary: a residual direction times
    this is its direct effect on the de-meaned logits (as in `feature_output_tokens`)."""
    W = model.W_U.detach().float() * model.ln_final.w.detach().float()[:, None]
    return W - W.mean(1, keepdim=True)


def decoder_directions(clt, keys: list[tuple[int, int]]) -> Float[Tensor, "n d_model"]:
    """Sum of each (layer, feature)'s decoder rows over the layers it writes to."""
    out = torch.zeros(len(keys), clt.d_model)
    for layer in sorted({k[0] for k in keys}):
        rows = [i for i, k in enumerate(keys) if k[0] == layer]
        feats = torch.tensor([keys[i][1] for i in rows])
        out[rows] = clt.decoder_rows(layer, feats).float().sum(1).cpu()
    return out


def _says(nodes: _Nodes, model, clt) -> tuple[Float[Tensor, "n_feat m"], list[int] | None]:
    """Each feature's effect on the logits per unit activation, and the token ids of its columns:
    through the unembedding (all tokens) when the model and CLT are given, otherwise its direct
    edges into the graph's logit nodes (token ids None: read `nodes.logits`)."""
    if model is not None and clt is not None:
        keys = [(nodes.attrs[i]["layer"], nodes.attrs[i]["feature"]) for i in nodes.features]
        readout = logit_readout(model)
        return decoder_directions(clt, keys).to(readout.device) @ readout, None
    acts = torch.tensor([nodes.attrs[i]["activation"] for i in nodes.features], dtype=nodes.W.dtype)
    direct = nodes.W[nodes.logits][:, nodes.features].T / acts.abs().clamp(min=1e-9)[:, None]
    return direct.float(), [nodes.attrs[i]["token_id"] for i in nodes.logits]


def _cosine(X: Tensor) -> Float[Tensor, "n n"]:
    X = X.float().cpu()
    X = X / X.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (X @ X.T).clamp(min=0.0)


def _label_similarity(labels: list[str | None]) -> Float[Tensor, "n n"]:
    """Jaccard similarity of the labels' lower-cased words (0 where a label is missing)."""
    words = [set(re.findall(r"[a-z0-9]+", (s or "").lower())) for s in labels]
    n = len(words)
    S = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            if words[i] and words[j]:
                S[i, j] = len(words[i] & words[j]) / len(words[i] | words[j])
    return S


def _feature_labels(clt, keys: list[tuple[int, int]], labels) -> list[str | None] | None:
    """Text labels of the features: from `labels` (a mapping or a callable of (layer, feature)),
    else from `clt.dashboards` where the CLT has them; None when neither is there."""
    if labels is None:
        dash = getattr(clt, "dashboards", None) if clt is not None else None
        if dash is None:
            return None

        def labels(layer: int, feature: int) -> str | None:
            return _card_text(dash[layer, feature])

    get = labels if callable(labels) else (lambda layer, feature: labels.get((layer, feature)))
    return [get(layer, feature) for layer, feature in keys]


def _card_text(card) -> str | None:
    """A dashboard card's text: its label / explanation / description, else its top tokens."""
    for attr in ("label", "explanation", "description"):
        text = getattr(card, attr, None)
        if isinstance(text, str) and text.strip():
            return text
    tokens = getattr(card, "top_tokens", None)
    return " ".join(map(str, tokens)) if tokens else None


# ------------------------------------------------------------------------ clustering
def _similarity(signals: dict[str, Tensor], weights: Mapping[str, float]) -> Float[Tensor, "n n"]:
    used = {k: float(weights.get(k, 0.0)) for k in signals if weights.get(k, 0.0) > 0}
    total = sum(used.values())
    return sum(w * signals[k] for k, w in used.items()) / total


def _clusters(S: Float[Tensor, "n n"], max_distance: float) -> list[list[int]]:
    """Average-linkage clusters of 1 - S cut at `max_distance`, as lists of row indices."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(S) == 1:
        return [[0]]
    D = (1.0 - (S + S.T) / 2).clamp(min=0.0).double().numpy()
    np.fill_diagonal(D, 0.0)
    Z = linkage(squareform(D, checks=False), method="average")
    ids = fcluster(Z, t=max_distance, criterion="distance")
    return [np.flatnonzero(ids == c).tolist() for c in sorted(set(ids.tolist()))]


def _signals(graph: AttributionGraph, nodes: _Nodes, spans: list[int], model, clt, labels):
    feats = [nodes.attrs[i] for i in nodes.features]
    sits = torch.tensor([spans[a["pos"]] for a in feats])
    layer = torch.tensor([float(a["layer"]) for a in feats])
    reads = _reads(graph, nodes, spans)
    says, says_tokens = _says(nodes, model, clt)
    signals = {
        "reads": _cosine(reads),
        "sits": (sits[:, None] == sits[None]).float(),
        "says": _cosine(says),
        "layer": 1 - (layer[:, None] - layer[None]).abs() / max(1, graph.n_layers - 1),
        "neighbours": _cosine(_neighbours(nodes)),
    }
    text = _feature_labels(clt, [(a["layer"], a["feature"]) for a in feats], labels)
    if text is not None:
        signals["labels"] = _label_similarity(text)
    return signals, reads, says, says_tokens, text


def propose_supernodes(
    graph: AttributionGraph,
    *,
    model=None,
    clt=None,
    labels: Mapping[tuple[int, int], str] | Callable[[int, int], str | None] | None = None,
    weights: Mapping[str, float] | None = None,
    max_distance: float = 0.5,
    min_size: int = 2,
    min_influence: float = 0.02,
    max_groups: int | None = 8,
) -> SupernodeProposals:
    """Named groups of the feature nodes of a pruned graph: `{name: [node id, ...]}`.

    `graph`: a pruned graph (`graph.prune(...)`); an unpruned one is pruned with the defaults.
    `model`, `clt`: give both to compare features by their effect on every logit (decoder through
    the unembedding) and to name groups by what they say; without them the graph's logit edges are
    used. `labels`: text labels per (layer, feature) (a mapping or a callable), e.g. dashboard
    explanations; by default `clt.dashboards` is read where it exists. `weights`: per-signal weights
    (keys in `SIGNALS`; defaults `DEFAULT_WEIGHTS`). Groups are average-linkage clusters at distance
    <= `max_distance` (1 - weighted similarity); groups with fewer than `min_size` members or less
    than `min_influence` of the features' total influence are left out, at most `max_groups` kept,
    most influential first. Deterministic. Returns a `SupernodeProposals` (a dict with `.info`).
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = set(weights) - set(SIGNALS)
    if unknown:
        raise ValueError(f"Unknown signal weights {sorted(unknown)}; the signals are {SIGNALS}.")
    if (model is None) != (clt is None):
        raise ValueError("Give both model= and clt= (to read what features say), or neither.")
    if not 0 < max_distance <= 1:
        raise ValueError(f"max_distance is a distance in (0, 1], got {max_distance}.")
    pruned = graph if graph.node_mask is not None else graph.prune()
    nodes = _graph_arrays(pruned.to_networkx())
    spans = word_spans(list(graph.token_strs))
    if not nodes.features:
        return SupernodeProposals({}, {}, {"weights": {}})
    signals, reads, says, says_tokens, _ = _signals(pruned, nodes, spans, model, clt, labels)
    S = _similarity(signals, weights)
    infl = torch.tensor([float(nodes.attrs[i].get("influence") or 0.0) for i in nodes.features])
    clusters = sorted(_clusters(S, max_distance), key=lambda c: (-float(infl[c].sum()), c[0]))
    total = float(infl.sum()) or 1.0
    kept = [c for c in clusters if len(c) >= min_size and float(infl[c].sum()) >= min_influence * total]
    kept = kept[:max_groups] if max_groups is not None else kept
    words = _word_texts(list(graph.token_strs), spans)
    ctx = _NamingContext(nodes, spans, words, reads, says, says_tokens, infl, model)
    infos = _name_groups([ctx.describe(c) for c in kept])
    used = {k: weights[k] for k in signals if weights.get(k, 0) > 0}
    return SupernodeProposals({i.name: i.members for i in infos}, {i.name: i for i in infos}, {"weights": used})


# ------------------------------------------------------------------------ naming
@dataclass
class _NamingContext:
    nodes: _Nodes
    spans: list[int]
    words: list[str]
    reads: Tensor
    says: Tensor
    says_tokens: list[int] | None
    infl: Tensor
    model: object

    def describe(self, rows: list[int]) -> SupernodeInfo:
        attrs = [self.nodes.attrs[self.nodes.features[r]] for r in rows]
        w = self.infl[rows] + 1e-12
        sit_weight: dict[int, float] = {}
        for a, wi in zip(attrs, w.tolist()):
            sit_weight[self.spans[a["pos"]]] = sit_weight.get(self.spans[a["pos"]], 0.0) + wi
        sits = sorted(sit_weight, key=lambda s: (-sit_weight[s], s))
        read = (self.reads[rows] * w[:, None]).sum(0) / w.sum()
        order = [int(i) for i in torch.argsort(read, descending=True, stable=True) if read[i] > 0]
        acts = torch.tensor([a["activation"] for a in attrs])
        total = (self.says[rows].float() * acts[:, None].to(self.says.device)).sum(0).cpu()
        top = torch.argsort(total, descending=True, stable=True)[:10].tolist()
        ids = top if self.says_tokens is None else [self.says_tokens[i] for i in top]
        says = [self._decode(t) for t in ids]
        members = [self.nodes.ids[self.nodes.features[r]] for r in rows]
        kind, stem = _kind(
            [self.words[s] for s in sits], sit_weight[sits[0]] / float(w.sum()),
            [(self.words[i], float(read[i])) for i in order if i not in sits[:1]], says,
            sits[0] == max(self.spans),
        )  # fmt: skip
        return SupernodeInfo(
            name=stem,
            kind=kind,
            members=members,
            sits=[self.words[s] for s in sits],
            reads=[(self.words[i], round(float(read[i]), 3)) for i in order[:5]],
            says=says,
            layers=sorted({a["layer"] for a in attrs}),
            influence=float(self.infl[rows].sum()),
        )

    def _decode(self, token_id: int) -> str:
        if self.model is not None and getattr(self.model, "tokenizer", None) is not None:
            return self.model.tokenizer.decode([token_id])
        return str(token_id)


def _number_name(text: str) -> str:
    n = text.strip()
    return f"year ~{n}" if len(n) == 4 and n[0] in "12" else f"number ~{n}"


def _kind(sits, sit_share, reads_elsewhere, says, at_last) -> tuple[str, str]:
    """(kind, name) of a group from where it sits, what it reads besides that, and what it says."""
    if _is_number(sits[0]) and sit_share >= 0.5:
        return "year", _number_name(sits[0])
    top_read = reads_elsewhere[0] if reads_elsewhere else ("", 0.0)
    if at_last and _is_number(top_read[0]):
        return "era", "era ~" + top_read[0].strip()
    if at_last and sum(bool(_NAME_TOKEN.match(t)) for t in says) >= 0.6 * max(1, len(says)):
        return "say a name", "say a name"
    if not at_last and sits[0].strip():
        return "word", sits[0].strip()
    if top_read[0].strip():
        return "word", top_read[0].strip()
    return "says", "say " + ", ".join(repr(t) for t in says[:2])


def _name_groups(infos: list[SupernodeInfo]) -> list[SupernodeInfo]:
    """Give repeated names a suffix (" #2", " #3", ...) in the order given."""
    seen: dict[str, int] = {}
    out = []
    for info in infos:
        seen[info.name] = seen.get(info.name, 0) + 1
        name = info.name if seen[info.name] == 1 else f"{info.name} #{seen[info.name]}"
        out.append(SupernodeInfo(**{**info.__dict__, "name": name}))
    return out
