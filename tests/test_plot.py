"""plot_graph: a readable matplotlib picture of pruned and grouped graphs."""

from __future__ import annotations

import math
import sys

import networkx as nx
import pytest
from graph_factory import make_graph

import tl_clt
from tl_clt import plot

pytest.importorskip("matplotlib")

FEATURES = [
    (0, 1, 3),
    (0, 2, 5),
    (0, 2, 6),
    (0, 2, 7),
    (0, 2, 8),
    (0, 2, 9),
    (0, 2, 10),
    (0, 2, 11),
    (1, 2, 4),
    (1, 3, 1),
    (1, 4, 2),
    (2, 3, 8),
    (2, 4, 9),
    (2, 4, 12),
]


@pytest.fixture(scope="module")
def pruned():
    return make_graph(FEATURES, n_layers=3, n_pos=5, density=0.7).prune(1.0, 1.0)


def _grouped(G: nx.DiGraph, groups: dict[str, list[str]]) -> nx.DiGraph:
    """Members merged into kind="supernode" nodes, layer/pos None or lists, as grouping does."""
    owner = {m: name for name, members in groups.items() for m in members}
    H = nx.DiGraph(**G.graph)
    H.add_nodes_from((n, d) for n, d in G.nodes(data=True) if n not in owner)
    for name, members in groups.items():
        layers = sorted({G.nodes[m]["layer"] for m in members})
        H.add_node(
            name,
            kind="supernode",
            members=members,
            layer=None,
            pos=None,
            layers=layers,
            influence=sum(G.nodes[m]["influence"] for m in members),
        )
    for u, v, w in G.edges(data="weight"):
        su, sv = owner.get(u, u), owner.get(v, v)
        if su != sv:
            H.add_edge(su, sv, weight=w + (H[su][sv]["weight"] if H.has_edge(su, sv) else 0.0))
    return H


def _markers(fig, kind):
    return [c for c in fig.axes[0].collections if c.get_gid() == f"{plot.NODE_GID}-{kind}"]


def test_png_has_one_marker_per_node(pruned, tmp_path):
    G = pruned.to_networkx()
    assert 20 <= G.number_of_nodes() <= 200
    fig = pruned.plot(tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert plot.node_marker_count(fig) == G.number_of_nodes()
    for kind in ("feature", "error", "token", "logit"):
        want = sum(1 for _, d in G.nodes(data=True) if d["kind"] == kind)
        got = sum(len(c.get_offsets()) for c in _markers(fig, kind))
        assert got == want, kind
    edges = [c for c in fig.axes[0].collections if c.get_gid() == "tl_clt-edges"]
    want = sum(min(3, sum(1 for _, _, w in G.in_edges(n, data="weight") if w)) for n in G)  # 3 per node
    assert len(edges) == 1 and len(edges[0].get_segments()) == want < G.number_of_edges()
    assert f"{want} edges (the strongest of {G.number_of_edges()})" in fig.axes[0].get_title()
    every = pruned.plot(max_in_edges=None, max_edges=None)
    (lines,) = [c for c in every.axes[0].collections if c.get_gid() == "tl_clt-edges"]
    assert len(lines.get_segments()) == G.number_of_edges()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["<|endoftext|>", " t1", " t2", " t3", " t4"]


def test_strongest_edges_keeps_each_nodes_largest_inputs(pruned):
    G = pruned.to_networkx()
    kept = plot.strongest_edges(G, 2)
    for node in G:
        incoming = sorted((abs(w) for _, _, w in G.in_edges(node, data="weight") if w), reverse=True)
        got = sorted((abs(w) for _, v, w in kept if v == node), reverse=True)
        assert got == incoming[:2], node
    assert [abs(w) for *_, w in kept] == sorted(abs(w) for *_, w in kept)  # weakest first (drawn under)


def test_nodes_sharing_a_cell_are_spread(pruned):
    G = pruned.to_networkx()
    xy, centers, widths = plot.node_positions(G, 3, 5)
    assert len(set(xy.values())) == len(xy)
    cell = [n for n, d in G.nodes(data=True) if d.get("layer") == 0 and d["pos"] == 2]
    assert len(cell) >= 7
    xs = [xy[n][0] for n in cell]
    assert max(xs) - min(xs) > 0.5, "a crowded cell should get a wider column"
    assert widths[2] > widths[0]
    rows = {round(xy[n][1] - 1) for n in cell}
    assert rows == {0}, "spreading stays inside the layer's band"
    assert [xy[f"L:{t}"][1] for t in (200, 201)] == [4, 4]  # logits on top (n_layers + 1)
    assert xy["T:0"][1] == 0  # tokens at the bottom


def test_grouped_graph_places_supernodes_in_the_cell_nearest_their_members(pruned, tmp_path):
    G = pruned.to_networkx()
    groups = {"early": ["F:0:1:3", "F:1:4:2"], "late": ["F:2:3:8", "F:2:4:9", "F:1:3:1"]}
    H = _grouped(G, groups)
    fig = plot.plot_graph(H, tmp_path / "grouped.svg")
    assert (tmp_path / "grouped.svg").read_text().lstrip().startswith("<?xml")
    assert plot.node_marker_count(fig) == H.number_of_nodes()
    (supers,) = _markers(fig, "supernode")
    xy, centers, widths = plot.node_positions(H, 3, 5)
    got = {tuple(p) for p in supers.get_offsets().tolist()}
    assert got == {xy["early"], xy["late"]}
    # members' mean: early (row 1.5, pos 2.5) -> cell (2, 3); late (row 2.67, pos 3.33) -> cell (3, 3)
    for name, row in (("early", 2), ("late", 3)):
        x, y = xy[name]
        assert abs(y - row) < 0.4 and abs(x - centers[3]) < widths[3] / 2, name
    # a supernode shares its cell's grid: no marker of another node at its place
    others = [p for n, p in xy.items() if n not in ("early", "late")]
    for name in ("early", "late"):
        assert min(math.dist(xy[name], p) for p in others) > 0.1
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"early", "late"} <= texts


