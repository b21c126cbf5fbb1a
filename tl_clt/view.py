"""`graph.show()`: an interactive view of a pruned graph in the notebook (or a standalone HTML file).

Built on plotly: a well-kept (MIT, monthly releases), widely used library whose JavaScript is
shipped inside the Python wheel (`plotly/package_data/plotly.min.js`), so the view works offline —
the script is inlined in the page, no CDN is asked. Plotly gives pan, zoom, hover labels and
sliders; tl_clt adds ~80 lines of JavaScript (`VIEW_JS`) for the rest: click a node to highlight its
inputs (green) and outputs (orange) and see its card below the plot, and a slider that keeps the nodes
carrying a given share of the influence.

Positions are those of `tl_clt.plot_graph` (token position across, layer up). A node's hover card
shows its kind, layer, position and token, activation, influence, its top output tokens (when
`model` and `clt` are given) and, when the CLT has dashboards (`clt.dashboards[layer, feature]`, or
without `clt` a local `features/` next to the CLT the graph was made with), the dashboard's label and
top examples.
"""

from __future__ import annotations

import contextlib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from tl_clt import files
from tl_clt.display import visible_token
from tl_clt.influence import EDGE_THRESHOLD, NODE_THRESHOLD
from tl_clt.plot import (
    KIND_STYLE,
    NEGATIVE,
    POSITIVE,
    as_networkx,
    graph_extent,
    layer_ticks,
    node_positions,
)

if TYPE_CHECKING:
    from tl_clt.graph import AttributionGraph

SYMBOLS = {
    "token": "square",
    "feature": "circle",
    "error": "diamond",
    "logit": "square",
    "supernode": "hexagon",
}
EDGE_BINS = ((0.0, 0.6), (0.2, 1.6), (0.5, 3.2))  # (share of the largest |weight| from, line width)
SLIDER_STEPS = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
HIGHLIGHT_IN, HIGHLIGHT_OUT = "#2ca02c", "#ff7f0e"


