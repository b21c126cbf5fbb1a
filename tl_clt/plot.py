"""A matplotlib picture of a (pruned or grouped) attribution graph.

x = token position (the prompt's tokens as labels), y = layer: token embeddings at the bottom, then
layers 0..L-1, logits on top. Marker area follows influence, colour and shape follow the node kind;
edge width follows |weight| and colour its sign. Nodes sharing a (layer, position) cell are spread
over a small grid inside the cell. Supernodes (kind "supernode", from grouping) sit at the mean
layer and position of their members. matplotlib is optional: `pip install "tl-clt[viz]"`.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

from tl_clt import files
from tl_clt.display import visible_token
from tl_clt.influence import EDGE_THRESHOLD, NODE_THRESHOLD
from tl_clt.nodes import parse_node

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tl_clt.graph import AttributionGraph

KIND_STYLE = {  # kind -> (marker, face colour, legend label)
    "token": ("s", "#8fbf7f", "token embedding"),
    "feature": ("o", "#5b8fd9", "feature"),
    "error": ("D", "#b5b5b5", "MLP error"),
    "logit": ("s", "#e0a040", "logit"),
    "supernode": ("H", "#a678d0", "supernode"),
}
POSITIVE, NEGATIVE = "#2166ac", "#d6604d"
CELL_COLUMNS = 6  # nodes per row in a (layer, position) cell; crowded cells widen up to ...
MAX_CELL_ROWS, MAX_CELL_COLUMNS = 3, 16  # ... MAX_CELL_COLUMNS before adding more rows
NODE_GID = "tl_clt-nodes"


_FIGURE_CLASS = None


def _figure_class() -> type:
    """A matplotlib Figure that shows itself in Jupyter: IPython calls `_repr_png_` on the value of a
    cell, with or without `%matplotlib inline`. It is not registered with pyplot, so the inline backend
    does not show it a second time at the end of the cell."""
    global _FIGURE_CLASS
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'tl_clt\'s pictures need matplotlib, an optional extra: pip install "tl-clt[viz]" '
            "(or pip install matplotlib)."
        ) from err
    if _FIGURE_CLASS is None:

        class NotebookFigure(Figure):
            """A matplotlib Figure with `_repr_png_`, for notebooks."""

            def _repr_png_(self) -> bytes:
                import io

                f = io.BytesIO()
                self.savefig(f, format="png", dpi=110, bbox_inches="tight")
                return f.getvalue()

        _FIGURE_CLASS = NotebookFigure
    return _FIGURE_CLASS


def notebook_figure(figsize: tuple[float, float], layout: str | None = "constrained") -> Figure:
    """A Figure not registered with pyplot that displays itself once in notebooks."""
    return _figure_class()(figsize=figsize, layout=layout)


def _pyplot_free_figure(figsize: tuple[float, float]) -> Figure:
    return notebook_figure(figsize)


# ------------------------------------------------------------------------ where nodes go
def as_networkx(
    graph: AttributionGraph | nx.DiGraph,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
) -> nx.DiGraph:
    """A networkx graph to draw: an nx.DiGraph as is; an AttributionGraph pruned (unless it is)."""
    if isinstance(graph, nx.DiGraph):
        return graph
    if not all(hasattr(graph, a) for a in ("prune", "to_networkx", "node_mask", "n_layers")):
        raise TypeError(f"Expected an AttributionGraph or an nx.DiGraph, got {type(graph).__name__}.")
    if graph.node_mask is None:
        graph = graph.prune(node_threshold=node_threshold, edge_threshold=edge_threshold)
    G = graph.to_networkx()
    G.graph["n_layers"] = graph.n_layers  # the top layers may have no node left after pruning
    return G


def _mean(values: Any) -> float | None:
    if isinstance(values, (list, tuple)):
        nums = [float(v) for v in values if v is not None]
        return sum(nums) / len(nums) if nums else None
    return None if values is None else float(values)


def _member_cell(node_id: str, G: nx.DiGraph, n_layers: int, n_pos: int) -> tuple[float, float]:
    """(row, pos) of a member node, from the graph when it is there, else from its id."""
    if node_id in G and G.nodes[node_id].get("kind") != "supernode":
        return _cell(G.nodes[node_id], n_layers, n_pos)
    try:
        node = parse_node(node_id, n_layers=n_layers)
    except (TypeError, ValueError):
        raise ValueError(
            f"Cannot place supernode member {node_id!r}: not in the graph, not a node id."
        ) from None
    if node.kind in ("feature", "error"):
        return node.layer + 1, node.pos
    if node.kind == "token":
        return 0, node.pos
    return n_layers + 1, n_pos - 1


def _cell(data: dict, n_layers: int, n_pos: int) -> tuple[float, float]:
    """(row, pos) of a non-supernode: tokens row 0, layer l row l + 1, logits row n_layers + 1."""
    kind = data.get("kind")
    if kind == "token":
        return 0, float(data["pos"])
    if kind == "logit":
        return n_layers + 1, float(data.get("pos", n_pos - 1))
    layer, pos = _mean(data.get("layer")), _mean(data.get("pos"))
    if layer is None or pos is None:
        raise ValueError(f"Node {data} has no layer/pos to place it by.")
    return layer + 1, pos


def _supernode_cell(data: dict, G: nx.DiGraph, n_layers: int, n_pos: int) -> tuple[float, float]:
    members = data.get("members") or []
    cells = [_member_cell(m, G, n_layers, n_pos) for m in members]
    if cells:
        return (sum(c[0] for c in cells) / len(cells), sum(c[1] for c in cells) / len(cells))
    layer = _mean(data.get("layer", data.get("layers")))
    pos = _mean(data.get("pos", data.get("positions")))
    if layer is None or pos is None:
        raise ValueError("A supernode needs members, or layer and pos, to be placed.")
    return layer + 1, pos


def graph_extent(G: nx.DiGraph) -> tuple[int, int]:
    """(n_layers, n_pos) from graph attributes, else from the nodes."""
    layers, positions = [-1], [0]
    for _, d in G.nodes(data=True):
        for key, out in (("layer", layers), ("pos", positions), ("layers", layers), ("positions", positions)):
            v = d.get(key)
            out.extend(x for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None)
        for m in d.get("members") or []:
            parts = str(m).split(":")
            if parts[0] in ("F", "E") and len(parts) >= 3:
                layers.append(int(parts[1]))
                positions.append(int(parts[2]))
    n_layers = G.graph.get("n_layers") or int(max(layers)) + 1
    n_pos = len(G.graph.get("prompt_tokens") or []) or int(max(positions)) + 1
    return n_layers, n_pos


def _cells(G: nx.DiGraph, n_layers: int, n_pos: int) -> dict[tuple[float, float], list[str]]:
    """(row, pos) -> the nodes there, supernodes first, then the most influential first."""
    cells: dict[tuple[float, float], list[str]] = defaultdict(list)
    for node, d in G.nodes(data=True):
        if d.get("kind") == "supernode":  # in the cell nearest its members' mean: it never hides a node
            row, pos = _supernode_cell(d, G, n_layers, n_pos)
            row = min(max(math.floor(row + 0.5), 1), n_layers)
            pos = min(max(math.floor(pos + 0.5), 0), n_pos - 1)
            cells[(row, pos)].append(node)
        else:
            cells[_cell(d, n_layers, n_pos)].append(node)
    for nodes in cells.values():
        nodes.sort(
            key=lambda n: (G.nodes[n].get("kind") != "supernode", -abs(G.nodes[n].get("influence") or 0.0))
        )
    return cells


def _n_columns(n_nodes: int) -> int:
    """Grid columns for a cell of n nodes: at most MAX_CELL_ROWS rows while the width allows."""
    wanted = max(CELL_COLUMNS, math.ceil(n_nodes / MAX_CELL_ROWS))
    return max(1, min(n_nodes, wanted, MAX_CELL_COLUMNS))


def column_layout(cells: dict, n_pos: int, slot: float = 0.24) -> tuple[list[float], list[float]]:
    """Centre and width of each position's column: crowded positions get wider columns (`slot` per
    node column)."""
    widths = [1.0] * n_pos
    for (_, pos), nodes in cells.items():
        if float(pos).is_integer() and 0 <= pos < n_pos:
            cols = _n_columns(len(nodes))
            widths[int(pos)] = max(widths[int(pos)], slot * cols + 0.3)
    centers, left = [], 0.0
    for w in widths:
        centers.append(left + w / 2)
        left += w
    return centers, widths


def _column_x(pos: float, centers: list[float]) -> float:
    """x of a (possibly fractional) position: linear between the column centres."""
    lo = max(0, min(int(math.floor(pos)), len(centers) - 1))
    hi = min(lo + 1, len(centers) - 1)
    return centers[lo] + (pos - lo) * (centers[hi] - centers[lo])


def node_positions(
    G: nx.DiGraph, n_layers: int, n_pos: int, slot: float = 0.24
) -> tuple[dict[str, tuple[float, float]], list[float], list[float]]:
    """(x, y) of every node, and the columns' centres and widths. Nodes sharing a (layer, pos)
    cell fill a small grid inside the cell, supernodes and the most influential first."""
    cells = _cells(G, n_layers, n_pos)
    centers, widths = column_layout(cells, n_pos, slot)
    xy = {}
    for (row, pos), nodes in cells.items():
        whole = float(pos).is_integer() and 0 <= pos < n_pos
        width = widths[int(pos)] if whole else 1.0
        n_cols = _n_columns(len(nodes))
        n_rows = math.ceil(len(nodes) / n_cols)
        dx = (width - 0.3) / n_cols if n_cols > 1 else 0.0
        dy = min(0.22, 0.66 / (n_rows - 1)) if n_rows > 1 else 0.0
        x0 = _column_x(pos, centers)
        for i, node in enumerate(nodes):
            r, c = divmod(i, n_cols)
            in_row = min(n_cols, len(nodes) - r * n_cols)
            xy[node] = (x0 + (c - (in_row - 1) / 2) * dx, row + ((n_rows - 1) / 2 - r) * dy)
    return xy, centers, widths


# ------------------------------------------------------------------------ drawing
def _sizes(G: nx.DiGraph, nodes: list[str]) -> list[float]:
    infl = [G.nodes[n].get("influence") for n in nodes]
    known = [abs(v) for v in infl if v is not None]
    top = max(known) if known else 0.0
    out = []
    for n, v in zip(nodes, infl, strict=True):
        kind = G.nodes[n].get("kind")
        if kind in ("token", "logit"):
            out.append(60.0)
        elif v is None or top == 0:
            out.append(40.0 if kind != "supernode" else 160.0)
        else:
            base = 90.0 if kind == "supernode" else 10.0
            out.append(base + 110.0 * math.sqrt(abs(v) / top))
    return out


def strongest_edges(G: nx.DiGraph, max_in_edges: int | None) -> list[tuple[str, str, float]]:
    """Non-zero edges (u, v, weight), weakest first; with `max_in_edges`, only each node's strongest
    incoming edges (by |weight|)."""
    edges = [(u, v, float(w)) for u, v, w in G.edges(data="weight", default=0.0) if w]
    if max_in_edges is not None:
        into: dict[str, list] = defaultdict(list)
        for e in edges:
            into[e[1]].append(e)
        edges = [e for es in into.values() for e in sorted(es, key=lambda e: -abs(e[2]))[:max_in_edges]]
    return sorted(edges, key=lambda e: abs(e[2]))


def _draw_edges(ax: Axes, G: nx.DiGraph, xy: dict, max_edges: int | None, max_in_edges: int | None) -> int:
    from matplotlib.collections import LineCollection

    edges = strongest_edges(G, max_in_edges)
    if max_edges is not None:
        edges = edges[-max_edges:] if max_edges > 0 else []
    if not edges:
        return 0
    top = max(abs(w) for _, _, w in edges)
    segments = [(xy[u], xy[v]) for u, v, _ in edges]
    strength = [abs(w) / top for _, _, w in edges]
    colors = [(POSITIVE if w > 0 else NEGATIVE) for _, _, w in edges]
    lines = LineCollection(
        segments, linewidths=[0.25 + 3.0 * s for s in strength], colors=colors, zorder=1, capstyle="round"
    )
    lines.set_alpha(None)
    lines.set_color([_with_alpha(c, 0.12 + 0.6 * s) for c, s in zip(colors, strength, strict=True)])
    lines.set_gid("tl_clt-edges")
    ax.add_collection(lines)
    return len(edges)


def _with_alpha(color: str, alpha: float) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return to_rgba(color, alpha)


def _draw_nodes(ax: Axes, G: nx.DiGraph, xy: dict) -> int:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for node, d in G.nodes(data=True):
        by_kind[d.get("kind") if d.get("kind") in KIND_STYLE else "feature"].append(node)
    drawn = 0
    for kind, (marker, color, label) in KIND_STYLE.items():
        nodes = by_kind.get(kind, [])
        if not nodes:
            continue
        coll = ax.scatter(
            [xy[n][0] for n in nodes],
            [xy[n][1] for n in nodes],
            s=_sizes(G, nodes),
            marker=marker,
            c=color,
            edgecolors="#333333",
            linewidths=0.6,
            zorder=3,
            label=label,
        )
        coll.set_gid(f"{NODE_GID}-{kind}")
        drawn += len(nodes)
    return drawn


def _token_label(text: str, max_len: int = 14) -> str:
    return visible_token(text, max_len)


def _prompt_tokens(G: nx.DiGraph, n_pos: int) -> list[str]:
    tokens = list(G.graph.get("prompt_tokens") or [])
    if len(tokens) >= n_pos:
        return tokens[:n_pos]
    found = {d["pos"]: d.get("token", "") for _, d in G.nodes(data=True) if d.get("kind") == "token"}
    return [found.get(p, str(p)) for p in range(n_pos)]


def _label_nodes(
    ax: Axes, G: nx.DiGraph, xy: dict, label_features: bool, texts: Mapping[str, str] | None = None
) -> list:
    """Logit, supernode and (with `label_features`) feature labels (from `texts` when given, node id ->
    text), most important first."""
    labels = []
    for node, d in G.nodes(data=True):
        kind, (x, y) = d.get("kind"), xy[node]
        if kind == "logit":
            prob = d.get("probability")
            text = repr(_token_label(str(d.get("token", node)), 12))
            text += f" {prob:.2f}" if prob is not None else ""
            t = ax.annotate(
                text,
                (x, y),
                xytext=(-2, 6),
                textcoords="offset points",
                ha="left",
                va="bottom",
                rotation=50,
                rotation_mode="anchor",
                fontsize=6.5,
                zorder=4,
            )
            labels.append((0, -(prob or 0.0), t, False))
        elif kind == "supernode" or (label_features and kind == "feature"):
            text = str(node) if kind == "supernode" else f"{d.get('feature')}"
            text = (texts or {}).get(node, text)
            t = ax.annotate(
                text,
                (x, y),
                xytext=(0, -7),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=7 if kind == "supernode" else 5.5,
                zorder=4,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75),
            )
            labels.append((1 if kind == "supernode" else 2, -abs(d.get("influence") or 0.0), t, True))
    labels.sort(key=lambda item: item[:2])
    return [(t, movable) for *_, t, movable in labels]


def _card_labels(graph, G: nx.DiGraph, dashboards: Any) -> dict[str, str] | None:
    """Short dashboard labels of the drawn features, when dashboards are given or next to the CLT."""
    from tl_clt.dashboards.reader import dashboards_for_graph, open_dashboards

    dash = open_dashboards(dashboards) if dashboards is not None else dashboards_for_graph(graph)
    if dash is None:
        return None
    out = {}
    for node, d in G.nodes(data=True):
        if d.get("kind") == "feature":
            text = dash[d["layer"], d["feature"]].label
            out[node] = text if len(text) <= 24 else text[:23] + "…"
    return out


LABEL_SPOTS = (  # (dx, dy) in points, ha, va: below, above, right, left, then further away
    ((0, -7), "center", "top"),
    ((0, 7), "center", "bottom"),
    ((6, 0), "left", "center"),
    ((-6, 0), "right", "center"),
    ((0, -15), "center", "top"),
    ((0, 15), "center", "bottom"),
    ((6, -9), "left", "top"),
    ((-6, 9), "right", "bottom"),
)


def declutter(fig: Figure, labels: list, fixed: list, obstacles=()) -> int:
    """Give each label (in order) the first spot near its node where it touches no label placed
    before it, no `fixed` text (tick labels, title) and no box in `obstacles` (callable: renderer ->
    display Bboxes, e.g. node markers); hide it when no spot is free. Returns how many were hidden.
    Measured with the figure's renderer after its layout is fixed."""
    import numpy as np

    renderer = _renderer(fig)
    boxes = [t.get_window_extent(renderer) for t in fixed if t.get_visible() and t.get_text()]
    boxes += list(obstacles(renderer)) if callable(obstacles) else list(obstacles)
    placed = np.array([b.extents for b in boxes], dtype=float).reshape(-1, 4)  # x0, y0, x1, y1
    hidden = 0
    for t, movable in labels:
        spots = LABEL_SPOTS if movable else ((t.xyann, t.get_ha(), t.get_va()),)
        for offset, ha, va in spots:
            t.xyann = offset
            t.set_ha(ha)
            t.set_va(va)
            x0, y0, x1, y1 = t.get_window_extent(renderer).extents
            hits = (placed[:, 0] < x1) & (x0 < placed[:, 2]) & (placed[:, 1] < y1) & (y0 < placed[:, 3])
            if not hits.any():
                placed = np.vstack([placed, [x0, y0, x1, y1]])
                break
        else:
            t.set_visible(False)
            hidden += 1
    return hidden


