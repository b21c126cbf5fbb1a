"""Automatic supernodes: named groups of feature nodes proposed from a pruned attribution graph.

`propose_supernodes(graph, model=..., clt=...)` puts each feature node of a pruned graph in a group
by three signals (docs/supernodes.md):

- where it *sits*: a feature on a word of the prompt other than the last one joins that word's
  group ("year ~2010" for a number word, else the word: "president"), or, what it *reads*, the
  group of an earlier word that feeds it more than its own word does (a feature on " United" fed
  by " president" carries the office);
- what *feeds* it: a feature on a number word whose direct input comes less than `token_share` from
  token embeddings (it is fed by other features: what the year means, not its digits) joins
  "era ~2010";
- what it *reads*: a feature on the last word (where the answer is read) that the prompt's number
  word ("2010") feeds most through the graph's paths joins "era ~2010", whatever it says (it
  carries which era the answer comes from);
- what it *says*: any other feature on the last word whose top output tokens (decoder through the
  unembedding) are mostly names joins "say a name", and so does one of the few that carry most of
  what the last word's features push together (`push_cover`; the tokens their summed direct effect
  raises most, against those it lowers most: names against filler on a fact prompt);
- what it *reads* again: the rest of the last word's features join the group of the word whose
  token embeddings feed them most (features on " president" and the last-word features that read
  it are one group);
- what it *carries*, measured (`mediate`, off by default): "say a name" keeps only the features through
  which the most influential word ("president") acts on the answer: those, chosen greedily, whose
  steering down brings the next-token distribution closest to that word's group steered down; the
  rest of the last word's features form a group of their own;
- where it sits, for what pruning dropped: the graph's feature nodes that node pruning left out are
  listed with the group of where they sit (`info[name].pruned_out`), and `proposals.whole(name)` (the
  members and those) is what to steer: a concept is spread over more features than pruning keeps.

Dashboard labels, where the CLT has them, describe the groups. Deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import networkx as nx
import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt.graph import AttributionGraph
from tl_clt.hooks import check_compatible
from tl_clt.sites import sites_for

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
    label: str | None = None  # the members' most common dashboard / given label, if any
    pruned_out: list[str] = field(default_factory=list)  # see `SupernodeProposals.whole`


class SupernodeProposals(dict):
    """`{name: [node id, ...]}` (pass it to `graph.group(...)` or `to_json(supernodes=...)`), with
    `.info[name]` (a `SupernodeInfo`) and `.signals` (the signals used)."""

    def __init__(self, groups: Mapping[str, list[str]], info: dict[str, SupernodeInfo], signals: dict):
        super().__init__(groups)
        self.info, self.signals = info, signals

    def whole(self, name: str) -> list[str]:
        """The group's members and the graph's feature nodes that node pruning left out where the group
        sits (`info[name].pruned_out`): what to steer or ablate to move the group's concept, which is
        spread over more features than pruning keeps. Not for `to_json` (pruned-out nodes are not in
        the exported graph); `self[name]` is."""
        return list(self[name]) + list(self.info[name].pruned_out)

    def _repr_html_(self) -> str:
        """A table of the groups for notebooks (`tl_clt.display.proposals_html`)."""
        from tl_clt.display import proposals_html

        return proposals_html(self)

    def by_kind(self, kind: str) -> list[str]:
        """Names of the groups of one kind, most influential first."""
        return [n for n, i in self.info.items() if i.kind == kind]

    def table(self) -> str:
        """One line per group: name, size (and features pruned out where it sits), layers, where it sits,
        what it reads and says."""
        lines = []
        for name, i in self.info.items():
            reads = ", ".join(f"{w!r} {s:.2f}" for w, s in i.reads[:3])
            out = f" (+{len(i.pruned_out)} pruned out)" if i.pruned_out else ""
            lines.append(
                f"{name:18s} {len(i.members):3d} features{out}  layers {i.layers}  on {i.sits[:4]}  "
                f"reads {reads}  says {i.says[:4]}" + (f"  label {i.label!r}" if i.label else "")
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


def word_texts(token_strs: list[str], spans: list[int]) -> list[str]:
    """Each word's text (its tokens joined), by `word_spans`' word index."""
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


def logit_readout(model, sites=None) -> Float[Tensor, "d_model d_vocab"]:
    """`ln_final.w`-scaled unembedding, de-meaned over the vocabulary: a residual direction times
    this is its direct effect on the de-meaned logits (as in `feature_output_tokens`). Weights are
    read through the model's `Sites` (`sites_for(model)` unless given)."""
    sites = sites_for(model) if sites is None else sites
    W_U = sites.weight(model, sites.W_U).detach().float()
    W = W_U * sites.weight(model, sites.final_norm_weight).detach().float()[:, None]
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
        readout = logit_readout(model, check_compatible(model, clt))
        return decoder_directions(clt, keys).to(readout.device) @ readout, None
    acts = torch.tensor([nodes.attrs[i]["activation"] for i in nodes.features], dtype=nodes.W.dtype)
    direct = nodes.W[nodes.logits][:, nodes.features].T / acts.abs().clamp(min=1e-9)[:, None]
    return direct.float(), [nodes.attrs[i]["token_id"] for i in nodes.logits]


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
    for attr in ("top_tokens", "top_logits"):
        tokens = getattr(card, attr, None)
        if tokens:
            return " ".join(map(str, tokens[:3]))
    return None


