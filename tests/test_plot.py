"""plot_graph: a readable matplotlib picture of pruned and grouped graphs."""

from __future__ import annotations

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
    assert len(edges) == 1 and len(edges[0].get_segments()) == G.number_of_edges()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["<|endoftext|>", " t1", " t2", " t3", " t4"]


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


def test_grouped_graph_places_supernodes_at_member_means(pruned, tmp_path):
    G = pruned.to_networkx()
    groups = {"early": ["F:0:1:3", "F:1:4:2"], "late": ["F:2:3:8", "F:2:4:9", "F:1:3:1"]}
    H = _grouped(G, groups)
    fig = plot.plot_graph(H, tmp_path / "grouped.svg")
    assert (tmp_path / "grouped.svg").read_text().lstrip().startswith("<?xml")
    assert plot.node_marker_count(fig) == H.number_of_nodes()
    (supers,) = _markers(fig, "supernode")
    xy, centers, _ = plot.node_positions(H, 3, 5)
    got = {tuple(p) for p in supers.get_offsets().tolist()}
    assert got == {xy["early"], xy["late"]}
    assert xy["early"] == pytest.approx((plot._column_x(2.5, centers), 0.5 + 1))
    assert xy["late"][1] == pytest.approx((2 + 2 + 1) / 3 + 1)
    assert xy["late"][0] == pytest.approx(plot._column_x(10 / 3, centers))
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"early", "late"} <= texts


def test_supernode_with_only_layer_and_pos_lists():
    H = nx.DiGraph(prompt_tokens=["a", "b", "c"])
    H.add_node("T:0", kind="token", layer=None, pos=0, token="a")
    H.add_node("g", kind="supernode", members=[], layer=[0, 2], pos=[1, 2], influence=0.3)
    H.add_edge("T:0", "g", weight=0.5)
    xy, centers, _ = plot.node_positions(H, 3, 3)
    assert xy["g"] == pytest.approx((plot._column_x(1.5, centers), 2.0))


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
