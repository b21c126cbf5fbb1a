"""A circuit diagram: supernodes as labelled boxes between the prompt's tokens and the top logits.

`plot_circuit(graph, {"President": [...], "Year ~2010": [...]})` draws what a reader of a circuit
story wants to see: each group of features as one box at its members' (influence-weighted) layer
and position, an arrow between two boxes whose width shows the summed direct effect of one group's
members on the other's, the prompt's tokens in a row below (arrows from the tokens that feed a
group) and the top logits above. MLP error nodes and ungrouped features are left out by default
(`errors="aggregate"` / `others="aggregate"` draw each as one more box). Boxes never overlap and no
two labels touch: the layout is in inches, measured with matplotlib's renderer.

Arrow weights are sums of the graph's edges (direct effects in the frozen local replacement model):
into features they are in units of pre-activation, into logits in units of de-meaned logit, so the
two kinds of arrows are scaled separately. Weights come from `graph.adjacency` as it is: on a pruned
graph only the kept edges (and members) count.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from tl_clt import files
from tl_clt.display import visible_token
from tl_clt.nodes import NodeLike, as_node_list, node_kind, to_node_id
from tl_clt.plot import NEGATIVE, POSITIVE, notebook_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tl_clt.graph import AttributionGraph

GROUP_COLORS = ("#dbe8f7", "#fbe3c8", "#dcefd9", "#efdcf0", "#f9f1c0", "#d9f0ef", "#f6d8d8", "#e6e6e6")
BOX_GID, TOKEN_GID, LOGIT_GID, ARROW_GID = "tl_clt-box", "tl_clt-token", "tl_clt-logit", "tl_clt-arrow"
GAP, MARGIN = 0.12, 0.3  # inches: gap between boxes, page margin
LAYER_BAND = (4.5, 0.3, 0.9)  # inches: height of all layer rows, smallest and largest row height


@dataclass
class _Box:
    """A box on the page (inches): a group, an aggregate, a token or a logit."""

    name: str
    label: str
    x: float
    y: float
    w: float = 0.0
    h: float = 0.0
    kind: str = "group"  # group | aggregate | token | logit
    color: str = "white"
    movable: bool = True
    rows: list[int] = field(default_factory=list)  # node indices in the graph

    def overlaps(self, other: _Box, gap: float = 0.0) -> bool:
        return (
            abs(self.x - other.x) < (self.w + other.w) / 2 + gap
            and abs(self.y - other.y) < (self.h + other.h) / 2 + gap
        )


# ------------------------------------------------------------------------ groups -> node indices
def _group_rows(
    graph: AttributionGraph, supernodes: Mapping[str, Iterable[NodeLike]]
) -> dict[str, list[int]]:
    """{name: node indices of its members that the graph shows}; errors for unknown or shared nodes."""
    index = {node: i for i, node in enumerate(graph.node_ids())}
    present = graph.present_mask().tolist()
    owner: dict[int, str] = {}
    out = {}
    for name, members in supernodes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Supernode names must be non-empty strings, got {name!r}.")
        rows = []
        for m in as_node_list(members):
            node = to_node_id(m)
            if node_kind(node) not in ("feature", "error"):
                raise ValueError(f"Supernode {name!r}: {node!r} is a {node_kind(node)} node; group features.")
            if node not in index:
                raise KeyError(f"Supernode {name!r}: {node!r} is not a node of this graph.")
            i = index[node]
            if owner.get(i, name) != name:
                raise ValueError(f"Node {node!r} is in two supernodes, {owner[i]!r} and {name!r}.")
            owner[i] = name
            if present[i]:
                rows.append(i)
        out[name] = sorted(set(rows))
    return out


def _aggregate_rows(graph: AttributionGraph, grouped: set[int], what: str) -> list[int]:
    present = graph.present_mask()
    if what == "errors":
        idx = range(graph.error_index(0, 0), graph.token_index(0))
    else:
        idx = range(graph.n_features)
    return [i for i in idx if present[i] and i not in grouped]


def _cell(graph: AttributionGraph, rows: list[int], weights: torch.Tensor) -> tuple[float, float]:
    """Influence-weighted mean (layer, pos) of the nodes `rows` (plain mean when all weights are 0)."""
    layers, positions = [], []
    for i in rows:
        info = graph.node_info(i)
        layers.append(info["layer"])
        positions.append(info["pos"])
    w = weights[rows].abs().double()
    if float(w.sum()) <= 0:
        w = torch.ones(len(rows), dtype=torch.double)
    w = w / w.sum()
    return float((w * torch.tensor(layers, dtype=torch.double)).sum()), float(
        (w * torch.tensor(positions, dtype=torch.double)).sum()
    )


# ------------------------------------------------------------------------ measuring text
def _measure(fig, renderer, text: str, **props) -> tuple[float, float]:
    """Width and height in inches of `text` drawn with `props`."""
    t = fig.text(0, 0, text, **props)
    box = t.get_window_extent(renderer)
    t.remove()
    return box.width / fig.dpi, box.height / fig.dpi


def _resolve_overlaps(boxes: list[_Box], x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
    """Push movable boxes apart (along the axis that needs the smaller move) until none overlap."""
    for _ in range(500):
        moved = False
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                if not a.overlaps(b, GAP) or not (a.movable or b.movable):
                    continue
                moved = True
                dx = (a.w + b.w) / 2 + GAP - abs(a.x - b.x)
                dy = (a.h + b.h) / 2 + GAP - abs(a.y - b.y)
                share = 0.5 if a.movable and b.movable else 1.0
                if dx <= 2.5 * dy:  # prefer side by side: the row keeps meaning the layer
                    sign = 1.0 if (b.x, b.name) >= (a.x, a.name) else -1.0
                    a.x -= sign * dx * share * a.movable
                    b.x += sign * dx * share * b.movable
                else:
                    sign = 1.0 if (b.y, b.name) >= (a.y, a.name) else -1.0
                    a.y -= sign * dy * share * a.movable
                    b.y += sign * dy * share * b.movable
        for box in boxes:
            if box.movable:
                box.x = min(max(box.x, x_range[0] + box.w / 2), x_range[1] - box.w / 2)
                box.y = min(max(box.y, y_range[0] + box.h / 2), y_range[1] - box.h / 2)
        if not moved:
            return


# ------------------------------------------------------------------------ the diagram
def plot_circuit(
    graph: AttributionGraph,
    supernodes: Mapping[str, Iterable[NodeLike]],
    path: str | os.PathLike | None = None,
    *,
    n_logits: int = 3,
    errors: Literal["hide", "aggregate"] = "hide",
    others: Literal["hide", "aggregate"] = "hide",
    min_share: float = 0.05,
    title: str | None = None,
    fontsize: float = 9.0,
    dpi: int = 150,
    dashboards: Any = None,
) -> Figure:
    """Draw the circuit of `supernodes` ({name: [node ids or (layer, pos, feature) keys]}) in `graph`.

    Boxes sit at their members' influence-weighted mean layer (row) and position (column), pushed
    apart where they would overlap. Arrows (group -> group, token -> group, group -> logit) carry
    the summed edge weights between the members; width is |weight| relative to the largest arrow
    of its kind (into features / into logits), colour its sign; arrows under `min_share` of that
    largest are left out. `n_logits` top logits are shown above. `errors` / `others`: "aggregate"
    draws all MLP error nodes / all ungrouped features as one box each. Returns a matplotlib Figure
    that displays itself in Jupyter; `path` also saves it (PNG, SVG, PDF, ... by extension).
    With feature dashboards, each group's box also quotes the dashboard label of its most influential
    feature: `dashboards` is a FeatureDashboards, folder or hub id; None uses a local `features/` next
    to the graph's CLT if there is one; False quotes nothing.
    """
    if errors not in ("hide", "aggregate") or others not in ("hide", "aggregate"):
        raise ValueError(f"errors and others must be 'hide' or 'aggregate', got {errors!r}, {others!r}.")
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must be in [0, 1], got {min_share}.")
    if not supernodes:
        raise ValueError("No supernodes given: pass {name: [node ids]} (see tl_clt.group_graph).")
    groups = {name: rows for name, rows in _group_rows(graph, supernodes).items() if rows}
    if not groups:
        raise ValueError("None of the supernodes' members is a node the graph shows (pruned away?).")
    grouped = {i for rows in groups.values() for i in rows}
    extra = {}
    if others == "aggregate":
        extra["other features"] = _aggregate_rows(graph, grouped, "features")
    if errors == "aggregate":
        extra["MLP errors"] = _aggregate_rows(graph, grouped, "errors")
    extra = {k: v for k, v in extra.items() if v}

    fig = notebook_figure((8.0, 4.0), layout=None)
    fig.set_dpi(dpi)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    layout = _Layout(graph, fig, renderer, fontsize)
    quotes = _group_labels(graph, groups, dashboards)
    boxes = layout.place(groups, extra, min(n_logits, graph.n_logits), quotes)
    arrows = _arrows(graph, boxes, layout.tokens, layout.logits, min_share)
    _draw(fig, layout, boxes, arrows, title, graph, errors, others, min_share)
    if path is not None:
        fmt = Path(path).suffix.lstrip(".").lower() or "png"
        with files.atomic_write(path, what="picture") as f:
            fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
    return fig


class _Layout:
    """Columns from the token labels' widths, rows from the layers; everything in inches."""

    def __init__(self, graph: AttributionGraph, fig, renderer, fontsize: float):
        self.graph, self.fig, self.renderer, self.fontsize = graph, fig, renderer, fontsize
        self.token_text = [visible_token(t, 16) for t in graph.token_strs]
        sizes = [_measure(fig, renderer, t, fontsize=fontsize) for t in self.token_text]
        pad = 0.3 * fontsize / 72
        widths = [max(w + 2 * pad + GAP, 0.3) for w, _ in sizes]
        self.token_h = max(h for _, h in sizes) + 2 * pad
        self.left = MARGIN + max(_measure(fig, renderer, "L00", fontsize=fontsize * 0.8)[0], 0.3) + GAP
        self.centers, x = [], self.left
        for w in widths:
            self.centers.append(x + w / 2)
            x += w
        self.token_w = [w - GAP for w in widths]
        self.width = x + MARGIN
        self.y_tokens = MARGIN + 0.45 + self.token_h / 2  # room for the caption below
        band, smallest, largest = LAYER_BAND
        self.row_h = min(max(band / graph.n_layers, smallest), largest)
        self.tokens: list[_Box] = []
        self.logits: list[_Box] = []

    def x_of(self, pos: float) -> float:
        lo = max(0, min(int(pos), len(self.centers) - 1))
        hi = min(lo + 1, len(self.centers) - 1)
        return self.centers[lo] + (pos - lo) * (self.centers[hi] - self.centers[lo])

    def y_of(self, layer: float) -> float:
        return self.y_tokens + self.token_h / 2 + 3 * GAP + self.row_h * (layer + 0.5)

    def _box(self, name, label, x, y, kind, color, rows=(), bold=False) -> _Box:
        props = dict(fontsize=self.fontsize, fontweight="bold" if bold else "normal", linespacing=1.3)
        w, h = _measure(self.fig, self.renderer, label, **props)
        pad = 0.45 * self.fontsize / 72
        return _Box(
            name,
            label,
            x,
            y,
            w + 2 * pad,
            h + 2 * pad,
            kind,
            color,
            kind in ("group", "aggregate"),
            list(rows),
        )

    def place(
        self,
        groups: dict[str, list[int]],
        extra: dict[str, list[int]],
        n_logits: int,
        quotes: Mapping[str, str] | None = None,
    ) -> list[_Box]:
        g = self.graph
        weights = g.influence if g.influence is not None else g.node_influence()
        boxes, cells = [], []
        for k, (name, rows) in enumerate(list(groups.items()) + list(extra.items())):
            layer, pos = _cell(g, rows, weights)
            cells.append((layer, pos))
            kind = "group" if name in groups else "aggregate"
            layers = sorted({g.node_info(i)["layer"] for i in rows})
            span = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}–{layers[-1]}"
            noun = "node" if len(rows) == 1 else "nodes"
            label = f"{name}\n{len(rows)} {noun}, {span}"
            if (quotes or {}).get(name):
                label += f"\n“{quotes[name]}”"
            color = GROUP_COLORS[k % len(GROUP_COLORS)] if kind == "group" else "#f2f2f2"
            boxes.append(
                self._box(name, label, self.x_of(pos), self.y_of(layer), kind, color, rows, bold=True)
            )
        for p, text in enumerate(self.token_text):
            box = self._box(
                f"T:{p}", text, self.centers[p], self.y_tokens, "token", "white", [g.token_index(p)]
            )
            box.w, box.h = self.token_w[p], self.token_h
            self.tokens.append(box)
        for i in range(n_logits):
            label = f"{visible_token(g.logit_token_strs[i], 16)}  {float(g.logit_probabilities[i]):.2f}"
            self.logits.append(self._box(f"L:{i}", label, 0.0, 0.0, "logit", "#fde9c9", [g.logit_index(i)]))
        for _ in range(12):  # no room for every box: a wider page and taller rows, until they fit
            self.y_logits = self.y_of(g.n_layers - 0.5) + GAP + self.row_h / 2
            for b in self.logits:
                b.y = self.y_logits
            self._place_logits()
            for b, (layer, pos) in zip(boxes, cells, strict=True):
                b.x, b.y = self.x_of(pos), self.y_of(layer)
            y_low = self.y_tokens + self.token_h / 2 + 3 * GAP
            y_high = self.y_logits - max(b.h for b in self.logits) / 2 - GAP
            _resolve_overlaps(boxes, (self.left, self.width - MARGIN), (y_low, y_high))
            if not any(a.overlaps(b, GAP / 2) for i, a in enumerate(boxes) for b in boxes[:i]):
                break
            self.width += 0.25 * (self.width - self.left)
            self.row_h *= 1.2
        self.height = self.y_logits + max(b.h for b in self.logits) / 2 + MARGIN + 0.25
        return boxes

    def _place_logits(self) -> None:
        """Logit boxes side by side, centred over the last position, inside the page."""
        total = sum(b.w for b in self.logits) + GAP * (len(self.logits) - 1)
        if total > self.width - self.left - MARGIN:
            self.width = self.left + total + MARGIN
        x = min(self.centers[-1] - total / 2, self.width - MARGIN - total)
        x = max(x, self.left)
        for b in self.logits:
            b.x = x + b.w / 2
            x += b.w + GAP


