"""Node ids: every spelling a user meets names the same node; the JSON ids are the export's own."""

from __future__ import annotations

import pytest
import torch

import tl_clt
from tests.graph_factory import make_graph
from tl_clt.export import graph_to_dict
from tl_clt.nodes import Node, feature_key, from_json_id, node_id, node_kind, parse_node, to_json_id

FEATURES = [(0, 1, 4), (1, 2, 7), (2, 3, 1), (2, 4, 9)]


@pytest.fixture(scope="module")
def graph():
    return make_graph(FEATURES, n_layers=3, n_pos=5)


def test_every_spelling_of_a_feature_is_the_same_node():
    spellings = [
        "F:2:4:9",
        "2:4:9",
        "2_9_4",
        (2, 4, 9),
        [2, 4, 9],
        torch.tensor([2, 4, 9]),
        Node("feature", 2, 4, 9),
    ]
    assert {node_id(s, n_layers=3) for s in spellings} == {"F:2:4:9"}
    assert {feature_key(s) for s in spellings} == {(2, 4, 9)}


def test_other_kinds_and_their_json_ids():
    assert parse_node("E:1:3") == parse_node("1_-1_3") == Node("error", 1, 3)
    assert node_id("E_17_2") == "T:2" and node_kind("T:2") == "token"
    assert node_id("4_17_5", n_layers=3) == "L:17"  # n_layers + 1 marks a logit
    assert node_id("4_17_5") == "F:4:5:17"  # without n_layers it can only be read as a feature
    assert node_id("F:1:-1:3") == "F:1:-1:3"  # negative positions count from the end


@pytest.mark.parametrize("bad", ["F:¹:2:3", "F:1:2", "Q:1", "F:1:2:3 ", "1:2", "F:١:2:3", "E_x_2", ""])
def test_malformed_ids_are_refused(bad):
    with pytest.raises(ValueError, match="is not a node id"):
        parse_node(bad)


def test_only_features_have_keys():
    with pytest.raises(ValueError, match="is a error node|only features"):
        feature_key("E:1:2")
    with pytest.raises(TypeError, match="Expected a node id"):
        parse_node(3.5)


def test_json_ids_round_trip_against_the_export(graph):
    """to_json_id gives exactly the ids the frontend JSON holds; from_json_id reads them back."""
    data = graph_to_dict(graph.prune(node_threshold=1.0, edge_threshold=1.0), "t")
    exported = {n["node_id"] for n in data["nodes"]}
    tokens = graph.tokens.tolist()
    ours = [graph.node_id(i) for i in range(graph.n_nodes) if graph.present_mask()[i]]
    as_json = {to_json_id(i, n_layers=graph.n_layers, tokens=tokens) for i in ours}
    assert exported <= as_json
    assert {from_json_id(j, n_layers=graph.n_layers) for j in exported} <= set(ours)


def test_functions_taking_nodes_accept_json_and_cli_spellings(graph):
    json_member = to_json_id("F:1:2:7", n_layers=3, tokens=graph.tokens.tolist())
    H = graph.group({"g": [json_member, "2:3:1"]})
    assert sorted(H.nodes["g"]["members"]) == ["F:1:2:7", "F:2:3:1"]
    assert tl_clt.ablate(["1_7_2", "2:3:1"]) == tl_clt.ablate([(1, 2, 7), (2, 3, 1)])
    assert tl_clt.top_inputs(graph, "2_1_3") == tl_clt.top_inputs(graph, "F:2:3:1")