# ------------------------------------------------------------------------ grouping
def _is_name(token: str) -> bool:
    return bool(_NAME_TOKEN.match(token))


def _keys(nodes: _Nodes, spans: list[int], words: list[str], reads: Tensor, says_strs: list[list[str]],
          name_share: float, pushes: set[int], token_share: float) -> list[tuple]:  # fmt: skip
    """Each feature's group key (module docstring): ("word", w) for a feature on word w (not the
    last one), or on the earlier word w it reads more than its own (neither a number), but ("era", w)
    on a number word w when less than `token_share` of its direct input is from tokens; on the last
    word ("era", w) when the word w it reads most is a number, else ("say",) when it is in `pushes`
    (rows of `_pushers`) or names make up `name_share` of its top output tokens, else ("word", w)
    for the word w it reads most, else ("last",)."""
    last = max(spans)
    direct = _token_shares(nodes)
    keys = []
    for row, i in enumerate(nodes.features):
        sits = spans[nodes.attrs[i]["pos"]]
        if sits != last:
            w = _carried_word(reads[row], sits, words)
            if _is_number(words[w]) and direct[row] < token_share:
                keys.append(("era", w))  # on the number, fed by features: what the year means
            else:
                keys.append(("word", w))
            continue
        r = reads[row].clone()
        r[0] = r[last] = 0.0
        w = int(torch.argmax(r))
        if r[w] > 0 and _is_number(words[w]):
            keys.append(("era", w))  # reads a number (a year) most: the era, whatever it says
            continue
        toks = says_strs[row]
        if row in pushes or (toks and sum(map(_is_name, toks)) >= name_share * len(toks)):
            keys.append(("say",))
        elif r[w] <= 0:
            keys.append(("last",))
        else:
            keys.append(("word", w))
    return keys


def _token_shares(nodes: _Nodes) -> Float[Tensor, " n_feat"]:
    """Share of each feature's direct input (|edges| in the pruned graph) that comes straight from
    token embeddings: 1 for a feature that reads its word's tokens alone, near 0 for one fed by
    other features and errors; 1 where pruning left it no input edge (nothing says it is fed)."""
    return _from_tokens(nodes.W[nodes.features], list(nodes.tokens.values())).float()


def _from_tokens(rows: Float[Tensor, "n n_sources"], token_columns) -> Float[Tensor, " n"]:
    """Share of each row's |edges| in `token_columns`; 1 for a row without edges (`_token_shares`)."""
    a = rows.abs()
    tok, total = a[:, token_columns].sum(1), a.sum(1)
    return torch.where(total > 0, tok / total.clamp(min=1e-30), torch.ones_like(total))


def _pruned_from(pruned: AttributionGraph, unpruned: AttributionGraph) -> bool:
    """Whether `pruned` can be `unpruned.prune(...)`: the same prompt and nodes, `unpruned` unmasked."""
    return (
        unpruned.node_mask is None
        and torch.equal(unpruned.tokens, pruned.tokens)
        and torch.equal(unpruned.active_features, pruned.active_features)
        and torch.equal(unpruned.selected_features, pruned.selected_features)
        and unpruned.adjacency.shape == pruned.adjacency.shape
    )


