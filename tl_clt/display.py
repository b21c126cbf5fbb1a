"""How tl_clt's objects show themselves: short reprs, compact HTML for notebooks, readable tokens.

- `visible_token(s)`: a token string a reader can see (a lone space is `␣`, a newline `⏎`, ...).
- `graph_summary` / `graph_repr` / `graph_html`: what `AttributionGraph` prints and renders.
- `clt_repr` / `clt_html`: what `CrossLayerTranscoder` prints and renders.
- `proposals_html`: what `SupernodeProposals` (from `propose_supernodes`) renders: one row per group.
- `FeatureActivations`: the sparse tensor `feature_activations` returns, printed as a short summary
  (it is a `torch.Tensor`; every torch operation on it returns a plain tensor).
"""

from __future__ import annotations

import copy
import html
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tl_clt.clt import CrossLayerTranscoder
    from tl_clt.graph import AttributionGraph

WHITESPACE_SIGNS = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "↵", "\u00a0": "⍽"}
KINDS = ("feature", "error", "token", "logit")


def visible_token(text: str, max_len: int | None = None) -> str:
    """`text` with whitespace made visible where it would otherwise vanish.

    A token that is only whitespace shows each character as a sign (`" "` -> `"␣"`, `"\\n"` -> `"⏎"`);
    newlines and tabs inside other tokens are shown the same way; a leading space stays a space.
    `max_len` cuts long tokens with `…`.
    """
    if text == "" or text.isspace():
        text = "".join(WHITESPACE_SIGNS.get(c, "·") for c in text) or "∅"
    else:
        text = "".join(WHITESPACE_SIGNS[c] if c in "\n\t\r" else c for c in text)
    if max_len is not None and len(text) > max_len:
        text = text[: max_len - 1] + "…"
    return text


def _short(text: str, max_len: int) -> str:
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


# ------------------------------------------------------------------------ graphs
def graph_summary(graph: AttributionGraph, max_logits: int = 3) -> dict:
    """The facts `repr(graph)` and `graph._repr_html_()` show, as a dict."""
    present = graph.present_mask().tolist()
    shown = [True] * graph.n_nodes  # the unpruned graph's nodes: errors at the sink are left out
    for layer in range(graph.n_layers):
        shown[graph.error_index(layer, 0)] = False
    counts = {k: 0 for k in KINDS}
    totals = {k: 0 for k in KINDS}
    for i in range(graph.n_nodes):
        kind = graph.node_kind(i)
        totals[kind] += shown[i]
        counts[kind] += present[i]
    present = torch.tensor(present)
    A = graph.adjacency * present[:, None] * present[None, :]
    start = 1 if graph.prompt_offset else 0
    return dict(
        prompt="".join(graph.token_strs[start:]),
        n_pos=graph.n_pos,
        sink=graph.token_strs[0] if graph.n_pos else None,
        prompt_offset=graph.prompt_offset,
        nodes=counts,
        totals=totals,
        n_edges=int(torch.count_nonzero(A)),
        pruned=graph.node_mask is not None,
        logits=[
            (graph.logit_token_strs[i], float(graph.logit_probabilities[i]))
            for i in range(min(max_logits, graph.n_logits))
        ],
        n_logits=graph.n_logits,
        model_name=graph.model_name,
        clt_name=graph.clt_name,
    )


def _kinds_text(counts: dict, totals: dict | None = None) -> str:
    parts = []
    for kind in KINDS:
        n = counts[kind]
        label = kind if (n if totals is None else totals[kind]) == 1 else kind + "s"
        parts.append(f"{n} {label}" if totals is None else f"{n}/{totals[kind]} {label}")
    return ", ".join(parts)