def _group_labels(graph: AttributionGraph, groups: dict[str, list[int]], dashboards: Any) -> dict[str, str]:
    """Group name -> the dashboard label of its most influential feature (shortened), when there are
    dashboards (see plot_circuit's `dashboards`)."""
    from tl_clt.dashboards.reader import dashboards_for_graph, open_dashboards

    if dashboards is False:
        return {}
    dash = dashboards_for_graph(graph, local_only=True) if dashboards is None else open_dashboards(dashboards)
    if dash is None:
        return {}
    weights = graph.influence if graph.influence is not None else graph.node_influence()
    out = {}
    for name, rows in groups.items():
        features = [i for i in rows if i < graph.n_features]
        if features:
            info = graph.node_info(max(features, key=lambda i: abs(float(weights[i]))))
            text = dash[info["layer"], info["feature"]].label
            if text:
                out[name] = text if len(text) <= 28 else text[:27] + "…"
    return out


@dataclass
class _Arrow:
    source: _Box
    target: _Box
    weight: float
    into: str  # "features" | "logits"


def _arrows(
    graph, boxes: list[_Box], tokens: list[_Box], logits: list[_Box], min_share: float
) -> list[_Arrow]:
    A = graph.adjacency
    found = []
    for target in boxes + logits:
        into = "logits" if target.kind == "logit" else "features"
        for source in boxes if into == "logits" else tokens + boxes:  # tokens -> groups, groups -> all
            if source is target:
                continue
            w = float(A[target.rows][:, source.rows].sum())
            if w != 0.0:
                found.append(_Arrow(source, target, w, into))
    top = {k: max((abs(a.weight) for a in found if a.into == k), default=0.0) for k in ("features", "logits")}
    return [a for a in found if top[a.into] > 0 and abs(a.weight) >= min_share * top[a.into]]