def _pruned_out_keys(
    graph: AttributionGraph,
    unpruned: AttributionGraph | None,
    spans: list[int],
    words: list[str],
    token_share: float,
) -> list[tuple[str, tuple]]:
    """(node id, group key) of every feature node of the pruned `graph` that node pruning left out, by
    where it sits (as `_keys` places a present feature on that word that reads no other): the last
    word's features ("say",); a number word's ("era", w) when less than `token_share` of its direct
    input (|edges| of its row in `unpruned`) is from token embeddings, else ("word", w), and none when
    `unpruned` is not given (pruning zeroed those rows); any other word's ("word", w). Features on
    the sink (word 0) are left out."""
    lost = [i for i, kept in enumerate(graph.present_mask()[: graph.n_features].tolist()) if not kept]
    if not lost:
        return []
    last = max(spans)
    share = [None] * len(lost)
    if unpruned is not None:
        first = unpruned.token_index(0)
        rows = unpruned.adjacency[torch.tensor(lost)].double()
        share = _from_tokens(rows, slice(first, first + unpruned.n_pos)).tolist()
    pos = graph.active_features[graph.selected_features[torch.tensor(lost)], 1].tolist()
    out = []
    for i, p, sh in zip(lost, pos, share, strict=True):
        w = spans[p]
        if w == 0 or (_is_number(words[w]) and sh is None):
            continue
        if w == last:
            key = ("say",)
        elif _is_number(words[w]):
            key = ("era", w) if sh < token_share else ("word", w)
        else:
            key = ("word", w)
        out.append((graph.node_id(i), key))
    return out