def graph_repr(graph: AttributionGraph) -> str:
    s = graph_summary(graph)
    logits = ", ".join(f"{tok!r} {p:.3f}" for tok, p in s["logits"])
    more = f" (+{s['n_logits'] - len(s['logits'])} more)" if s["n_logits"] > len(s["logits"]) else ""
    state = "pruned, kept " + _kinds_text(s["nodes"], s["totals"]) if s["pruned"] else "not pruned"
    lines = [
        f"AttributionGraph({_short(s['prompt'], 70)!r}",
        f"  {s['n_pos']} positions (0 = {s['sink']!r}, the attention sink)",
        f"  nodes: {_kinds_text(s['totals'])}; {s['n_edges']} edges",
        f"  {state}",
        f"  top logits: {logits}{more}",
    ]
    if s["model_name"] or s["clt_name"]:
        lines.append(f"  model: {s['model_name']}, clt: {s['clt_name']}")
    return "\n".join(lines) + ")"


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td style='text-align:left'>{v}</td></tr>"
        for k, v in rows
    )
    return f"<table style='font-size:90%'>{cells}</table>"


def graph_html(graph: AttributionGraph) -> str:
    s = graph_summary(graph)
    esc = html.escape
    tokens = " ".join(
        f"<code title='position {p}'>{esc(visible_token(t, 20))}</code>"
        for p, t in enumerate(graph.token_strs)
    )
    logits = ", ".join(f"<code>{esc(repr(t))}</code> {p:.3f}" for t, p in s["logits"])
    if s["n_logits"] > len(s["logits"]):
        logits += f" (+{s['n_logits'] - len(s['logits'])} more)"
    rows = [
        ("prompt", esc(_short(s["prompt"], 200))),
        ("positions", f"{s['n_pos']}: {tokens}"),
        ("nodes", esc(_kinds_text(s["totals"])) + f"; {s['n_edges']} edges"),
        (
            "pruned",
            "yes, kept " + esc(_kinds_text(s["nodes"], s["totals"])) if s["pruned"] else "no",
        ),
        ("top logits", logits),
    ]
    if s["model_name"] or s["clt_name"]:
        rows.append(("model / CLT", f"{esc(str(s['model_name']))} / {esc(str(s['clt_name']))}"))
    return f"<div><b>AttributionGraph</b>{_table(rows)}</div>"


# ------------------------------------------------------------------------ CLTs
def proposals_html(proposals) -> str:
    """One table row per proposed group, most influential first: name, kind, members, features pruning
    left out where it sits, layers, the words it sits on, what it reads and says, its label."""
    esc = html.escape
    style = "style='text-align:left;padding-right:1em'"
    cell = f"<td {style}>{{}}</td>"
    heads = ("group", "kind", "features", "pruned out", "layers", "on", "reads", "says", "label")
    rows = ["<tr>" + "".join(f"<th {style}>{h}</th>" for h in heads) + "</tr>"]
    for name, i in proposals.info.items():
        layers = f"{i.layers[0]}-{i.layers[-1]}" if len(i.layers) > 1 else "".join(map(str, i.layers))
        cells = [
            f"<b>{esc(name)}</b>",
            esc(i.kind),
            str(len(i.members)),
            str(len(i.pruned_out)),
            layers,
            " ".join(f"<code>{esc(visible_token(w, 20))}</code>" for w in i.sits[:4]),
            ", ".join(f"<code>{esc(visible_token(w, 20))}</code> {share:.2f}" for w, share in i.reads[:3]),
            " ".join(f"<code>{esc(visible_token(t, 16))}</code>" for t in i.says[:4]),
            esc(_short(i.label or "", 60)),
        ]
        rows.append("<tr>" + "".join(cell.format(c) for c in cells) + "</tr>")
    signals = ", ".join(proposals.signals.get("signals", []))
    return (
        f"<div><b>SupernodeProposals</b>: {len(proposals.info)} groups; signals {esc(signals)}"
        f"<table style='font-size:90%'>{''.join(rows)}</table></div>"
    )


def clt_facts(clt: CrossLayerTranscoder) -> dict:
    return dict(
        n_layers=clt.n_layers,
        n_features=clt.n_features,
        d_model=clt.d_model,
        dtype=str(clt.dtype).removeprefix("torch."),
        device=str(clt.device),
        activation="JumpReLU" if clt.threshold is not None else "ReLU",
        decoder="lazy (rows read from disk on demand)" if clt.lazy_decoder else "in memory",
        hooks=f"reads blocks.{{l}}.{clt.feature_input_hook}, writes blocks.{{l}}.{clt.feature_output_hook}",
        model_name=clt.model_name,
        path=str(clt.path) if clt.path is not None else None,
    )