def test_supernode_with_only_layer_and_pos_lists():
    H = nx.DiGraph(prompt_tokens=["a", "b", "c"])
    H.add_node("T:0", kind="token", layer=None, pos=0, token="a")
    H.add_node("g", kind="supernode", members=[], layer=[0, 2], pos=[1, 2], influence=0.3)
    H.add_edge("T:0", "g", weight=0.5)
    xy, centers, _ = plot.node_positions(H, 3, 3)
    assert xy["g"] == pytest.approx((centers[2], 2.0))  # mean (layer 1, pos 1.5) -> cell (row 2, pos 2)


def test_unpruned_graph_input_and_bad_inputs(tmp_path):
    g = make_graph(FEATURES, density=0.7)
    fig = tl_clt.plot_graph(g, node_threshold=0.5, edge_threshold=0.9)
    assert plot.node_marker_count(fig) == g.prune(0.5, 0.9).to_networkx().number_of_nodes()
    shallow = make_graph([(0, 1, 3), (1, 2, 4), (1, 3, 5)], n_layers=5, density=1.0)
    labels = [t.get_text() for t in shallow.plot().axes[0].get_yticklabels()]
    assert labels == ["Emb", "L0", "L1", "L2", "L3", "L4", "Logit"]
    with pytest.raises(TypeError, match="AttributionGraph or an nx.DiGraph"):
        tl_clt.plot_graph({"nodes": []})
    with pytest.raises(ValueError, match="no nodes"):
        tl_clt.plot_graph(nx.DiGraph())


def test_missing_matplotlib_gives_a_clear_error(pruned, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"tl-clt\[viz\]"):
        pruned.plot()


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[:i]) if a.overlaps(b)]


def test_feature_labels_never_run_together():
    """A crowded graph: every label the renderer draws is clear of every other label and of the tick
    labels; those with no room are left out and counted in the title."""
    crowded = [(layer, 2, f) for layer in range(3) for f in range(24)] + [(2, 4, f) for f in range(20)]
    g = make_graph(crowded, n_layers=3, n_pos=5, density=0.5).prune(1.0, 1.0)
    fig = g.plot(label_features=True)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_visible()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert len(labels) > 20
    assert _overlaps(boxes) == []
    assert not any(b.overlaps(t) for b in boxes for t in ticks)
    hidden = sum(not t.get_visible() for t in ax.texts)
    n_features = sum(d["kind"] == "feature" for _, d in g.to_networkx().nodes(data=True))
    assert len(labels) + hidden == n_features + g.n_logits
    if hidden:
        assert f"{hidden} labels left out" in ax.get_title()
    # the same labels written in a PNG at another dpi stay apart: the check holds for the file too
    fig.savefig(__import__("io").BytesIO(), dpi=90)
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
    assert _overlaps(boxes) == []


def test_space_and_newline_tokens_are_visible():
    g = make_graph(FEATURES, n_layers=3, n_pos=5, density=0.7)
    g.token_strs[2], g.token_strs[3] = " ", "\n"
    labels = [t.get_text() for t in g.plot().axes[0].get_xticklabels()]
    assert labels[2] == "␣" and labels[3] == "⏎"


def test_figures_display_in_ipython_without_magic(pruned):
    """IPython's display formatter (what Jupyter calls on a cell's value) gives one PNG, with no
    pyplot figure left to be shown a second time by the inline backend."""
    from IPython.core.formatters import DisplayFormatter
    from matplotlib import pyplot as plt

    before = plt.get_fignums()
    fig = pruned.plot()
    data, _ = DisplayFormatter().format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert "Figure size" in data["text/plain"]
    assert plt.get_fignums() == before
