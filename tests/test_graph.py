"""Influence, pruning and scores on small hand-made graphs whose answers are derived by hand."""

from __future__ import annotations

import pytest
import torch

from tl_clt import AttributionGraph


def make_graph(edges: dict[tuple[str, str], float], n_features=2, n_pos=2, probs=(1.0,)):
    """A 1-layer graph. Node names: F0, F1 (features at pos 1), E0/E1 (errors at pos 0/1),
    T0/T1 (tokens), L0.. (logits). edges: (source, target) -> weight."""
    names = [f"F{i}" for i in range(n_features)] + [f"E{p}" for p in range(n_pos)]
    names += [f"T{p}" for p in range(n_pos)] + [f"L{i}" for i in range(len(probs))]
    A = torch.zeros(len(names), len(names))
    for (s, t), w in edges.items():
        A[names.index(t), names.index(s)] = w
    graph = AttributionGraph(
        tokens=torch.arange(n_pos),
        token_strs=[f"t{p}" for p in range(n_pos)],
        active_features=torch.tensor([[0, 1, i] for i in range(n_features)]),
        activation_values=torch.ones(n_features),
        selected_features=torch.arange(n_features),
        logit_tokens=torch.arange(len(probs)) + 100,
        logit_probabilities=torch.tensor(probs),
        logit_token_strs=[f"l{i}" for i in range(len(probs))],
        adjacency=A,
        n_layers=1,
    )
    return graph, names


# Graph used below. Row-normalised |A|: L0 <- F0 .5, F1 .25, E1 .25; F0 <- T1 1; F1 <- T1 1.
# Influence on L0 (prob 1): F0 .5, F1 .25, E1 .25, T1 = .5 + .25 = .75.
EDGES = {
    ("F0", "L0"): 2.0,
    ("F1", "L0"): -1.0,
    ("E1", "L0"): 1.0,
    ("T1", "F0"): 3.0,
    ("T1", "F1"): 0.5,
}


def test_influence_by_hand():
    graph, names = make_graph(EDGES)
    infl = dict(zip(names, graph.node_influence().tolist()))
    assert infl == pytest.approx({"F0": 0.5, "F1": 0.25, "E0": 0, "E1": 0.25, "T0": 0, "T1": 0.75, "L0": 0})


def test_scores_by_hand():
    graph, _ = make_graph(EDGES)
    s = graph.scores()
    # replacement: token influence / (token + error influence) = .75 / (.75 + .25)
    assert s.replacement == pytest.approx(0.75)
    # completeness: sum (1 - error share of inputs) * (influence + logit weight) / sum (influence + w)
    # only L0 has error input (share .25): (.5 + .25 + .25 + .75 + .75 * 1) / (.5 + .25 + .25 + .75 + 1)
    assert s.completeness == pytest.approx(2.5 / 2.75)


def test_no_errors_scores_one():
    graph, _ = make_graph({("F0", "L0"): 1.0, ("T1", "F0"): 2.0})
    assert graph.scores() == pytest.approx((1.0, 1.0))


def test_node_pruning_by_hand():
    graph, names = make_graph(EDGES)
    # ranked influences: T1 .75, F0 .5, F1 .25, E1 .25 (total 1.75); cumulative .43, .71, .86, 1.
    # node_threshold .7 is reached at F0, so F1 and E1 go; tokens and the logit always stay.
    P = graph.prune(node_threshold=0.7, edge_threshold=1.0)
    G = P.to_networkx()
    assert set(G.nodes) == {"F:0:1:0", "T:0", "T:1", "L:100"}
    assert {(u, v): w for u, v, w in G.edges(data="weight")} == {
        ("T:1", "F:0:1:0"): 3.0,
        ("F:0:1:0", "L:100"): 2.0,
    }
    assert G.nodes["F:0:1:0"]["influence"] == pytest.approx(0.5)


def test_edge_pruning_removes_dangling_nodes():
    edges = {("F0", "L0"): 10.0, ("F1", "L0"): 0.01, ("T1", "F0"): 1.0, ("T1", "F1"): 1.0}
    graph, _ = make_graph(edges)
    # edge scores: L0<-F0 .999, F0<-T1 .999, L0<-F1 .001, F1<-T1 .001 (of 2): .9 keeps the big two,
    # F1 is then left without an outgoing edge and removed, taking T1 -> F1 with it.
    P = graph.prune(node_threshold=1.0, edge_threshold=0.9)
    G = P.to_networkx()
    assert "F:0:1:1" not in G and "F:0:1:0" in G
    assert set(G.edges) == {("T:1", "F:0:1:0"), ("F:0:1:0", "L:100")}
    full = graph.to_networkx()
    assert set(G.nodes) <= set(full.nodes) and set(G.edges) <= set(full.edges)


def test_everything_kept_at_threshold_one():
    graph, _ = make_graph(EDGES)
    G = graph.prune(1.0, 1.0).to_networkx()
    assert set(G.edges) == set(graph.to_networkx().edges)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_thresholds_outside_unit_interval(bad):
    graph, _ = make_graph(EDGES)
    with pytest.raises(ValueError, match="node_threshold must be in"):
        graph.prune(node_threshold=bad)
    with pytest.raises(ValueError, match="edge_threshold must be in"):
        graph.prune(edge_threshold=bad)


def test_save_load_roundtrip(tmp_path):
    graph, _ = make_graph(EDGES)
    P = graph.prune(0.7, 1.0)
    P.save(tmp_path / "g.pt")
    Q = AttributionGraph.load(tmp_path / "g.pt")
    assert torch.equal(Q.adjacency, P.adjacency) and torch.equal(Q.node_mask, P.node_mask)
    assert list(Q.to_networkx().edges(data=True)) == list(P.to_networkx().edges(data=True))


def test_load_rejects_other_files(tmp_path):
    torch.save({"format": "something/0", "graph": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tl_clt.AttributionGraph/2"):
        AttributionGraph.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable"):
        AttributionGraph.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        AttributionGraph.load(tmp_path / "absent.pt")


def test_nan_edges_are_named_not_called_a_cycle():
    graph, _ = make_graph(EDGES)
    graph.adjacency[0, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        graph.prune()