# ------------------------------------------------------------------------ drawing
def _draw(fig, layout: _Layout, boxes, arrows, title, graph, errors, others, min_share) -> None:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig.set_size_inches(layout.width, layout.height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, layout.width)
    ax.set_ylim(0, layout.height)
    ax.set_axis_off()
    fs = layout.fontsize
    used_tokens = {id(a.source) for a in arrows if a.source.kind == "token"}
    patches = {}
    for b in boxes + layout.logits + layout.tokens:
        faint = b.kind == "token" and id(b) not in used_tokens
        style = "round,pad=0,rounding_size=0.06"
        patch = FancyBboxPatch(
            (b.x - b.w / 2, b.y - b.h / 2),
            b.w,
            b.h,
            boxstyle=style,
            fc=b.color,
            ec="none" if faint else ("#888888" if b.kind != "aggregate" else "#aaaaaa"),
            ls="--" if b.kind == "aggregate" else "-",
            lw=0.8,
            zorder=3,
        )
        ax.add_patch(patch)
        patches[id(b)] = patch
        gid = {"group": BOX_GID, "aggregate": BOX_GID, "token": TOKEN_GID, "logit": LOGIT_GID}[b.kind]
        ax.text(
            b.x,
            b.y,
            b.label,
            ha="center",
            va="center",
            ma="center",
            fontsize=fs,
            fontweight="bold" if b.kind in ("group", "aggregate") else "normal",
            color="#aaaaaa" if faint else "#222222",
            linespacing=1.3,
            zorder=4,
            gid=f"{gid}:{b.name}",
        )
    _draw_layer_labels(ax, layout)
    tops = {
        k: max((abs(a.weight) for a in arrows if a.into == k), default=1.0) for k in ("features", "logits")
    }
    ports = _ports(arrows)
    obstacles = boxes + layout.logits + layout.tokens
    page = (MARGIN / 2, layout.width - MARGIN / 2)
    for a in sorted(arrows, key=lambda a: abs(a.weight)):
        share = abs(a.weight) / tops[a.into]
        width = 0.6 + 5.4 * share
        arrow = FancyArrowPatch(
            *ports[id(a)],
            connectionstyle=f"arc3,rad={_bend(*ports[id(a)], obstacles, a, page):g}",
            clip_on=False,
            shrinkA=0,
            shrinkB=1,
            arrowstyle="-|>",
            mutation_scale=6 + 6 * share,
            lw=width,
            color=POSITIVE if a.weight > 0 else NEGATIVE,
            alpha=0.35 + 0.45 * share,
            zorder=2,
            gid=f"{ARROW_GID}:{a.source.name}->{a.target.name}",
        )
        arrow.tl_clt_weight = a.weight
        ax.add_patch(arrow)
    prompt = "".join(graph.token_strs[graph.prompt_offset :])
    ax.text(
        MARGIN,
        layout.height - MARGIN / 2,
        title if title is not None else visible_token(prompt, 120),
        ha="left",
        va="top",
        fontsize=fs,
        fontstyle="italic",
        gid="tl_clt-title",
    )
    ax.text(
        MARGIN,
        MARGIN / 2,
        _caption(layout, errors, others, min_share, fs),
        ha="left",
        va="bottom",
        fontsize=fs * 0.75,
        color="#555555",
        gid="tl_clt-caption",
    )


