"""Supernodes and candidate finders, on a hand-built graph whose sums can be checked by eye, and
on a real (pruned) graph of the tiny model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import PROMPT
from safetensors.torch import load_file

import tl_clt
from tl_clt import AttributionGraph, Intervention
from tl_clt.supernodes import (
    feature_output_tokens,
    features_at,
    group_graph,
    group_interventions,
    top_inputs,
    top_outputs,
)

# Node order: F0=(0,1,5) F1=(0,2,7) F2=(1,2,9) | errors E(l,p) at 3 + 3l + p | T0 T1 T2 | L20 L21
F0, F1, F2 = 0, 1, 2
E01, E02, E12 = 4, 5, 8
T1, T2 = 10, 11
L0, L1 = 12, 13
EDGES = {  # (source, target): weight
    (T1, F0): 2.0,
    (E01, F0): 0.5,
    (F0, F1): 1.0,
    (T2, F1): 3.0,
    (T1, F1): -1.0,
    (F0, F2): 0.25,
    (F1, F2): 2.0,
    (E02, F2): 0.75,
    (T2, F2): 1.0,
    (F2, L0): 4.0,
    (F1, L0): -2.5,
    (F0, L0): 0.5,
    (E12, L0): 1.0,
    (T2, L0): 0.5,
    (F2, L1): -1.0,
    (F1, L1): 1.5,
    (T2, L1): 2.0,
}


def hand_graph() -> AttributionGraph:
    adjacency = torch.zeros(14, 14)
    for (s, t), w in EDGES.items():
        adjacency[t, s] = w
    return AttributionGraph(
        tokens=torch.tensor([0, 10, 11]),
        token_strs=["<|endoftext|>", " president", " was"],
        active_features=torch.tensor([[0, 1, 5], [0, 2, 7], [1, 1, 3], [1, 2, 9]]),
        activation_values=torch.tensor([1.5, 2.0, 0.5, 3.0]),
        selected_features=torch.tensor([0, 1, 3]),
        logit_tokens=torch.tensor([20, 21]),
        logit_probabilities=torch.tensor([0.6, 0.3]),
        logit_token_strs=[" Obama", " Bush"],
        adjacency=adjacency,
        n_layers=2,
    )


def test_hand_graph_layout_is_as_intended():
    g = hand_graph()
    ids = g.node_ids()
    assert [ids[i] for i in (F0, F1, F2, E01, E02, E12, T1, T2, L0, L1)] == [
        "F:0:1:5",
        "F:0:2:7",
        "F:1:2:9",
        "E:0:1",
        "E:0:2",
        "E:1:2",
        "T:1",
        "T:2",
        "L:20",
        "L:21",
    ]


# ------------------------------------------------------------------------ grouping
def test_group_sums_member_edges_and_drops_internal_ones():
    g = hand_graph()
    H = g.group({"A": ["F:0:1:5", (0, 2, 7)]})
    node = H.nodes["A"]
    assert node["kind"] == "supernode" and node["members"] == ["F:0:1:5", "F:0:2:7"]
    assert node["activation"] == 1.5 + 2.0 and node["layer"] == 0 and node["pos"] is None
    assert node["positions"] == [1, 2] and node["n_members"] == 2
    assert "F:0:1:5" not in H and "F:0:2:7" not in H
    expected = {
        ("T:1", "A"): 2.0 - 1.0,
        ("E:0:1", "A"): 0.5,
        ("T:2", "A"): 3.0,
        ("A", "F:1:2:9"): 0.25 + 2.0,
        ("A", "L:20"): 0.5 - 2.5,
        ("A", "L:21"): 1.5,
    }
    for (u, v), w in expected.items():
        assert H[u][v]["weight"] == pytest.approx(w)
    assert H["T:1"]["A"]["n_edges"] == 2
    assert not H.has_edge("A", "A")  # F0 -> F1 lies inside the group
    # ungrouped nodes and edges are untouched
    G = g.to_networkx()
    for u, v, w in G.edges(data="weight"):
        if not {u, v} & {"F:0:1:5", "F:0:2:7"}:
            assert H[u][v]["weight"] == w
    assert H.nodes["F:1:2:9"] == G.nodes["F:1:2:9"]
    total = sum(w for *_, w in G.edges(data="weight"))
    assert sum(w for *_, w in H.edges(data="weight")) == pytest.approx(total - EDGES[(F0, F1)])


def test_group_several_groups_and_logits():
    g = hand_graph()
    H = group_graph(g, {"early": ["F:0:1:5", "F:0:2:7"], "out": ["L:20", "L:21"]})
    assert H["F:1:2:9"]["out"]["weight"] == pytest.approx(4.0 - 1.0)
    assert H["early"]["out"]["weight"] == pytest.approx(0.5 - 2.5 + 1.5)
    assert H["T:2"]["out"]["weight"] == pytest.approx(0.5 + 2.0)
    assert H.nodes["out"]["member_kinds"] == ["logit"] and H.nodes["out"]["activation"] is None
    assert sorted(H.nodes) == sorted(
        ["early", "out", "F:1:2:9", "E:0:1", "E:0:2", "E:1:1", "E:1:2", "T:0", "T:1", "T:2"]
    )


def test_group_errors_are_clear():
    g = hand_graph()
    with pytest.raises(KeyError, match="F:0:1:6"):
        g.group({"A": ["F:0:1:6"]})
    with pytest.raises(ValueError, match="two groups"):
        g.group({"A": ["F:0:1:5"], "B": [(0, 1, 5), "F:0:2:7"]})
    with pytest.raises(ValueError, match="also the id of an ungrouped node"):
        g.group({"T:1": ["F:0:1:5"]})
    with pytest.raises(ValueError, match="no members"):
        g.group({"A": []})
    with pytest.raises(ValueError, match="not a node id"):
        g.group({"A": ["F:0:1"]})
    with pytest.raises(KeyError):  # position 0 errors are not graph nodes
        g.group({"A": ["E:0:0"]})


@pytest.fixture(scope="module")
def real(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    graph = tl_clt.attribute(
        model, clt, PROMPT, max_n_logits=3, max_feature_nodes=30, batch_size=64, verbose=False
    )
    return model, graph


def test_group_works_on_pruned_graphs(real):
    _, graph = real
    pruned = graph.prune(node_threshold=0.9, edge_threshold=0.98)
    P = pruned.to_networkx()
    features = [n for n, d in P.nodes(data="kind") if d == "feature"]
    assert 4 <= len(features) < graph.n_features
    groups = {"g1": features[:2], "g2": features[2:4]}
    H = pruned.group(groups)
    owner = {m: name for name, ms in groups.items() for m in ms}
    expected: dict = {}
    for u, v, w in P.edges(data="weight"):
        key = (owner.get(u, u), owner.get(v, v))
        if key[0] != key[1] or u not in owner:
            expected[key] = expected.get(key, 0.0) + w
    assert {(u, v): w for u, v, w in H.edges(data="weight")} == pytest.approx(expected)
    gone = next(n for n in graph.to_networkx() if n not in P and n.startswith("F:"))
    with pytest.raises(KeyError, match="pruned away"):
        pruned.group({"x": [gone]})


# ------------------------------------------------------------------------ candidate finders
def test_features_at():
    g = hand_graph()
    assert [c.node for c in features_at(g, "president")] == ["F:0:1:5"]
    found = features_at(g, 2)
    assert [(c.node, c.score) for c in found] == [("F:1:2:9", 3.0), ("F:0:2:7", 2.0)]
    assert found[0][2:] == (1, 2, 9)
    assert [c.node for c in features_at(g, [1, 2], k=2)] == ["F:1:2:9", "F:0:2:7"]
    assert [c.node for c in features_at(g, -1)] == ["F:1:2:9", "F:0:2:7"]
    dropped = replace(g, node_mask=torch.arange(14) != F1)  # as if F1 had been pruned
    assert [c.node for c in features_at(dropped, 2)] == ["F:1:2:9"]
    acts = torch.zeros(2, 3, 16)
    acts[tuple(g.active_features.T)] = g.activation_values
    found = features_at(acts, " president", token_strs=g.token_strs)
    assert [(c.node, c.score) for c in found] == [("F:0:1:5", 1.5), ("F:1:1:3", 0.5)]
    with pytest.raises(ValueError, match="No token 'senate'"):
        features_at(g, "senate")
    with pytest.raises(ValueError, match="token_strs"):
        features_at(acts, "president")


def test_top_inputs_and_outputs():
    g = hand_graph()
    assert [(c.node, c.score) for c in top_inputs(g, "F:1:2:9")] == [("F:0:2:7", 2.0), ("F:0:1:5", 0.25)]
    assert [c.node for c in top_inputs(g, (1, 2, 9), kinds=None)] == ["F:0:2:7", "T:2", "E:0:2", "F:0:1:5"]
    assert [(c.node, c.score) for c in top_outputs(g, (0, 2, 7), kinds=None)] == [
        ("L:20", -2.5),
        ("F:1:2:9", 2.0),
        ("L:21", 1.5),
    ]
    assert [c.node for c in top_outputs(g, "F:0:1:5", k=1, kinds=("logit",))] == ["L:20"]
    assert [c.node for c in top_inputs(g, "L:21", k=2)] == ["F:0:2:7", "F:1:2:9"]
    G = g.to_networkx()
    for node in ("F:0:1:5", "F:1:2:9", "L:20"):
        assert top_inputs(g, node, kinds=None) == top_inputs(G, node, kinds=None)
        assert top_outputs(g, node, kinds=None) == top_outputs(G, node, kinds=None)
    H = g.group({"A": ["F:0:1:5", "F:0:2:7"]})
    assert [(c.node, c.score) for c in top_inputs(H, "A", kinds=None)] == [
        ("T:2", 3.0),
        ("T:1", 1.0),
        ("E:0:1", 0.5),
    ]
    assert [c.node for c in top_outputs(H, "A", kinds=None)] == ["F:1:2:9", "L:20", "L:21"]
    assert [c.node for c in top_inputs(H, "F:1:2:9", kinds=("supernode",))] == ["A"]
    with pytest.raises(KeyError):
        top_inputs(g, "F:0:0:1")


@pytest.mark.parametrize("read", ["sum", "last", 1])
def test_feature_output_tokens(real, clt_dir, clt, read):
    model, _ = real
    layer, feature = 0, 17
    W_dec = load_file(str(clt_dir / f"W_dec_{layer}.safetensors"))[f"W_dec_{layer}"].float()
    rows = W_dec[feature]  # [n_layers - layer, d_model]
    direction = {"sum": rows.sum(0), "last": rows[-1], 1: rows[1 - layer]}[read]
    with torch.no_grad():
        logits = (direction * model.ln_final.w) @ model.W_U
    logits = logits - logits.mean()
    for largest in (True, False):
        got = feature_output_tokens(model, clt, layer, feature, k=5, read=read, largest=largest)
        want = logits.topk(5, largest=largest)
        assert [t.token_id for t in got] == want.indices.tolist()
        torch.testing.assert_close(torch.tensor([t.score for t in got]), want.values, atol=1e-5, rtol=1e-4)
        assert got[0].token == model.tokenizer.decode([got[0].token_id])
    with pytest.raises(ValueError, match="read must be"):
        feature_output_tokens(model, clt, 2, feature, read=1)


# ------------------------------------------------------------------------ steering groups
def test_group_interventions_steer_every_member(real, clt):
    model, graph = real
    members = [f"F:{la}:{p}:{f}" for la, p, f in graph.feature_keys[:3].tolist()]
    acts = graph.activation_values[graph.selected_features[:3]].tolist()
    ivs = group_interventions(graph, members, 2.0)
    assert ivs == [Intervention(*graph.feature_keys[i].tolist(), 2.0 * acts[i]) for i in range(3)]
    ablated = tl_clt.steer(model, clt, PROMPT, group_interventions(graph, members, 0.0))
    torch.testing.assert_close(ablated, tl_clt.steer(model, clt, PROMPT, tl_clt.ablate(members)))
    clean = tl_clt.steer(model, clt, PROMPT, [])
    assert (ablated - clean).abs().max() > 1e-3
    with pytest.raises(ValueError, match="Only features can be steered"):
        group_interventions(graph, members + ["E:0:1"], 0.0)


def test_contrast_features_finds_what_the_change_switches_off(model, clt):
    import tl_clt

    prompt = "Fact: The president of the United States in 2010 was"
    tokens = tl_clt.to_tokens(model, prompt)
    other = tokens.clone()
    changed = len(tokens) - 4
    other[changed] = (other[changed] + 1) % model.cfg.d_vocab  # one token swapped, positions line up
    graph = tl_clt.attribute(model, clt, tokens, verbose=False)
    found = tl_clt.contrast_features(model, clt, graph, other, min_drop=0.5)
    a = tl_clt.feature_activations(model, clt, tokens).to_dense()
    b = tl_clt.feature_activations(model, clt, other).to_dense()
    expected = []
    for la, p, f in graph.feature_keys.tolist():
        if a[la, p, f] - b[la, p, f] >= 0.5 * a[la, p, f]:
            expected.append((float(a[la, p, f] - b[la, p, f]), f"F:{la}:{p}:{f}"))
    assert found, "changing a token must switch some features off"
    assert [c.node for c in found] == [n for _, n in sorted(expected, key=lambda x: -x[0])]
    assert all(c.pos >= changed for c in found), "nothing before the change can depend on it (causal)"
    with pytest.raises(ValueError, match="positions line up"):
        tl_clt.contrast_features(model, clt, graph, tokens[:-1])
