"""plot_circuit: the seed-style diagram. Arrow weights are checked against `group_graph` (summed edges
computed by other code), the layout with matplotlib's renderer (no two labels or boxes touch)."""

from __future__ import annotations

import io

import pytest
from graph_factory import make_graph

import tl_clt
from tl_clt import circuit

pytest.importorskip("matplotlib")

FEATURES = [(0, 1, 3), (0, 2, 5), (0, 2, 6), (0, 3, 7), (1, 2, 4), (1, 3, 1), (1, 4, 2), (2, 3, 8), (2, 4, 9)]
GROUPS = {"early": ["F:0:1:3", "F:0:2:5", "F:0:2:6"], "middle": ["F:1:2:4", (1, 3, 1)], "late": ["F:2:4:9"]}


def _artists(fig, prefix):
    ax = fig.axes[0]
    return [a for a in ax.texts + ax.patches if (a.get_gid() or "").startswith(prefix)]


def _arrows(fig) -> dict[tuple[str, str], float]:
    found = _artists(fig, circuit.ARROW_GID)
    return {tuple(a.get_gid().split(":", 1)[1].split("->")): a.tl_clt_weight for a in found}


def _no_overlaps(fig) -> int:
    """Every text and every box of the figure, measured by the renderer: none touches another."""
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    texts = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    boxes = [p.get_window_extent(renderer) for p in ax.patches if p.get_gid() is None]  # boxes, not arrows
    for group in (texts, boxes):
        for i, a in enumerate(group):
            for b in group[:i]:
                assert not a.overlaps(b), (a, b)
    return len(texts)


def test_arrows_carry_the_summed_edges_of_their_members():
    g = make_graph(FEATURES, n_layers=3, n_pos=5, density=0.9)
    fig = tl_clt.plot_circuit(g, GROUPS, min_share=0.0)
    H = g.group(GROUPS)
    got = _arrows(fig)
    want = {}
    for u, v, w in H.edges(data="weight"):
        if H.nodes[v]["kind"] == "supernode" and H.nodes[u]["kind"] in ("supernode", "token"):
            want[(u, v)] = w
        elif H.nodes[u]["kind"] == "supernode" and H.nodes[v]["kind"] == "logit":
            want[(u, f"L:{g.logit_tokens.tolist().index(H.nodes[v]['token_id'])}")] = w
    assert set(got) == {k for k, w in want.items() if w != 0}
    for key, w in got.items():
        assert w == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_small_arrows_are_left_out_by_share_of_the_largest_of_their_kind():
    g = make_graph(FEATURES, n_layers=3, n_pos=5, density=0.9)
    every = _arrows(tl_clt.plot_circuit(g, GROUPS, min_share=0.0))
    shown = _arrows(tl_clt.plot_circuit(g, GROUPS, min_share=0.3))
    for into_logits in (True, False):
        kind = {k: w for k, w in every.items() if k[1].startswith("L:") == into_logits}
        top = max(abs(w) for w in kind.values())
        assert {k for k in kind if k in shown} == {k for k, w in kind.items() if abs(w) >= 0.3 * top}


def test_errors_are_hidden_by_default_and_can_be_one_box():
    g = make_graph(FEATURES, n_layers=3, n_pos=5, density=0.9)
    names = {t.get_gid().split(":", 1)[1] for t in _artists(tl_clt.plot_circuit(g, GROUPS), circuit.BOX_GID)}
    assert names == set(GROUPS)
    fig = tl_clt.plot_circuit(g, GROUPS, errors="aggregate", others="aggregate", min_share=0.0)
    names = {t.get_gid().split(":", 1)[1] for t in _artists(fig, circuit.BOX_GID) if hasattr(t, "get_text")}
    assert names == set(GROUPS) | {"MLP errors", "other features"}
    errors = [g.error_index(layer, pos) for layer in range(3) for pos in range(1, 5)]
    logit = g.logit_index(0)
    want = float(g.adjacency[logit, errors].sum())
    assert _arrows(fig)[("MLP errors", "L:0")] == pytest.approx(want, rel=1e-5)


