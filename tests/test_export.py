"""Graph JSON export: schema, node ids, pruning, supernodes, folders, circuit-tracer parity."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
from conftest import PROMPT
from graph_factory import make_graph

import tl_clt
from tl_clt import export

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def graph(model_dir, clt):
    model = tl_clt.load_qwen3(model_dir, backend=None)
    return tl_clt.attribute(model, clt, PROMPT, batch_size=64, max_n_logits=5, verbose=False)


@pytest.fixture(scope="module")
def exported(graph, tmp_path_factory):
    path = graph.to_json(tmp_path_factory.mktemp("json") / "tiny.json", slug="tiny")
    return json.loads(path.read_text())


def _feature_id(node: str) -> str:
    """Our feature id `F:layer:pos:feature` -> the frontend's `layer_feature_pos`."""
    _, layer, pos, feature = node.split(":")
    return f"{layer}_{feature}_{pos}"


def test_export_validates_against_the_schema(exported):
    export.validate_graph_json(exported)
    assert set(exported) == {"metadata", "qParams", "nodes", "links"}
    assert exported["metadata"]["slug"] == "tiny"
    assert exported["qParams"] == {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }


def test_nodes_and_links_are_the_pruned_graph(graph, exported):
    G = graph.prune(0.8, 0.98).to_networkx()
    keep = [n for n, d in G.nodes(data=True) if d["kind"] in ("token", "logit") or G.degree(n)]
    assert len(exported["nodes"]) == len(keep)
    by_ours = {}
    for n in keep:
        d = G.nodes[n]
        if d["kind"] == "feature":
            by_ours[n] = f"{d['layer']}_{d['feature']}_{d['pos']}"
        elif d["kind"] == "error":
            by_ours[n] = f"{d['layer']}_-1_{d['pos']}"
        elif d["kind"] == "token":
            by_ours[n] = f"E_{d['token_id']}_{d['pos']}"
        else:
            by_ours[n] = f"{graph.n_layers + 1}_{d['token_id']}_{graph.n_pos - 1}"
    assert {n["node_id"] for n in exported["nodes"]} == set(by_ours.values())
    links = {(lk["source"], lk["target"]): lk["weight"] for lk in exported["links"]}
    expected = {(by_ours[s], by_ours[t]): w for s, t, w in G.edges(data="weight")}
    assert links.keys() == expected.keys()
    assert all(links[k] == pytest.approx(expected[k], rel=1e-6) for k in expected)


def test_node_fields_follow_the_frontend_conventions(graph, exported):
    nodes = exported["nodes"]
    feats = [n for n in nodes if n["feature_type"] == "cross layer transcoder"]
    assert feats, "the tiny graph should keep some features"
    for n in feats:
        layer, feat, pos = (int(x) for x in n["node_id"].split("_"))
        assert n["layer"] == str(layer) and n["ctx_idx"] == pos
        assert n["feature"] == export.cantor_pair(layer, feat)
        assert n["activation"] == pytest.approx(
            float(graph.activation_values[graph.selected_features[graph.feature_index(layer, pos, feat)]])
        )
    tokens = [n for n in nodes if n["feature_type"] == "embedding"]
    assert [n["ctx_idx"] for n in tokens] == list(range(graph.n_pos))
    assert all(n["layer"] == "E" and n["node_id"].startswith("E_") for n in tokens)
    logits = [n for n in nodes if n["feature_type"] == "logit"]
    assert len(logits) == graph.n_logits
    assert [n["is_target_logit"] for n in logits] == [True] + [False] * (graph.n_logits - 1)
    assert {n["layer"] for n in logits} == {str(graph.n_layers + 1)}
    assert {n["ctx_idx"] for n in logits} == {graph.n_pos - 1}
    probs = [n["token_prob"] for n in logits]
    assert probs == pytest.approx(graph.logit_probabilities.tolist())
    assert logits[0]["clerp"] == f'Output "{graph.logit_token_strs[0]}" (p={probs[0]:.3f})'
    assert exported["metadata"]["prompt_tokens"] == graph.token_strs