@dataclass
class GraphView:
    """An interactive graph view: displays itself in Jupyter (`_repr_html_`, an iframe holding the whole
    page, plotly.js included) and `save(path)` writes a standalone HTML file."""

    page: str  # the complete HTML document
    n_nodes: int
    n_edges: int
    height: int
    data: dict = field(default_factory=dict, repr=False)  # what the page draws (`view_data`)

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.page, quote=True)}" '
            f'style="width:100%;height:{self.height + 220}px;border:none" '
            'sandbox="allow-scripts allow-same-origin"></iframe>'
        )

    def save(self, path: str | Path) -> Path:
        """Write the standalone page (works offline: plotly.js is inlined)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"Cannot save to {path}: the folder {path.parent} does not exist.")
        files.write_text(path, self.page, what="page")
        return path

    def __repr__(self) -> str:
        return (
            f"GraphView({self.n_nodes} nodes, {self.n_edges} edges; display it in a notebook or .save(path))"
        )


# ------------------------------------------------------------------------ cards
def _dashboards(graph, clt):
    """The CLT's dashboards (`clt.dashboards`), else those in a local `features/` next to the CLT an
    AttributionGraph was made with, else None."""
    if clt is not None:
        return getattr(clt, "dashboards", None)
    from tl_clt.dashboards.reader import dashboards_for_graph

    try:
        return dashboards_for_graph(graph, local_only=True)
    except (OSError, ValueError):
        return None


def _dashboard_card(dashboards, layer: int, feature: int):
    """The dashboard card of a feature when there are dashboards, else None (never raises)."""
    if dashboards is None:
        return None
    try:
        return dashboards[layer, feature]
    except Exception:
        return None


def _top_tokens(model, clt, layer: int, feature: int, k: int) -> list[str]:
    from tl_clt.supernodes import feature_output_tokens

    return [t.token for t in feature_output_tokens(model, clt, layer, feature, k=k)]


def _card(node: str, d: dict, tokens: list[str], cum: float | None, extra: dict) -> tuple[str, str]:
    """(hover text in plotly's HTML subset, full card HTML for the panel) of one node."""
    esc = html.escape
    kind = d.get("kind", "feature")
    pos = d.get("pos")
    where = ""
    if isinstance(pos, int) and 0 <= pos < len(tokens):
        where = f"pos {pos} <i>{esc(repr(tokens[pos]))}</i>"
    lines = [f"<b>{esc(node)}</b>  {kind}"]
    if kind == "feature":
        lines.append(f"layer {d.get('layer')}, {where}, feature {d.get('feature')}")
    elif kind == "error":
        lines.append(f"MLP error, layer {d.get('layer')}, {where}")
    elif kind == "token":
        lines.append(f"token {esc(repr(d.get('token', '')))} at {where}")
    elif kind == "logit":
        lines.append(f"logit {esc(repr(d.get('token', '')))}, p = {d.get('probability', float('nan')):.3f}")
    elif kind == "supernode":
        lines.append(f"{d.get('n_members', len(d.get('members') or []))} members, layers {d.get('layers')}")
    if d.get("activation") is not None:
        lines.append(f"activation {d['activation']:.4g}")
    if d.get("influence") is not None:
        share = f" (cumulative share {cum:.2f})" if cum is not None else ""
        lines.append(f"influence {d['influence']:.4g}{share}")
    if extra.get("top_tokens"):
        lines.append("top tokens: " + " ".join(esc(repr(t)) for t in extra["top_tokens"]))
    card = extra.get("card")
    if card is not None:
        label = getattr(card, "label", "")
        if label:
            lines.append(f"dashboard: <i>{esc(str(label))}</i>")
        for ex in list(getattr(card, "top_examples", []) or [])[:3]:
            text = ex.text(60) if hasattr(ex, "text") else str(ex)
            act = getattr(ex, "act", None)
            lines.append(("" if act is None else f"{act:.3g}  ") + esc(text))
    hover = "<br>".join(lines)
    full = "<br>".join(lines)
    if card is not None and hasattr(card, "_repr_html_"):
        with contextlib.suppress(Exception):  # a card that cannot render leaves the summary
            full += "<hr>" + card._repr_html_()
    return hover, full


# ------------------------------------------------------------------------ data for the page
def _cumulative(G: nx.DiGraph) -> dict[str, float]:
    """Cumulative share of influence of each feature/error/supernode (0 = the most influential)."""
    kinds = ("token", "logit")
    inner = [(n, d.get("influence")) for n, d in G.nodes(data=True) if d.get("kind") not in kinds]
    if not inner or any(v is None for _, v in inner):
        return {}
    inner = [(n, abs(v)) for n, v in inner]
    total = sum(v for _, v in inner) or 1.0
    out, acc = {}, 0.0
    for n, v in sorted(inner, key=lambda item: -item[1]):
        acc += v
        out[n] = acc / total
    return out


def view_data(
    graph: AttributionGraph | nx.DiGraph,
    *,
    model=None,
    clt=None,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    max_in_edges: int | None = 3,
    top_tokens: int = 5,
) -> dict:
    """Everything the page draws, as plain JSON-able data (nodes with positions and cards, edges).

    `model` and `clt`: each feature's top `top_tokens` output tokens on its card (and the CLT's
    dashboards); the thresholds prune `graph` unless it already is; `max_in_edges`: each node's strongest
    inputs drawn (None: all)."""
    G = as_networkx(graph, node_threshold, edge_threshold)
    if G.number_of_nodes() == 0:
        raise ValueError("The graph has no nodes to show.")
    n_layers, n_pos = graph_extent(G)
    xy, centers, _ = node_positions(G, n_layers, n_pos)
    tokens = list(G.graph.get("prompt_tokens") or [])
    cum = _cumulative(G)
    dashboards = _dashboards(graph, clt)
    nodes, index = [], {}
    for i, (node, d) in enumerate(G.nodes(data=True)):
        kind = d.get("kind") if d.get("kind") in KIND_STYLE else "feature"
        extra = {}
        if kind == "feature" and model is not None and clt is not None and top_tokens:
            extra["top_tokens"] = _top_tokens(model, clt, d["layer"], d["feature"], top_tokens)
        if kind == "feature" and dashboards is not None:
            extra["card"] = _dashboard_card(dashboards, d["layer"], d["feature"])
        hover, full = _card(node, d, tokens, cum.get(node), extra)
        index[node] = i
        nodes.append(
            dict(
                id=node,
                kind=kind,
                x=round(xy[node][0], 4),
                y=round(xy[node][1], 4),
                cum=cum.get(node, 0.0),
                always=kind in ("token", "logit") or node not in cum,
                size=_size(d, G),
                hover=hover,
                card=full,
            )
        )
    edges = [(index[u], index[v], float(w)) for u, v, w in G.edges(data="weight", default=0.0) if w]
    shown = _strongest_inputs(edges, max_in_edges)
    top = max((abs(w) for *_, w in edges), default=1.0) or 1.0
    return dict(
        nodes=nodes,
        edges=[
            dict(s=s, t=t, w=w, share=abs(w) / top, shown=k in shown) for k, (s, t, w) in enumerate(edges)
        ],
        tokens=[visible_token(t, 14) for t in tokens] or [str(p) for p in range(n_pos)],
        centers=centers,
        n_layers=n_layers,
        prompt="".join(tokens),
        steps=list(SLIDER_STEPS) if cum else [1.0],
    )


def _strongest_inputs(edges: list[tuple[int, int, float]], k: int | None) -> set[int]:
    if k is None:
        return set(range(len(edges)))
    into: dict[int, list[int]] = {}
    for e, (_, t, _) in enumerate(edges):
        into.setdefault(t, []).append(e)
    return {e for es in into.values() for e in sorted(es, key=lambda e: -abs(edges[e][2]))[:k]}


def _size(d: dict, G: nx.DiGraph) -> float:
    kind = d.get("kind")
    if kind in ("token", "logit"):
        return 11.0
    infl = [
        abs(x.get("influence") or 0.0)
        for _, x in G.nodes(data=True)
        if x.get("kind") not in ("token", "logit")
    ]
    top = max(infl, default=0.0)
    if d.get("influence") is None or top == 0:
        return 9.0
    return (12.0 if kind == "supernode" else 5.0) + 13.0 * (abs(d["influence"]) / top) ** 0.5


# ------------------------------------------------------------------------ the page
def _figure(data: dict, height: int):
    import plotly.graph_objects as go

    fig = go.Figure()
    for sign, color in ((1, POSITIVE), (-1, NEGATIVE)):  # 6 edge traces: sign x width bin
        for lo, width in EDGE_BINS:
            fig.add_trace(
                go.Scatter(
                    x=[], y=[], mode="lines", line=dict(color=color, width=width), opacity=0.45,
                    hoverinfo="skip", showlegend=False, name=f"edges {'+' if sign > 0 else '-'} {lo}",
                )
            )  # fmt: skip
    for name, color in (("inputs", HIGHLIGHT_IN), ("outputs", HIGHLIGHT_OUT)):
        fig.add_trace(
            go.Scatter(
                x=[], y=[], mode="lines", line=dict(color=color, width=2.5), hoverinfo="skip", name=name
            )
        )
    for kind, (_, color, label) in KIND_STYLE.items():
        members = [i for i, n in enumerate(data["nodes"]) if n["kind"] == kind]
        if not members:
            continue
        fig.add_trace(
            go.Scatter(
                x=[data["nodes"][i]["x"] for i in members],
                y=[data["nodes"][i]["y"] for i in members],
                mode="markers",
                name=label,
                customdata=members,
                hovertext=[data["nodes"][i]["hover"] for i in members],
                hoverinfo="text",
                marker=dict(
                    symbol=SYMBOLS[kind],
                    color=color,
                    size=[data["nodes"][i]["size"] for i in members],
                    line=dict(color="#333333", width=0.8),
                ),
            )
        )
    rows, labels = layer_ticks(data["n_layers"])
    fig.update_layout(
        height=height,
        margin=dict(l=90, r=20, t=40, b=110),
        plot_bgcolor="white",
        dragmode="pan",
        hovermode="closest",
        hoverlabel=dict(bgcolor="white", font=dict(size=12), align="left"),
        title=dict(text=html.escape(visible_token(data["prompt"], 120)), font=dict(size=13)),
        xaxis=dict(
            tickmode="array",
            tickvals=data["centers"],
            ticktext=data["tokens"],
            tickangle=-45,
            showgrid=False,
            zeroline=False,
        ),  # fmt: skip
        yaxis=dict(
            tickmode="array",
            tickvals=rows,
            ticktext=labels,
            showgrid=True,
            gridcolor="#eeeeee",
            zeroline=False,
        ),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
        sliders=[
            dict(
                active=len(data["steps"]) - 1,
                currentvalue=dict(prefix="nodes carrying this share of influence: "),
                pad=dict(t=60),
                steps=[dict(method="skip", label=f"{s:.0%}", value=str(s)) for s in data["steps"]],
            )
        ],
    )
    return fig


VIEW_JS = r"""
(function () {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
  function start() {
  var gd = document.getElementById('{plot_id}');
  var D = JSON.parse(document.getElementById('tl-clt-view-data').textContent);
  var BINS = %(bins)s, NODE0 = 8, HI_IN = 6, HI_OUT = 7;
  var state = {threshold: D.steps[D.steps.length - 1], selected: null};
  var nodeTraces = [];
  gd.data.forEach(function (tr, k) { if (k >= NODE0) nodeTraces.push(k); });
  function visible(i) { var n = D.nodes[i]; return n.always || n.cum <= state.threshold + 1e-9; }
  function seg(list, e) {
    var a = D.nodes[e.s], b = D.nodes[e.t];
    list.x.push(a.x, b.x, null); list.y.push(a.y, b.y, null);
  }
  function redraw() {
    var traces = [], k;
    for (k = 0; k < 8; k++) traces.push({x: [], y: []});
    var nVisible = 0, nEdges = 0, neighbours = {};
    D.edges.forEach(function (e) {
      if (!visible(e.s) || !visible(e.t)) return;
      var sel = state.selected;
      if (sel !== null && (e.t === sel || e.s === sel)) {
        seg(traces[e.t === sel ? HI_IN : HI_OUT], e);
        neighbours[e.s] = true; neighbours[e.t] = true; nEdges++;
        return;
      }
      if (!e.shown) return;
      var bin = 0;
      for (k = 0; k < BINS.length; k++) if (e.share >= BINS[k]) bin = k;
      seg(traces[(e.w > 0 ? 0 : BINS.length) + bin], e);
      nEdges++;
    });
    var xs = [], ys = [], ops = [];
    nodeTraces.forEach(function (k) {
      var tr = gd.data[k], x = [], y = [], op = [];
      tr.customdata.forEach(function (i) {
        var n = D.nodes[i], on = visible(i);
        if (on) nVisible++;
        x.push(on ? n.x : null); y.push(on ? n.y : null);
        op.push(state.selected === null || neighbours[i] || i === state.selected ? 1.0 : 0.25);
      });
      xs.push(x); ys.push(y); ops.push(op);
    });
    Plotly.restyle(gd, {x: traces.map(function (t) { return t.x; }),
                        y: traces.map(function (t) { return t.y; })}, [0, 1, 2, 3, 4, 5, 6, 7]);
    Plotly.restyle(gd, {x: xs, y: ys, 'marker.opacity': ops}, nodeTraces);
    gd.dataset.visibleNodes = nVisible;
    gd.dataset.visibleEdges = nEdges;
    gd.dataset.selected = state.selected === null ? '' : D.nodes[state.selected].id;
    var panel = document.getElementById('tl-clt-card');
    panel.innerHTML = state.selected === null ? D.help : D.nodes[state.selected].card;
  }
  gd.on('plotly_click', function (ev) {
    var p = ev.points && ev.points[0];
    if (!p || p.curveNumber < NODE0) return;
    var i = p.customdata;
    state.selected = state.selected === i ? null : i;
    redraw();
  });
  gd.on('plotly_sliderchange', function (ev) {
    state.threshold = parseFloat(ev.step.value);
    if (state.selected !== null && !visible(state.selected)) state.selected = null;
    redraw();
  });
  window.tlClt = {data: D, state: state, redraw: redraw, gd: gd};
  redraw();
  gd.dataset.ready = '1';
  }
})();
"""

HELP = (
    "Drag to pan, scroll to zoom, double-click to reset. Hover a node for its card; click it to "
    "highlight its inputs (green) and outputs (orange) and show its card here; click it again to clear. "
    "The slider keeps the nodes that carry that share of the influence on the logits."
)


def show(graph: AttributionGraph | nx.DiGraph, *, height: int = 620, **options) -> GraphView:
    """Interactive view of `graph` (pruned with the thresholds unless it already is, or a grouped
    nx.DiGraph), `height` pixels high. `options` are `view_data`'s: `model` and `clt` add each feature's
    top output tokens to its card; feature dashboards (`clt.dashboards`, or without `clt` a local
    `features/` next to the graph's CLT) add their label and top examples; `node_threshold`,
    `edge_threshold`; edges drawn: each node's `max_in_edges` strongest inputs (None: all; a click shows
    all of a node's edges); `top_tokens`. Returns a GraphView: it displays itself in Jupyter,
    `.save("graph.html")` writes a standalone page. Needs plotly (`pip install "tl-clt[viz]"`)."""
    try:
        import plotly
    except ImportError as err:
        raise ImportError('graph.show() needs plotly, an optional extra: pip install "tl-clt[viz]".') from err
    data = view_data(graph, **options)
    data["help"] = html.escape(HELP)
    fig = _figure(data, height)
    script = VIEW_JS % {"bins": json.dumps([lo for lo, _ in EDGE_BINS])}
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        post_script=script,
        config={"scrollZoom": True, "displaylogo": False, "responsive": True},
        div_id="tl-clt-graph",
    )
    blob = json.dumps(data).replace("</", "<\\/")
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>tl_clt graph</title>'
        f"<script>{plotly.offline.get_plotlyjs()}</script></head>"
        '<body style="margin:0;font-family:sans-serif">'
        f'<script type="application/json" id="tl-clt-view-data">{blob}</script>'
        f"{div}"
        '<div id="tl-clt-card" style="font-size:13px;padding:6px 12px;border-top:1px solid #ddd;'
        'max-height:200px;overflow:auto"></div></body></html>'
    )
    n_edges = sum(e["shown"] for e in data["edges"])
    return GraphView(page=page, n_nodes=len(data["nodes"]), n_edges=n_edges, height=height, data=data)