def _marker_boxes(ax: Axes, G: nx.DiGraph, xy: dict) -> list:
    """Display-space boxes of the node markers (for keeping labels off them)."""
    from matplotlib.transforms import Bbox

    nodes = list(G.nodes)
    centers = ax.transData.transform([xy[n] for n in nodes])
    scale = ax.figure.dpi / 72
    boxes = []
    for (x, y), size in zip(centers, _sizes(G, nodes), strict=True):
        r = math.sqrt(size) / 2 * scale
        boxes.append(Bbox([[x - r, y - r], [x + r, y + r]]))
    return boxes


def _renderer(fig: Figure):
    """A renderer for measuring, with the figure's layout computed and then frozen."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")
    return fig.canvas.get_renderer()


def layer_ticks(n_layers: int) -> tuple[list[int], list[str]]:
    step = 1 if n_layers <= 16 else 2 if n_layers <= 40 else 4
    rows = [0] + [layer + 1 for layer in range(0, n_layers, step)] + [n_layers + 1]
    labels = ["Emb"] + [f"L{layer}" for layer in range(0, n_layers, step)] + ["Logit"]
    return rows, labels


def _style_axes(
    ax: Axes, n_layers: int, centers: list[float], widths: list[float], tokens: list[str]
) -> None:
    n_pos = len(centers)
    ax.set_xlim(-0.1, centers[-1] + widths[-1] / 2 + 0.1)
    ax.set_ylim(-0.7, n_layers + 2.6)
    for row in range(0, n_layers + 2, 2):
        ax.axhspan(row - 0.5, row + 0.5, color="#f3f3f3", zorder=0, lw=0)
    for c, w in zip(centers[1:], widths[1:], strict=True):
        ax.axvline(c - w / 2, color="#e4e4e4", lw=0.6, zorder=0)
    ax.set_xticks(centers)
    rotate = max((len(t) for t in tokens), default=0) > 4 or n_pos > 12
    ax.set_xticklabels(
        [_token_label(t) for t in tokens],
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=8,
    )
    rows, labels = layer_ticks(n_layers)
    ax.set_yticks(rows)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("token position")
    ax.set_ylabel("layer")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(ax: Axes) -> None:
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color=POSITIVE, lw=2, label="edge +"),
        Line2D([], [], color=NEGATIVE, lw=2, label="edge −"),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
        markerscale=0.7,
    )


def plot_graph(
    graph: AttributionGraph | nx.DiGraph,
    path: str | os.PathLike | None = None,
    *,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    max_edges: int | None = 400,
    max_in_edges: int | None = 3,
    label_features: bool = False,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    dpi: int = 150,
    labels: Mapping[str, str] | None = None,
    dashboards: Any = None,
) -> Figure:
    """Draw a graph (an nx.DiGraph from `to_networkx()` / grouping, or an AttributionGraph, pruned
    with the thresholds unless it already is) and return the matplotlib Figure.

    Edges drawn: each node's `max_in_edges` strongest incoming edges, then the `max_edges` strongest
    of those (None: no limit); the title says how many of the graph's edges are shown.
    `label_features` writes a label next to each feature marker: from `labels` (node id -> text), else
    its dashboard card's label (`dashboards`, or those next to an AttributionGraph's CLT), else its
    index; labels never overlap (a label with no free spot near its node is left out and counted in
    the title). `path` saves the picture (PNG, SVG, PDF, ... by extension; checked before anything is
    drawn, written atomically); `ax` draws into existing axes. The Figure shows itself in
    Jupyter without `%matplotlib inline` (it has `_repr_png_` and is not registered with pyplot).
    For groups of features as labelled boxes, see `tl_clt.plot_circuit`.
    """
    picture_format = check_picture_path(path) if path is not None else None
    G = as_networkx(graph, node_threshold, edge_threshold)
    if G.number_of_nodes() == 0:
        raise ValueError("The graph has no nodes to draw.")
    n_layers, n_pos = graph_extent(G)
    xy, centers, widths = node_positions(G, n_layers, n_pos, slot=0.42 if label_features else 0.24)
    if ax is None:
        width = centers[-1] + widths[-1] / 2
        size = figsize or (
            min(40.0, max(7.0, 0.6 * width + 3.0)),
            min(30.0, max(4.5, (0.85 if label_features else 0.45) * (n_layers + 2) + 2.2)),
        )
        fig = _pyplot_free_figure(size)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    n_edges = _draw_edges(ax, G, xy, max_edges, max_in_edges)
    n_nodes = _draw_nodes(ax, G, xy)
    if label_features and labels is None:
        labels = _card_labels(graph, G, dashboards)
    labels = _label_nodes(ax, G, xy, label_features, labels)
    tokens = _prompt_tokens(G, n_pos)
    _style_axes(ax, n_layers, centers, widths, tokens)
    _legend(ax)
    shown = f"{n_nodes} nodes, {n_edges} edges"
    if n_edges < G.number_of_edges():
        shown += f" (the strongest of {G.number_of_edges()})"
    prompt = _token_label("".join(tokens), 80)
    ax.set_title(title if title is not None else f"{prompt}\n{shown}", fontsize=9)
    fixed = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.title]
    hidden = declutter(fig, labels, fixed, lambda r: _marker_boxes(ax, G, xy))
    if hidden and title is None:
        ax.set_title(f"{prompt}\n{shown}; {hidden} labels left out for room (graph.show() zooms)", fontsize=9)
    if path is not None:
        with files.atomic_write(path, what="picture") as f:
            fig.savefig(f, format=picture_format, dpi=dpi, bbox_inches="tight")
    return fig


def check_picture_path(path: str | os.PathLike) -> str:
    """The matplotlib format of a picture path (from its extension), after checking that it can be
    written; ValueError for an unknown extension, OSError naming the path for a bad folder."""
    path = files.check_output_path(path, what="picture")
    formats = _pyplot_free_figure((1, 1)).canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise ValueError(
            f"Cannot draw {path}: unknown picture type {path.suffix!r}; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}."
        )
    return suffix


def node_marker_count(fig: Figure) -> int:
    """How many node markers `plot_graph` drew in `fig` (for checks)."""
    return sum(
        len(c.get_offsets())
        for ax in fig.axes
        for c in ax.collections
        if (c.get_gid() or "").startswith(NODE_GID)
    )
