"""Dashboards everywhere: the toy world ships them, CLTs carry them, graphs name features by them, the
graph JSON takes its clerps from them and a frontend folder holds what a click on a feature reads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tl_clt
from tl_clt import export
from tl_clt.dashboards import DashboardsNotFoundError, FeatureDashboards, validate_record
from tl_clt.dashboards.builder import _clt_fingerprint
from tl_clt.dashboards.format import cantor_pair
from tl_clt.toyworld import load_toyworld
from tl_clt.toyworld.corpus import make_corpus
from tl_clt.toyworld.dashboards import TOY_CONFIG

STORY = "Fact: The president of the United States in 2010 was"


@pytest.fixture(scope="module")
def world():
    return load_toyworld()


@pytest.fixture(scope="module")
def story_graph(world):
    model, clt = world
    return tl_clt.attribute(model, clt, STORY, verbose=False).prune(0.8, 0.98)


def test_the_toy_world_ships_dashboards_of_its_own_clt(world):
    model, clt = world
    dash = clt.dashboards
    assert isinstance(dash, FeatureDashboards)
    assert (dash.n_layers, dash.n_features) == (clt.n_layers, [clt.n_features] * clt.n_layers)
    folder = clt.path / "features"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 3e6
    manifest = json.loads((folder / "dashboards.json").read_text())
    # built from this very CLT (rebuild with `python -m tl_clt.toyworld.dashboards` after retraining it)
    assert manifest["clt"] == _clt_fingerprint(clt)
    assert manifest["config"] == TOY_CONFIG.to_dict()
    n_tokens = sum(len(model.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in make_corpus(0))
    assert manifest["n_tokens"] == n_tokens and manifest["documents"] == [[0, len(make_corpus(0))]]
    for layer in range(clt.n_layers):  # jsonschema takes ~10 ms a record: every 16th (the builder's
        for feature in range(layer, clt.n_features, 16):  # own test validates all of its records)
            validate_record(dash.record(layer, feature))


def test_cards_of_the_story_make_sense(world, story_graph):
    model, clt = world
    features = [n for n, d in story_graph.to_networkx().nodes(data=True) if d["kind"] == "feature"]
    assert len(features) > 10
    for node in features:
        layer, pos, feature = (int(x) for x in node.split(":")[1:])
        card = story_graph.feature_card(node)
        assert card is clt.dashboards[layer, feature] and (card.layer, card.feature) == (layer, feature)
        assert (
            card.activation_frequency > 0 and card.top_examples
        )  # it fired in the story: it fires in the corpus
        act = story_graph.node_info(story_graph.feature_index(layer, pos, feature))["activation"]
        # the story's own activation is within the histogram's range
        assert 0 < act <= card.act_max * 1.5
    assert story_graph.feature_card((1, 5)) is clt.dashboards[1, 5]
    with pytest.raises(ValueError, match="is a logit node"):
        story_graph.feature_card(f"L:{int(story_graph.logit_tokens[0])}")


def test_graph_json_takes_clerps_from_the_dashboards(world, story_graph):
    _, clt = world
    data = export.graph_to_dict(story_graph, "story")
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    for n in feats:
        layer, feature = int(n["layer"]), int(n["node_id"].split("_")[1])
        assert n["clerp"] == clt.dashboards[layer, feature].label and n["clerp"]
    mine = next(n for n, d in story_graph.to_networkx().nodes(data=True) if d["kind"] == "feature")
    data = export.graph_to_dict(story_graph, "story", clerps={mine: "my name"})  # the user's clerp wins
    assert sum(n["clerp"] == "my name" for n in data["nodes"]) == 1
    bare = export.graph_to_dict(story_graph, "story", dashboards=False)
    assert all(n["clerp"] == "" for n in bare["nodes"] if n["feature_type"] == "cross layer transcoder")


def test_graph_folder_holds_the_features_the_frontend_reads(world, story_graph, tmp_path):
    _, clt = world
    out = tmp_path / "graphs"
    tl_clt.write_graph_folder({"story": story_graph}, out, dashboards=True)
    export.validate_graph_folder(out)
    data = json.loads((out / "story.json").read_text())
    scan = data["metadata"]["scan"]
    assert scan.startswith("./data/features/clt-")
    listing = json.loads((out / "graph-metadata.json").read_text())
    assert listing["graphs"][0]["scan"] == scan
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    # what init-feature-examples.js fetches for a scan starting with './': `${scan}/${featureIndex}.json`,
    # served by circuit-tracer's local server from the data folder
    folder = out / scan.removeprefix("./data/")
    assert sorted(p.name for p in folder.iterdir()) == sorted({f"{n['feature']}.json" for n in feats})
    for n in feats:
        layer, feature = int(n["layer"]), int(n["node_id"].split("_")[1])
        assert n["feature"] == cantor_pair(layer, feature)
        assert json.loads((folder / f"{n['feature']}.json").read_text()) == clt.dashboards.record(
            layer, feature
        )
    # a JSON graph file and explicit dashboards give the same
    tl_clt.write_graph_folder([out / "story.json"], tmp_path / "again", dashboards=clt.dashboards)
    assert json.loads((tmp_path / "again" / "story.json").read_text())["metadata"]["scan"] == scan


def test_clts_without_dashboards(model_dir, clt_dir, tmp_path):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    assert clt.dashboards is None
    graph = tl_clt.attribute(model, clt, STORY, max_n_logits=3, verbose=False)
    with pytest.raises(DashboardsNotFoundError, match="has no features/ dashboards"):
        graph.feature_card("F:0:1:0")
    with pytest.raises(DashboardsNotFoundError, match="dashboards=True: no features/"):
        tl_clt.write_graph_folder({"g": graph}, tmp_path / "out", dashboards=True)
    # a CLT folder with features/ gets them attached
    shutil.copytree(clt_dir, tmp_path / "clt")
    from dashboard_writer import write_folder

    write_folder(tmp_path / "clt" / "features", n_layers=3, n_features=96)
    clt2 = tl_clt.CrossLayerTranscoder.from_pretrained(tmp_path / "clt")
    assert clt2.dashboards is not None and clt2.dashboards[2, 95].top_logits == [" up2_95", " Obama"]


def _features(graph) -> list[tuple[str, int, int]]:
    """(node id, layer, feature) of each feature node of a pruned graph."""
    return [
        (n, d["layer"], d["feature"])
        for n, d in graph.to_networkx().nodes(data=True)
        if d["kind"] == "feature"
    ]


def test_plots_and_the_view_show_the_cards(world, story_graph):
    """plot_graph(label_features=True), plot_circuit's boxes and graph.show()'s cards take the labels
    and top examples of the dashboards next to the graph's CLT; False / explicit labels turn them off."""
    import html

    from tl_clt import circuit, view

    _, clt = world
    feats = _features(story_graph)
    label = {node: clt.dashboards[layer, feature].label for node, layer, feature in feats}
    fig = tl_clt.plot_graph(story_graph, label_features=True)
    texts = {t.get_text() for t in fig.axes[0].texts}
    shown = [
        node for node in label if (label[node] if len(label[node]) <= 24 else label[node][:23] + "…") in texts
    ]
    assert len(shown) >= 3  # the rest left out for room (plot_graph's declutter)
    assert not set(label.values()) & {
        t.get_text() for t in tl_clt.plot_graph(story_graph, label_features=True, labels={}).axes[0].texts
    }

    weights = story_graph.influence if story_graph.influence is not None else story_graph.node_influence()
    groups = {
        "first": [n for n, layer, _ in feats if layer == 0],
        "later": [n for n, layer, _ in feats if layer > 0],
    }
    fig = tl_clt.plot_circuit(story_graph, groups)
    for name, members in groups.items():
        rows = {n: story_graph.feature_index(*map(int, n.split(":")[1:])) for n in members}
        top = max(members, key=lambda n: abs(float(weights[rows[n]])))
        (box,) = [t for t in fig.axes[0].texts if t.get_gid() == f"{circuit.BOX_GID}:{name}"]
        quote = label[top] if len(label[top]) <= 28 else label[top][:27] + "…"
        assert box.get_text().splitlines()[-1] == f"“{quote}”"
    fig = tl_clt.plot_circuit(story_graph, groups, dashboards=False)
    assert all("“" not in t.get_text() for t in fig.axes[0].texts)

    data = view.view_data(story_graph)  # no clt: the features/ next to the graph's CLT
    cards = {n["id"]: n["card"] for n in data["nodes"]}
    for node, layer, feature in feats:
        card = clt.dashboards[layer, feature]
        assert (
            html.escape(card.label) in cards[node]
            and html.escape(card.top_examples[0].text(60)) in cards[node]
        )
    assert view.view_data(story_graph, clt=clt) == data


def test_graph_json_files_get_clerps_from_explicit_dashboards(world, story_graph, tmp_path):
    _, clt = world
    bare = tmp_path / "bare.json"
    story_graph.to_json(bare, dashboards=False)
    tl_clt.write_graph_folder([bare], tmp_path / "site", dashboards=clt.dashboards)
    data = json.loads((tmp_path / "site" / "bare.json").read_text())
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(
        n["clerp"] == clt.dashboards[int(n["layer"]), int(n["node_id"].split("_")[1])].label for n in feats
    )