def _pushers(nodes: _Nodes, spans: list[int], says: Tensor, k: int, cover: float) -> set[int]:
    """Rows of the last word's features that carry most of what that word's features push together.

    `says` [n_feat, vocab]: effect on the de-meaned logits per unit activation. The last word's
    features' summed direct effect `sum_i a_i says_i` raises some tokens most (its top `k`: the
    answer's kind, e.g. names) and lowers others most (its bottom `k`: what the prompt could
    otherwise continue with, e.g. " the", " a"). Each feature's share is `a_i * (mean of says_i over
    the top k - mean over the bottom k)`; the features with the largest shares, taken until they
    make `cover` of the positive total, are returned."""
    last = max(spans)
    rows = [r for r, i in enumerate(nodes.features) if spans[nodes.attrs[i]["pos"]] == last]
    k = min(k, says.shape[1] // 2)
    if not rows or k < 1:
        return set()
    acts = torch.tensor([float(nodes.attrs[nodes.features[r]]["activation"]) for r in rows])
    S = says[rows].float().cpu()
    order = torch.argsort((acts[:, None] * S).sum(0), descending=True, stable=True)
    share = acts * (S[:, order[:k]].mean(1) - S[:, order[-k:]].mean(1))
    total, acc, out = float(share.clamp(min=0).sum()), 0.0, set()
    for j in torch.argsort(share, descending=True, stable=True).tolist():
        if share[j] <= 0 or acc >= cover * total:
            break
        acc += float(share[j])
        out.add(rows[j])
    return out


def _carried_word(reads: Tensor, sits: int, words: list[str]) -> int:
    """The word a feature on word `sits` (not the last) stands for: the earlier word it reads most
    when that word feeds it more than its own word does (a feature on " United" that the office
    word " president" feeds most carries the office), else its own. Number words stay apart: a
    feature on the year is the year's, and a year does not pull features on later words."""
    r = reads.clone()
    r[0] = 0.0  # the sink
    w = int(torch.argmax(r[:sits])) if sits > 1 else sits
    if w < sits and r[w] > 0 and r[w] > r[sits] and not _is_number(words[w]) and not _is_number(words[sits]):
        return w
    return sits


def mediators(
    model,
    clt,
    graph: AttributionGraph,
    source: list[str],
    candidates: list[str],
    k: int,
    factor: float = -1.0,
    verbose: bool = True,
    batch_size: int = 16,
) -> list[str]:
    """At most `k` of `candidates` (feature node ids) through which `source` acts on the next token: chosen
    greedily, each step adding the candidate that, steered by `factor` with those chosen (attention
    frozen), brings the next-token distribution closest (KL) to `source` steered by `factor`; stops when
    no candidate brings it closer. `graph`: the prompt's graph (its activations). Deterministic (ties:
    the earlier candidate). Up to `k` x len(candidates) steerings, `batch_size` of them per forward
    pass (a tqdm bar per step when `verbose`)."""
    from tl_clt.progress import tqdm
    from tl_clt.steering import Steerer, scale

    if k < 0:
        raise ValueError(f"k is a count of features, got {k}.")
    steer = Steerer(model, clt, graph.tokens)  # one clean pass for every steering
    every = list(dict.fromkeys([*source, *candidates]))
    scaled = dict(zip(every, scale(every, factor, graph), strict=True))  # the graph's activations read once

    def log_probs(node_sets: list[list[str]]) -> Float[Tensor, "n d_vocab"]:
        steerings = [[scaled[n] for n in group] for group in node_sets]
        return steer.last(steerings, batch_size=batch_size).double().log_softmax(-1)

    target = log_probs([source])[0]
    p = target.exp()

    def distances(node_sets: list[list[str]]) -> list[float]:
        return (p * (target - log_probs(node_sets))).sum(-1).tolist()

    chosen: list[str] = []
    best = distances([chosen])[0]
    rest = list(candidates)
    with tqdm(total=k, desc="mediators", disable=not verbose or not rest, leave=False) as bar:
        while rest and len(chosen) < k:
            scores = distances([chosen + [c] for c in rest])
            i = min(range(len(rest)), key=lambda j: (scores[j], j))
            if scores[i] >= best:
                break
            best = scores[i]
            chosen.append(rest.pop(i))
            bar.update()
    return chosen


def _mediated(
    kept: list[tuple[tuple, list[int]]],
    lost_keys: list[tuple[str, tuple]],
    nodes: _Nodes,
    words: list[str],
    infl: Tensor,
    graph: AttributionGraph,
    model,
    clt,
    k: int,
    max_groups: int | None,
) -> tuple[list[tuple[tuple, list[int]]], list[tuple[str, tuple]], bool]:
    """The kept clusters with "say a name" (("say",)) narrowed to its `mediators` of the most influential
    word group (a ("word", w) key on a word that is no number). The rest of it joins the ("last",) group,
    which is added where `max_groups` leaves room (the cap was applied before: no other group is pushed
    out) and left out otherwise. Unchanged when either group is missing or no member is chosen."""
    rows = dict(kept)
    words_kept = [key for key in rows if key[0] == "word" and not _is_number(words[key[1]])]
    if ("say",) not in rows or not words_kept:
        return kept, lost_keys, False
    top = words_kept[0]  # kept is sorted by influence
    ids = [nodes.ids[i] for i in nodes.features]
    source = [ids[r] for r in rows[top]] + [n for n, key in lost_keys if key == top]
    candidates = [ids[r] for r in rows[("say",)]] + [n for n, key in lost_keys if key == ("say",)]
    chosen = set(mediators(model, clt, graph, source, candidates, k))
    say = [r for r in rows[("say",)] if ids[r] in chosen]
    if not say:
        return kept, lost_keys, False
    rest = [r for r in rows[("say",)] if ids[r] not in chosen]
    rows[("say",)] = say
    room = ("last",) in rows or max_groups is None or len(rows) < max_groups
    if rest and room:
        rows[("last",)] = sorted(rows.get(("last",), []) + rest)
    rest_key = ("last",) if room else None
    lost_keys = [(n, rest_key if key == ("say",) and n not in chosen else key) for n, key in lost_keys]
    lost_keys = [(n, key) for n, key in lost_keys if key is not None]
    kept = sorted(rows.items(), key=lambda kv: (-float(infl[kv[1]].sum()), kv[1][0]))
    return kept, lost_keys, True


def propose_supernodes(
    graph: AttributionGraph,
    *,
    model=None,
    clt=None,
    labels: Mapping[tuple[int, int], str] | Callable[[int, int], str | None] | None = None,
    name_share: float = 0.5,
    top_k: int = 8,
    push_k: int = 30,
    push_cover: float = 0.8,
    token_share: float = 0.5,
    complete: bool = True,
    unpruned: AttributionGraph | None = None,
    min_size: int = 1,
    min_influence: float = 0.0,
    max_groups: int | None = 8,
    mediate: int = 0,
) -> SupernodeProposals:
    """Named groups of the feature nodes of a pruned graph: `{name: [node id, ...]}`.

    `graph`: a pruned graph (`graph.prune(...)`); an unpruned one is pruned with the defaults.
    `model`, `clt`: give both to read what each feature says through the unembedding (all tokens);
    without them its direct edges into the graph's logit nodes are used. A feature on the last word
    whose top `top_k` output tokens are at least `name_share` names (" Barack") joins "say a name".
    `push_cover` (0 turns it off): the last word's features that make that share of what its
    features push together (the `push_k` tokens they raise most against the `push_k` they lower most)
    join "say a name" too; only with `model` and `clt` (every token read).
    `token_share` (0 turns it off): a feature on a number word ("2010") whose direct input edges come
    less than this share from token embeddings joins the era, not the year (the year's group keeps
    the features that read its digits). Both defaults were chosen on the toy world's validation
    prompts (docs/supernodes.md).
    `complete`: each group also lists, in `info[name].pruned_out`, the graph's feature nodes that node
    pruning left out where the group sits (on its word; on the last word for "say a name"; on a number
    word by `token_share` of their input edges before pruning: only when those are known, i.e. `graph`
    is unpruned or `unpruned` is the graph it was pruned from), and `proposals.whole(name)` returns
    members and those: what to steer or ablate. The groups themselves (`proposals[name]`, for
    `to_json`) stay those of the pruned graph.
    `labels`: text labels per (layer, feature) (a mapping or a callable), e.g. dashboard labels; by
    default `clt.dashboards` is read where it exists. Labels describe groups (`info[name].label`)
    and name the groups that have no word of their own; they do not change the grouping.
    Groups with fewer than `min_size` members or less than `min_influence` of the features' summed
    influence are left out (by default none: pruning has already kept the features by influence, and a
    word with one feature left, "prime" of "prime minister", is part of the circuit); at most `max_groups`
    are kept, most influential first. Deterministic.
    `mediate` (0: off; needs `model` and `clt`): "say a name" keeps at most this many of its features
    (of `whole("say a name")`): those through which the most influential word group acts, chosen
    greedily (`mediators`); the others join the last word's leftover group ("says" kind) where
    `max_groups` leaves room, and no group otherwise (no other group is pushed out). It runs the model
    once per candidate per step: up to `mediate` x the group's size steered forward passes.
    Returns a `SupernodeProposals` (a dict with `.info`). See docs/supernodes.md.
    """
    if (model is None) != (clt is None):
        raise ValueError("Give both model= and clt= (to read what features say), or neither.")
    if not 0 < name_share <= 1:
        raise ValueError(f"name_share is a share in (0, 1], got {name_share}.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    if push_k < 1:
        raise ValueError(f"push_k must be at least 1, got {push_k}.")
    if not 0 <= push_cover <= 1:
        raise ValueError(f"push_cover is a share in [0, 1], got {push_cover}.")
    if not 0 <= token_share <= 1:
        raise ValueError(f"token_share is a share in [0, 1], got {token_share}.")
    if mediate < 0 or (mediate and model is None):
        raise ValueError(f"mediate is a count of features (0: off) and needs model= and clt=, got {mediate}.")
    if graph.node_mask is None:
        pruned, unpruned = graph.prune(), graph
    else:
        pruned = graph
        if unpruned is not None and not _pruned_from(pruned, unpruned):
            raise ValueError(
                "unpruned= must be the unpruned graph that `graph` was pruned from (graph.prune(...)): "
                "same prompt, same feature nodes, no node mask. Pass that graph, or leave unpruned= out."
            )
    nodes = _graph_arrays(pruned.to_networkx())
    token_strs = list(graph.token_strs)
    spans = word_spans(token_strs)
    words = word_texts(token_strs, spans)
    if not nodes.features:
        return SupernodeProposals({}, {}, {"signals": []})
    reads = _reads(pruned, nodes, spans)
    says, says_tokens = _says(nodes, model, clt)
    decode = _decoder(model, pruned)
    top = torch.argsort(says, dim=1, descending=True, stable=True)[:, :top_k].tolist()
    says_strs = [[decode(t if says_tokens is None else says_tokens[t]) for t in row] for row in top]
    pushes = _pushers(nodes, spans, says, push_k, push_cover) if says_tokens is None else set()
    keys = _keys(nodes, spans, words, reads, says_strs, name_share, pushes, token_share)
    infl = torch.tensor([float(nodes.attrs[i].get("influence") or 0.0) for i in nodes.features])
    lost_keys = _pruned_out_keys(pruned, unpruned, spans, words, token_share) if complete else []
    text = _feature_labels(
        clt, [(nodes.attrs[i]["layer"], nodes.attrs[i]["feature"]) for i in nodes.features], labels
    )
    by_key: dict[tuple, list[int]] = {}
    for row, key in enumerate(keys):
        by_key.setdefault(key, []).append(row)
    clusters = sorted(by_key.items(), key=lambda kv: (-float(infl[kv[1]].sum()), kv[1][0]))
    total = float(infl.sum()) or 1.0
    kept = [
        (k, c) for k, c in clusters if len(c) >= min_size and float(infl[c].sum()) >= min_influence * total
    ]
    kept = kept[:max_groups] if max_groups is not None else kept
    carried = False
    if mediate:
        kept, lost_keys, carried = _mediated(
            kept, lost_keys, nodes, words, infl, pruned, model, clt, mediate, max_groups
        )
    ctx = _NamingContext(nodes, spans, words, reads, says, says_tokens, infl, decode, text)
    infos = _name_groups([ctx.describe(k, c) for k, c in kept])
    if complete:
        name_of = {k: info.name for (k, _), info in zip(kept, infos, strict=True)}
        lost: dict[str, list[str]] = {}
        for node_id, key in lost_keys:
            if key in name_of:
                lost.setdefault(name_of[key], []).append(node_id)
        infos = [replace(i, pruned_out=lost.get(i.name, [])) for i in infos]
    last = max(spans)
    fed = any(k[0] == "era" and spans[nodes.attrs[i]["pos"]] != last for k, i in zip(keys, nodes.features))
    signals = ["sits", "reads", "says"] + (["pushes"] if pushes else []) + (["feeds"] if fed else [])
    signals += ["carries"] if carried else []
    signals += ["completes"] if any(i.pruned_out for i in infos) else []
    signals += ["labels"] if text is not None else []
    return SupernodeProposals(
        {i.name: i.members for i in infos}, {i.name: i for i in infos}, {"signals": signals}
    )


def _decoder(model, graph: AttributionGraph) -> Callable[[int], str]:
    """Token id -> text: the model's tokenizer, else the graph's logit token strings, else the id."""
    tokenizer = getattr(model, "tokenizer", None) if model is not None else None
    if tokenizer is not None:
        return lambda t: tokenizer.decode([t])
    known = dict(zip(graph.logit_tokens.tolist(), graph.logit_token_strs))
    return lambda t: known.get(t, str(t))


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
    decode: Callable[[int], str]
    labels: list[str | None] | None

    def describe(self, key: tuple, rows: list[int]) -> SupernodeInfo:
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
        says = [self.decode(t if self.says_tokens is None else self.says_tokens[t]) for t in top]
        label = None
        if self.labels is not None:
            counts = Counter(self.labels[r] for r in rows if self.labels[r])
            label = min(counts, key=lambda t: (-counts[t], t)) if counts else None
        kind, name = _kind(key, self.words, says, label)
        return SupernodeInfo(
            name=name,
            kind=kind,
            members=[self.nodes.ids[self.nodes.features[r]] for r in rows],
            sits=[self.words[s] for s in sits],
            reads=[(self.words[i], round(float(read[i]), 3)) for i in order[:5]],
            says=says,
            layers=sorted({a["layer"] for a in attrs}),
            influence=float(self.infl[rows].sum()),
            label=label,
        )


def _number_name(text: str) -> str:
    n = text.strip()
    return f"year ~{n}" if len(n) == 4 and n[0] in "12" else f"number ~{n}"


def _kind(key: tuple, words: list[str], says: list[str], label: str | None) -> tuple[str, str]:
    """(kind, name) of a group from its key (see `_keys`)."""
    if key[0] == "say":
        return "say a name", "say a name"
    if key[0] == "era":
        return "era", "era ~" + words[key[1]].strip()
    if key[0] == "word" and _is_number(words[key[1]]):
        return "year", _number_name(words[key[1]])
    if key[0] == "word" and words[key[1]].strip():
        return "word", words[key[1]].strip()
    if label:
        return "says", label
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
