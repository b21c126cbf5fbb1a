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


def _pyplot_free_figure(figsize: tuple[float, float]) -> Figure:
    """A Figure not registered with pyplot (no duplicate display in notebooks)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'tl_clt.plot_graph needs matplotlib, an optional extra: pip install "tl-clt[viz]" '
            "(or pip install matplotlib)."
        ) from err
    return Figure(figsize=figsize, layout="constrained")


# ------------------------------------------------------------------------ where nodes go
def as_networkx(
    graph: AttributionGraph | nx.DiGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> nx.DiGraph:
    """A networkx graph to draw: an nx.DiGraph as is; an AttributionGraph pruned (unless it is)."""
    if isinstance(graph, nx.DiGraph):
        return graph
    from tl_clt.graph import AttributionGraph

    if not isinstance(graph, AttributionGraph):
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
    parts = str(node_id).split(":")
    kind = {"F": "feature", "E": "error", "T": "token", "L": "logit"}.get(parts[0])
    if kind in ("feature", "error") and len(parts) >= 3:
        return int(parts[1]) + 1, int(parts[2])
    if kind == "token" and len(parts) == 2:
        return 0, int(parts[1])
    if kind == "logit":
        return n_layers + 1, n_pos - 1
    raise ValueError(f"Cannot place supernode member {node_id!r}: not in the graph, not a node id.")


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


def _extent(G: nx.DiGraph) -> tuple[int, int]:
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
    """(row, pos) -> the nodes there, most influential first."""
    cells: dict[tuple[float, float], list[str]] = defaultdict(list)
    for node, d in G.nodes(data=True):
        if d.get("kind") == "supernode":
            cells[_supernode_cell(d, G, n_layers, n_pos)].append(node)
        else:
            cells[_cell(d, n_layers, n_pos)].append(node)
    for nodes in cells.values():
        nodes.sort(key=lambda n: -abs(G.nodes[n].get("influence") or 0.0))
    return cells


def _n_columns(n_nodes: int) -> int:
    """Grid columns for a cell of n nodes: at most MAX_CELL_ROWS rows while the width allows."""
    wanted = max(CELL_COLUMNS, math.ceil(n_nodes / MAX_CELL_ROWS))
    return max(1, min(n_nodes, wanted, MAX_CELL_COLUMNS))


def column_layout(cells: dict, n_pos: int) -> tuple[list[float], list[float]]:
    """Centre and width of each position's column: crowded positions get wider columns."""
    widths = [1.0] * n_pos
    for (_, pos), nodes in cells.items():
        if float(pos).is_integer() and 0 <= pos < n_pos:
            cols = _n_columns(len(nodes))
            widths[int(pos)] = max(widths[int(pos)], 0.24 * cols + 0.3)
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
    G: nx.DiGraph, n_layers: int, n_pos: int
) -> tuple[dict[str, tuple[float, float]], list[float], list[float]]:
    """(x, y) of every node, and the columns' centres and widths. Nodes sharing a (layer, pos)
    cell fill a small grid inside the cell, most influential first."""
    cells = _cells(G, n_layers, n_pos)
    centers, widths = column_layout(cells, n_pos)
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


def _draw_edges(ax: Axes, G: nx.DiGraph, xy: dict, max_edges: int | None) -> int:
    from matplotlib.collections import LineCollection

    edges = [(u, v, float(w)) for u, v, w in G.edges(data="weight", default=0.0) if w]
    edges.sort(key=lambda e: abs(e[2]))
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
    text = text.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


def _prompt_tokens(G: nx.DiGraph, n_pos: int) -> list[str]:
    tokens = list(G.graph.get("prompt_tokens") or [])
    if len(tokens) >= n_pos:
        return tokens[:n_pos]
    found = {d["pos"]: d.get("token", "") for _, d in G.nodes(data=True) if d.get("kind") == "token"}
    return [found.get(p, str(p)) for p in range(n_pos)]


def _label_nodes(
    ax: Axes, G: nx.DiGraph, xy: dict, label_features: bool, labels: Mapping[str, str] | None = None
) -> None:
    for node, d in G.nodes(data=True):
        kind, (x, y) = d.get("kind"), xy[node]
        if kind == "logit":
            prob = d.get("probability")
            text = repr(_token_label(str(d.get("token", node)), 12))
            text += f" {prob:.2f}" if prob is not None else ""
            ax.annotate(
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
        elif kind == "supernode" or (label_features and kind == "feature"):
            text = str(node) if kind == "supernode" else f"{d.get('feature')}"
            text = (labels or {}).get(node, text)
            ax.annotate(
                text,
                (x, y),
                xytext=(0, -9),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=7 if kind == "supernode" else 5.5,
                zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7),
            )


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


def _layer_ticks(n_layers: int) -> tuple[list[int], list[str]]:
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
    rows, labels = _layer_ticks(n_layers)
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
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_edges: int | None = 800,
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

    `max_edges` keeps the strongest edges (None: all); `label_features` writes a label under each
    feature: from `labels` (node id -> text), else its dashboard card's label (`dashboards`, or those
    next to an AttributionGraph's CLT), else its index; `path` saves the picture (PNG, SVG, PDF, ...
    by extension); `ax` draws into existing axes.
    """
    G = as_networkx(graph, node_threshold, edge_threshold)
    if G.number_of_nodes() == 0:
        raise ValueError("The graph has no nodes to draw.")
    n_layers, n_pos = _extent(G)
    xy, centers, widths = node_positions(G, n_layers, n_pos)
    if ax is None:
        width = centers[-1] + widths[-1] / 2
        size = figsize or (
            min(40.0, max(7.0, 0.6 * width + 3.0)),
            min(30.0, max(4.5, 0.45 * (n_layers + 2) + 2.2)),
        )
        fig = _pyplot_free_figure(size)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    n_edges = _draw_edges(ax, G, xy, max_edges)
    n_nodes = _draw_nodes(ax, G, xy)
    if label_features and labels is None:
        labels = _card_labels(graph, G, dashboards)
    _label_nodes(ax, G, xy, label_features, labels)
    tokens = _prompt_tokens(G, n_pos)
    _style_axes(ax, n_layers, centers, widths, tokens)
    _legend(ax)
    shown = f"{n_nodes} nodes, {n_edges} edges"
    if n_edges < G.number_of_edges():
        shown += f" (strongest of {G.number_of_edges()})"
    prompt = _token_label("".join(tokens), 80)
    ax.set_title(title if title is not None else f"{prompt}\n{shown}", fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def node_marker_count(fig: Figure) -> int:
    """How many node markers `plot_graph` drew in `fig` (for checks)."""
    return sum(
        len(c.get_offsets())
        for ax in fig.axes
        for c in ax.collections
        if (c.get_gid() or "").startswith(NODE_GID)
    )