def test_influence_is_the_cumulative_rank_and_the_slider_shows_every_node(graph, exported):
    raw = graph.node_influence()
    ids = {n["node_id"]: n for n in exported["nodes"]}
    feats = [
        (float(raw[i]), ids[f"{lyr}_{f}_{p}"]["influence"])
        for i, (lyr, p, f) in enumerate(graph.feature_keys.tolist())
        if f"{lyr}_{f}_{p}" in ids
    ]
    feats.sort(key=lambda x: -x[0])
    cum = [c for _, c in feats]
    assert cum == sorted(cum), "more influential nodes must have smaller cumulative influence"
    assert all(0 < c <= 1 for c in cum)
    inner = [n["influence"] for n in exported["nodes"] if n["feature_type"] not in ("embedding", "logit")]
    meta = exported["metadata"]
    assert meta["node_threshold"] >= max(inner)
    assert meta["node_threshold"] >= 0.8
    assert meta["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert all(n["influence"] is None for n in exported["nodes"] if n["feature_type"] == "logit")


def test_supernodes_pins_and_clerps(graph, tmp_path):
    G = graph.prune().to_networkx()
    feats = [n for n, d in G.nodes(data=True) if d["kind"] == "feature" and G.degree(n)][:3]
    token = "T:1"
    data = json.loads(
        graph.to_json(
            tmp_path / "g.json",
            supernodes={"say a name": feats[:2]},
            pinned_ids=[token],
            clicked_id=feats[2],
            clerps={feats[0]: "names"},
        ).read_text()
    )
    export.validate_graph_json(data)
    fid = [_feature_id(f) for f in feats]
    tok_id = f"E_{int(graph.tokens[1])}_1"
    q = data["qParams"]
    assert q["supernodes"] == [["say a name", fid[0], fid[1]]]
    assert q["pinnedIds"] == [tok_id, fid[0], fid[1]]
    assert q["clickedId"] == fid[2]
    assert next(n for n in data["nodes"] if n["node_id"] == fid[0])["clerp"] == "names"
    with pytest.raises(KeyError, match="F:0:0:0"):
        graph.to_json(tmp_path / "bad.json", supernodes={"x": ["F:0:0:0"]})


def test_error_ids_never_equal_feature_ids(tmp_path):
    """circuit-tracer 0.5.0 named errors `0_{layer}_{pos}`: the id of layer-0 feature `layer`."""
    g = make_graph([(0, 2, 1), (0, 3, 2), (1, 2, 5), (2, 4, 7), (2, 3, 1)], seed=1, density=1.0)
    data = export.graph_to_dict(g, "collide", node_threshold=1.0, edge_threshold=1.0)
    ids = [n["node_id"] for n in data["nodes"]]
    assert "0_1_2" in ids and "1_-1_2" in ids  # feature (0, pos 2, #1) and error (layer 1, pos 2)
    assert len(ids) == len(set(ids))
    export.validate_graph_json(data)


def test_already_pruned_graph_is_exported_as_is(graph):
    P = graph.prune(node_threshold=0.5, edge_threshold=0.9)
    data = export.graph_to_dict(P, "p")
    n_feat = sum(1 for n, d in P.to_networkx().nodes(data=True) if d["kind"] == "feature")
    assert sum(n["feature_type"] == "cross layer transcoder" for n in data["nodes"]) <= n_feat
    assert len(data["nodes"]) < len(export.graph_to_dict(graph, "q")["nodes"])
    # the metadata says what was done: pruned before export, with thresholds export cannot know
    assert data["metadata"]["pruning_settings"] == {
        "node_threshold": None,
        "edge_threshold": None,
        "pruned_before_export": True,
    }
    assert export.graph_to_dict(graph, "q")["metadata"]["pruning_settings"] == {
        "node_threshold": 0.8,
        "edge_threshold": 0.98,
    }


def test_schema_rejects_broken_files(exported):
    checks = [
        lambda d: d.pop("qParams"),
        lambda d: d["metadata"].pop("prompt_tokens"),
        lambda d: d["nodes"][0].update(layer=3),  # layer must be a string
        lambda d: next(n for n in d["nodes"] if n["feature_type"] == "embedding").update(layer="0"),
        lambda d: next(n for n in d["nodes"] if n["feature_type"] == "logit").pop("jsNodeId"),
        lambda d: d["links"][0].update(weight="0.1"),
        lambda d: d["qParams"].update(linkType="sideways"),
    ]
    for i, breaks in enumerate(checks):
        data = copy.deepcopy(exported)
        breaks(data)
        with pytest.raises(jsonschema.ValidationError):
            export.validate_graph_json(data)
            pytest.fail(f"check {i} passed validation")
    data = copy.deepcopy(exported)
    first = data["nodes"][0]["node_id"]
    data["links"].append({"source": "nowhere", "target": first, "weight": 1.0})
    with pytest.raises(ValueError, match="links name nodes"):
        export.validate_graph_json(data)
    data = copy.deepcopy(exported)
    data["nodes"].append(dict(data["nodes"][0]))
    with pytest.raises(ValueError, match="repeat"):
        export.validate_graph_json(data)


def test_non_finite_values_are_refused(tmp_path):
    g = make_graph([(0, 1, 3), (1, 2, 4), (2, 3, 5)], density=1.0)
    g.adjacency[g.logit_index(0), 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        g.to_json(tmp_path / "nan.json", node_threshold=1.0, edge_threshold=1.0)
    g = make_graph([(0, 1, 3), (1, 2, 4), (2, 3, 5)], density=1.0)
    g.activation_values[0] = float("inf")
    with pytest.raises(ValueError, match="JSON compliant"):
        g.to_json(tmp_path / "inf.json", node_threshold=1.0, edge_threshold=1.0)
    assert not (tmp_path / "inf.json").exists()


def test_write_graph_folder(graph, tmp_path):
    graph.save(tmp_path / "saved.pt")
    graph.to_json(tmp_path / "exported.json", slug="from-json")
    out = tl_clt.write_graph_folder(
        [graph, tmp_path / "saved.pt", tmp_path / "exported.json", graph], tmp_path / "site"
    )
    slugs = export.validate_graph_folder(out)
    first = export.slugify("".join(graph.token_strs))
    assert slugs == [first, "saved", "from-json", f"{first}-2"]
    tl_clt.write_graph_folder({"saved": tmp_path / "saved.pt"}, out)  # replaces, no duplicate
    listing = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in listing["graphs"]] == [first, "from-json", f"{first}-2", "saved"]
    with pytest.raises(FileNotFoundError):
        tl_clt.write_graph_folder([tmp_path / "missing.pt"], out)
    with pytest.raises(ValueError, match="slug"):
        graph.to_json(tmp_path / "x.json", slug="../escape")


def test_schemas_are_valid_and_shipped():
    for name in ("graph", "graph-metadata"):
        jsonschema.Draft202012Validator.check_schema(export.load_schema(name))
    text = (HERE.parent / "pyproject.toml").read_text()
    assert '"schemas/*.json"' in text


# ------------------------------------------------------------------------ circuit-tracer parity
def _reference_python() -> str | None:
    """A python with circuit-tracer 0.5.0: $TL_CLT_CT_PYTHON, else the repo's .ctvenv (or ctvenv)."""
    candidates = [
        os.environ.get("TL_CLT_CT_PYTHON"),
        HERE.parent / ".ctvenv/bin/python",
        HERE.parent / "ctvenv/bin/python",
    ]
    for c in candidates:
        if c and Path(c).is_file():
            ok = subprocess.run([str(c), "-c", "import circuit_tracer"], capture_output=True)
            if ok.returncode == 0:
                return str(c)
    return None


@pytest.fixture(scope="module")
def reference(graph, model_dir, tmp_path_factory):
    python = _reference_python()
    if python is None:
        (pytest.fail if os.environ.get("TL_CLT_REQUIRE_CT") else pytest.skip)(
            "no python with circuit-tracer 0.5.0 (run scripts/make-ctvenv.sh, as .ci/run does, "
            "or set TL_CLT_CT_PYTHON)"
        )
    tmp = tmp_path_factory.mktemp("ct")
    graph.save(tmp / "g.pt")
    cmd = [
        python,
        str(HERE / "helpers/ct_reference_export.py"),
        str(tmp / "g.pt"),
        str(model_dir),
        str(tmp / "out"),
        "ref",
        "tiny-qwen3",
        "0.8",
        "0.98",
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""}
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((tmp / "out/ref.json").read_text())


def test_circuit_tracer_file_validates_against_our_schema(reference):
    export.validate_graph_json(reference)


def test_circuit_tracer_exports_the_same_graph(reference, exported):
    def ours(node_id: str, node: dict) -> str:
        if node["feature_type"] == "mlp reconstruction error":  # 0.5.0: 0_{layer}_{pos}
            _, layer, pos = node_id.split("_")
            return f"{layer}_-1_{pos}"
        return node_id

    ref_nodes = {ours(n["node_id"], n): n for n in reference["nodes"]}
    our_nodes = {n["node_id"]: n for n in exported["nodes"]}
    assert ref_nodes.keys() == our_nodes.keys()
    for key, n in our_nodes.items():
        r = ref_nodes[key]
        for field in ("feature", "layer", "ctx_idx", "feature_type", "is_target_logit", "clerp"):
            assert n[field] == r[field], (key, field)
        for field in ("influence", "activation", "token_prob"):
            assert (n[field] is None) == (r[field] is None), (key, field)
            if n[field] is not None:
                assert n[field] == pytest.approx(r[field], rel=1e-4, abs=1e-6), (key, field)
    mapped = {n["node_id"]: ours(n["node_id"], n) for n in reference["nodes"]}
    ref_links = {(mapped[lk["source"]], mapped[lk["target"]]): lk["weight"] for lk in reference["links"]}
    our_links = {(lk["source"], lk["target"]): lk["weight"] for lk in exported["links"]}
    assert ref_links.keys() == our_links.keys()
    assert all(our_links[k] == pytest.approx(ref_links[k], rel=1e-5) for k in our_links)
    for key in ("prompt_tokens", "prompt", "transcoder_list", "schema_version"):
        assert exported["metadata"][key] == reference["metadata"][key], key