def _ports(arrows: list[_Arrow]) -> dict[int, tuple[tuple[float, float], tuple[float, float]]]:
    """Where each arrow leaves and enters its boxes: on the facing edges (top/bottom, or the sides of
    boxes side by side), spread along each edge in the order of the other ends, so arrows do not
    converge on one point."""
    from collections import defaultdict

    edges: dict[tuple[int, str], list[tuple[float, int, str]]] = defaultdict(list)
    boxes = {}
    for a in arrows:
        s, t = a.source, a.target
        boxes[id(s)], boxes[id(t)] = s, t
        if abs(s.y - t.y) < (s.h + t.h) / 2:  # side by side
            left, right = (s, t) if s.x < t.x else (t, s)
            edges[(id(left), "right")].append((right.y, id(a), "source" if left is s else "target"))
            edges[(id(right), "left")].append((left.y, id(a), "source" if right is s else "target"))
        else:
            lower, upper = (s, t) if s.y < t.y else (t, s)
            edges[(id(lower), "top")].append((upper.x, id(a), "source" if lower is s else "target"))
            edges[(id(upper), "bottom")].append((lower.x, id(a), "source" if upper is s else "target"))
    ends: dict[int, dict[str, tuple[float, float]]] = defaultdict(dict)
    for (box_id, side), items in edges.items():
        b = boxes[box_id]
        items.sort()
        for k, (_, arrow_id, end) in enumerate(items):
            f = (k + 0.5) / len(items) - 0.5  # -0.5 .. 0.5 along the edge
            if side in ("top", "bottom"):
                xy = (b.x + 0.8 * b.w * f, b.y + (b.h / 2 if side == "top" else -b.h / 2))
            else:
                xy = (b.x + (b.w / 2 if side == "right" else -b.w / 2), b.y + 0.7 * b.h * f)
            ends[arrow_id][end] = xy
    return {k: (v["source"], v["target"]) for k, v in ends.items()}