def clt_repr(clt: CrossLayerTranscoder) -> str:
    f = clt_facts(clt)
    lines = [
        f"CrossLayerTranscoder({f['n_layers']} layers x {f['n_features']} features, d_model {f['d_model']}, "
        f"{f['activation']}, {f['dtype']} on {f['device']}",
        f"  decoder: {f['decoder']}",
        f"  hooks: {f['hooks']}",
    ]
    if f["model_name"]:
        lines.append(f"  trained for: {f['model_name']}")
    if f["path"]:
        lines.append(f"  path: {f['path']}")
    return "\n".join(lines) + ")"


def clt_html(clt: CrossLayerTranscoder) -> str:
    f = clt_facts(clt)
    rows = [
        ("layers x features", f"{f['n_layers']} x {f['n_features']} ({f['activation']})"),
        ("d_model", str(f["d_model"])),
        ("dtype, device", f"{f['dtype']}, {f['device']}"),
        ("decoder", f["decoder"]),
        ("hooks", html.escape(f["hooks"])),
    ]
    rows += [
        (k, html.escape(f[key])) for k, key in (("trained for", "model_name"), ("path", "path")) if f[key]
    ]
    return f"<div><b>CrossLayerTranscoder</b>{_table(rows)}</div>"


# ------------------------------------------------------------------------ feature activations
class FeatureActivations(Tensor):
    """Active CLT features as a sparse COO tensor `[n_layers, pos, n_features]` that prints briefly.

    It is a `torch.Tensor` (use `.to_dense()`, `.indices()`, `.values()` as usual); the result of any
    torch operation on it is a plain tensor.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def plain(self) -> Tensor:
        """The same data as a plain torch sparse tensor."""
        return Tensor._make_subclass(Tensor, self)

    def __reduce_ex__(self, protocol):  # saved as a plain tensor: torch.load(weights_only=True) reads it
        return self.plain().__reduce_ex__(protocol)

    def __deepcopy__(self, memo):
        return as_feature_activations(copy.deepcopy(self.plain(), memo))

    def _summary(self, k: int = 3) -> tuple[str, list[tuple[tuple[int, int, int], float]]]:
        with torch._C.DisableTorchFunctionSubclass():
            t = self.coalesce() if self.is_sparse else self.to_sparse().coalesce()
            idx, vals = t.indices(), t.values().detach().float()
            shape = tuple(t.shape)
        if len(shape) != 3:
            return f"{len(vals)} nonzero values, shape {list(shape)}", []
        n_layers, n_pos = shape[0], shape[1]
        per_layer = torch.bincount(idx[0], minlength=n_layers).tolist() if len(vals) else [0] * n_layers
        head = (
            f"{len(vals)} active of {n_layers} layers x {n_pos} positions x {shape[2]} features "
            f"(per layer {per_layer}; mean {len(vals) / max(1, n_layers * n_pos):.1f} per layer and position)"
        )
        top = vals.topk(min(k, len(vals))) if len(vals) else None
        best = [(tuple(idx[:, i].tolist()), float(v)) for v, i in zip(top.values, top.indices)] if top else []
        return head, best

    def __repr__(self, *, tensor_contents=None) -> str:
        head, best = self._summary()
        tops = ", ".join(f"F:{lay}:{pos}:{feat} = {v:.3g}" for (lay, pos, feat), v in best)
        return f"FeatureActivations({head}" + (f"; largest: {tops})" if tops else ")")

    def _repr_html_(self) -> str:
        head, best = self._summary(k=5)
        rows = "".join(
            f"<tr><td>{lay}</td><td>{pos}</td><td>{feat}</td><td>{v:.4g}</td></tr>"
            for (lay, pos, feat), v in best
        )
        return (
            f"<div><b>FeatureActivations</b>: {html.escape(head)}<table style='font-size:90%'>"
            f"<tr><th>layer</th><th>pos</th><th>feature</th><th>activation</th></tr>{rows}</table></div>"
        )


def as_feature_activations(acts: Tensor) -> FeatureActivations:
    return Tensor._make_subclass(FeatureActivations, acts)  # as_subclass cannot wrap sparse tensors
