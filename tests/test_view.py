"""graph.show(): the data behind the interactive page, that it is self-contained, and that it displays
in IPython. The page itself is driven in headless Chromium by tests/test_view_browser.py."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from graph_factory import make_graph

import tl_clt
from tl_clt import view

pytest.importorskip("plotly")

FEATURES = [(0, 1, 3), (0, 2, 5), (0, 2, 6), (1, 2, 4), (1, 3, 1), (1, 4, 2), (2, 3, 8), (2, 4, 9)]


@pytest.fixture(scope="module")
def pruned():
    return make_graph(FEATURES, n_layers=3, n_pos=5, density=0.8).prune(0.9, 0.98)


def test_every_node_of_the_pruned_graph_is_drawn_with_its_card(pruned):
    G = pruned.to_networkx()
    data = view.view_data(pruned)
    assert [n["id"] for n in data["nodes"]] == list(G.nodes)
    for n in data["nodes"]:
        d = G.nodes[n["id"]]
        assert n["id"] in n["hover"] and d["kind"] in n["hover"]
        if d["kind"] == "feature":
            assert f"activation {d['activation']:.4g}" in n["hover"]
            assert f"influence {d['influence']:.4g}" in n["hover"]
    # edges: all of the graph's, each node's 3 strongest inputs drawn before any click
    assert len(data["edges"]) == G.number_of_edges()
    ids = [n["id"] for n in data["nodes"]]
    for node in G:
        incoming = sorted((abs(w) for _, _, w in G.in_edges(node, data="weight")), reverse=True)
        drawn = [abs(e["w"]) for e in data["edges"] if e["shown"] and ids[e["t"]] == node]
        shown = sorted(drawn, reverse=True)
        assert shown == pytest.approx(incoming[:3])


def test_slider_keeps_the_nodes_carrying_that_share_of_influence(pruned):
    data = view.view_data(pruned)
    G = pruned.to_networkx()
    kinds = ("feature", "error")
    inner = sorted((abs(d["influence"]) for _, d in G.nodes(data=True) if d["kind"] in kinds), reverse=True)
    total = sum(inner)
    for step in data["steps"]:
        want = sum(1 for k in range(len(inner)) if sum(inner[: k + 1]) / total <= step + 1e-9)
        got = sum(1 for n in data["nodes"] if not n["always"] and n["cum"] <= step + 1e-9)
        assert got == want, step
    assert data["steps"][-1] == 1.0


def test_cards_have_top_tokens_and_dashboards_when_given(toy):
    """Top tokens come from feature_output_tokens; a CLT with dashboards adds the card's label and
    top examples (read through `clt.dashboards[layer, feature]`, whatever object that is)."""
    g = toy.graph.prune(0.5, 0.9)
    node = next(n for n, d in g.to_networkx().nodes(data=True) if d["kind"] == "feature")
    layer, feature = int(node.split(":")[1]), int(node.split(":")[3])
    want = [t.token for t in tl_clt.feature_output_tokens(toy.model, toy.clt, layer, feature, k=3)]

    class Dashboards:
        def __getitem__(self, key):
            if key != (layer, feature):
                raise KeyError(key)
            example = SimpleNamespace(act=4.5, text=lambda width: "the «president» of")
            html = lambda: "<b>CARD</b>"  # noqa: E731
            return SimpleNamespace(label="office words", top_examples=[example], _repr_html_=html)

    clt = SimpleNamespace(dashboards=Dashboards())
    data = view.view_data(g, clt=clt, top_tokens=3)
    (card,) = [n for n in data["nodes"] if n["id"] == node]
    assert "office words" in card["hover"] and "the «president» of" in card["hover"]
    assert "<b>CARD</b>" in card["card"]
    data = view.view_data(g, model=toy.model, clt=toy.clt, top_tokens=3)
    (card,) = [n for n in data["nodes"] if n["id"] == node]
    assert "top tokens: " + " ".join(repr(t) for t in want).replace("'", "&#x27;") in card["hover"]


def test_the_page_is_self_contained_and_displays_in_ipython(pruned, tmp_path):
    from IPython.core.formatters import DisplayFormatter

    v = pruned.show()
    assert v.n_nodes == pruned.to_networkx().number_of_nodes()
    # no outside script or stylesheet: plotly.js is inlined
    assert not re.search(r"<script[^>]+src=", v.page) and "<link" not in v.page
    assert "Plotly.newPlot" in v.page and len(v.page) > 1_000_000
    path = v.save(tmp_path / "view.html")
    assert path.read_text(encoding="utf-8") == v.page
    data, _ = DisplayFormatter().format(v)
    assert data["text/html"].startswith("<iframe srcdoc=") and "GraphView(" in data["text/plain"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        v.save(tmp_path / "missing" / "view.html")