BENDS = (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45)


def _bend(start, end, obstacles: list[_Box], arrow: _Arrow, page: tuple[float, float]) -> float:
    """The least curvature (matplotlib's arc3 `rad`) for which the arrow misses every box but its own
    two and stays on the page (x within `page`); straight when none does."""
    (x1, y1), (x2, y2) = start, end
    others = [b for b in obstacles if b is not arrow.source and b is not arrow.target]
    t = torch.linspace(0.02, 0.98, 60, dtype=torch.double)
    for rad in BENDS:
        cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
        xs = (1 - t) ** 2 * x1 + 2 * (1 - t) * t * cx + t**2 * x2
        ys = (1 - t) ** 2 * y1 + 2 * (1 - t) * t * cy + t**2 * y2
        hit = any(
            bool((((xs - b.x).abs() < b.w / 2 + 0.02) & ((ys - b.y).abs() < b.h / 2 + 0.02)).any())
            for b in others
        )
        if not hit and float(xs.min()) >= page[0] and float(xs.max()) <= page[1]:
            return rad
    return 0.0


def _draw_layer_labels(ax, layout: _Layout) -> None:
    n = layout.graph.n_layers
    step = max(1, int((0.8 * layout.fontsize / 72 * 1.6) // layout.row_h) + 1)
    for layer in range(0, n, step):
        ax.text(
            MARGIN,
            layout.y_of(layer),
            f"L{layer}",
            ha="left",
            va="center",
            fontsize=layout.fontsize * 0.8,
            color="#999999",
            gid="tl_clt-layer",
        )
        ax.axhline(layout.y_of(layer), color="#f0f0f0", lw=0.6, zorder=0)


def _caption(layout: _Layout, errors: str, others: str, min_share: float, fs: float) -> str:
    hidden = [w for w, flag in (("MLP errors", errors), ("ungrouped features", others)) if flag == "hide"]
    text = (
        "Arrows: summed direct effects between members (width ∝ |weight|, blue +, red −; arrows into "
        f"logits scaled apart from arrows into features; under {min_share:.0%} of the largest left out)."
    )
    if hidden:
        text += " Not drawn: " + " and ".join(hidden) + "."
    chars = max(40, int((layout.width - 2 * MARGIN) / (0.75 * fs / 72 * 0.55)))
    return "\n".join(textwrap.wrap(text, chars)[:2])