def test_boxes_labels_and_tokens_never_touch_in_a_crowded_circuit():
    """Eight groups whose members share one cell: the layout pushes them apart."""
    feats = [(layer, 4, f) for layer in range(3) for f in range(8)]
    g = make_graph(feats, n_layers=3, n_pos=5, density=0.8)
    groups = {f"group number {i}": [f"F:{i % 3}:4:{i}"] for i in range(8)}
    fig = tl_clt.plot_circuit(g, groups)
    assert _no_overlaps(fig) >= 8 + 5 + 1
    fig.savefig(io.BytesIO(), dpi=220)  # at another dpi, measured again
    _no_overlaps(fig)


def test_bad_supernodes_raise_clear_errors():
    g = make_graph(FEATURES, n_layers=3, n_pos=5)
    with pytest.raises(KeyError, match="not a node of this graph"):
        tl_clt.plot_circuit(g, {"a": ["F:0:1:99"]})
    with pytest.raises(ValueError, match="in two supernodes"):
        tl_clt.plot_circuit(g, {"a": ["F:0:1:3"], "b": ["F:0:1:3"]})
    with pytest.raises(ValueError, match="token node"):
        tl_clt.plot_circuit(g, {"a": ["T:1"]})
    with pytest.raises(ValueError, match="No supernodes"):
        tl_clt.plot_circuit(g, {})
    with pytest.raises(ValueError, match="'hide' or 'aggregate'"):
        tl_clt.plot_circuit(g, GROUPS, errors="show")


def test_the_story_diagram_on_the_toy_world(toy, tmp_path):
    """The seed's picture: four boxes, the token row with a visible space, the top logit above, arrows
    from ' president' into President and from the year's digits into Year ~2010, and the group with the
    largest summed direct edge into ' Barack' (recomputed from the adjacency) the strongest arrow into it."""
    g, groups = toy.graph, toy.groups
    fig = g.plot(tmp_path / "circuit.png", supernodes=groups)
    assert (tmp_path / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    _no_overlaps(fig)
    boxes = {t.get_gid().split(":", 1)[1] for t in _artists(fig, circuit.BOX_GID) if hasattr(t, "get_text")}
    assert boxes == set(groups)
    tokens = [t.get_text() for t in _artists(fig, circuit.TOKEN_GID) if hasattr(t, "get_text")]
    assert tokens[g.token_strs.index(" ")] == "␣" and all(t.strip() for t in tokens)
    logit = [t.get_text() for t in _artists(fig, circuit.LOGIT_GID) if hasattr(t, "get_text")]
    assert logit[0].startswith(" Barack")
    arrows = _arrows(fig)
    president = g.token_strs.index(" president")
    assert arrows[(f"T:{president}", "President")] > 0
    assert any(arrows.get((f"T:{p}", "Year ~2010"), 0) > 0 for p in range(president, g.n_pos))
    into_logit = {s: w for (s, t), w in arrows.items() if t == "L:0"}
    # each group's arrow into the logit is its members' summed direct edges, read here from the adjacency
    logit_row = g.adjacency[g.n_nodes - g.n_logits]
    direct = {
        name: float(sum(logit_row[g.feature_index(*map(int, m.split(":")[1:]))] for m in members))
        for name, members in groups.items()
    }
    strongest = max(direct, key=lambda s: abs(direct[s]))
    assert max(into_logit, key=lambda s: abs(into_logit[s])) == strongest
    assert into_logit[strongest] == pytest.approx(direct[strongest], rel=1e-4)
    assert into_logit["Say a political figure"] > 0
    # each box sits in the layer band of its members
    ax = fig.axes[0]
    for name, members in groups.items():
        layers = [int(m.split(":")[1]) for m in members]
        (text,) = [t for t in ax.texts if t.get_gid() == f"{circuit.BOX_GID}:{name}"]
        assert f"{len(members)} nodes" in text.get_text()
        assert f"L{min(layers)}" in text.get_text()
