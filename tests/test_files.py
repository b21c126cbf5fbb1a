"""Every writer goes through tl_clt.files: atomic, never through a symlink, never outside its folder."""

from __future__ import annotations

import json
import os

import pytest
import torch
from graph_factory import make_graph

import tl_clt
from tl_clt import AttributionGraph, files

EDGES = [(0, 1, 3), (1, 2, 4), (2, 3, 5)]


@pytest.fixture()
def graph():
    return make_graph(EDGES, density=1.0)


def _writers(graph, folder):
    """name -> (function writing `folder/<name>`): every public way tl_clt writes a file."""
    return {
        "g.pt": lambda p: graph.save(p),
        "g.json": lambda p: graph.to_json(p),
        "g.png": lambda p: graph.plot(p),
        "g.svg": lambda p: tl_clt.plot_graph(graph, p),
    }


@pytest.mark.parametrize("name", ["g.pt", "g.json", "g.png", "g.svg"])
def test_a_symlink_at_the_output_is_replaced_not_written_through(graph, tmp_path, name):
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    _writers(graph, out)[name](out / name)
    assert victim.read_bytes() == b"precious"
    assert not (out / name).is_symlink() and (out / name).stat().st_size > 100
    assert sorted(p.name for p in out.iterdir()) == [name]  # no temp file left


def test_graph_folder_replaces_symlinks_and_stays_inside(graph, tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    site = tmp_path / "site"
    site.mkdir()
    (site / "g.json").symlink_to(victim)
    (site / "graph-metadata.json").symlink_to(tmp_path / "missing-listing.json")  # broken: a new listing
    tl_clt.write_graph_folder({"g": graph}, site)
    assert victim.read_text() == "precious"
    assert not (site / "g.json").is_symlink() and not (site / "graph-metadata.json").is_symlink()
    assert json.loads((site / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "g"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "victim.json"]


def test_path_inside_refuses_names_that_leave_the_folder(tmp_path):
    for name in ("../x", "a/b", "/etc/passwd", ".hidden", "..", "a..b", "", "x\n", "x\\..\\y", 5):
        with pytest.raises(ValueError, match="cannot be a file name"):
            files.path_inside(tmp_path, name)
    assert files.path_inside(tmp_path, "graph-1.json") == tmp_path / "graph-1.json"


@pytest.mark.parametrize("name", ["g.pt", "g.json", "g.png"])
def test_a_failed_write_keeps_the_old_file(graph, tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _writers(graph, tmp_path)[name](path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_errors_name_the_users_path_not_a_temp_file(graph, tmp_path, monkeypatch):
    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, ".g.json.abc.tmp"))

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    for name in ("g.pt", "g.json", "g.png"):
        with pytest.raises(PermissionError) as info:
            _writers(graph, tmp_path)[name](tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and ".tmp" not in str(info.value)


def test_new_files_get_the_usual_permissions_and_old_ones_keep_theirs(graph, tmp_path):
    (tmp_path / "plain").write_text("x")  # what open() gives under this process's umask
    graph.save(tmp_path / "g.pt")
    assert (tmp_path / "g.pt").stat().st_mode == (tmp_path / "plain").stat().st_mode
    os.chmod(tmp_path / "g.pt", 0o600)
    graph.save(tmp_path / "g.pt")
    assert (tmp_path / "g.pt").stat().st_mode & 0o777 == 0o600


def test_graph_file_is_safetensors_with_json_metadata(graph, tmp_path):
    """The documented layout: any safetensors reader opens it; the file name does not matter."""
    from safetensors import safe_open

    P = graph.prune(0.7, 1.0)
    P.save(tmp_path / "g.safetensors")
    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "tl_clt.AttributionGraph/2"
        assert torch.equal(f.get_tensor("adjacency"), P.adjacency)
        assert "node_mask" in f.keys()
    assert json.loads(meta["graph"])["token_strs"] == P.token_strs
    Q = AttributionGraph.load(tmp_path / "g.safetensors")
    assert torch.equal(Q.node_mask, P.node_mask) and Q.n_layers == P.n_layers


def test_write_graph_folder_writes_nothing_when_one_input_is_bad(graph, tmp_path):
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a graph JSON file"):
        tl_clt.write_graph_folder([graph, tmp_path / "bad.json"], tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_every_writer_in_the_package_goes_through_files():
    """No module but tl_clt/files.py writes a file itself (`save_pretrained` of transformers aside)."""
    import re
    from pathlib import Path

    direct = re.compile(
        r"(?<!files)\.write_(text|bytes)\(|\bopen\([^)]*[\"'][wax]b?\+?[\"']|savefig\((?!f,)"
        r"|(?<!safetensors\.)torch\.save\(|\bsave_file\(|\.mkstemp\("
    )
    package = Path(tl_clt.__file__).parent
    found = [
        f"{p.relative_to(package)}:{i}: {line.strip()}"
        for p in sorted(package.rglob("*.py"))
        if p.name != "files.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if direct.search(line) and "os.devnull" not in line
    ]
    assert not found, found


# ------------------------------------------------------------------------ feature dashboards' writers
DASH_TEXTS = ["Fact: The president of the United States in 2010 was Barack Obama.", "The cat sleeps."]


@pytest.fixture(scope="module")
def dash_state(model_dir, clt):
    from tl_clt.dashboards import DashboardConfig, build_state

    model = tl_clt.load_qwen3(model_dir, backend=None)
    config = DashboardConfig(context_len=16, batch_size=2, n_top=2, n_intervals=2, n_bins=4, bin_resolution=4)
    return model, clt, build_state(model, clt, DASH_TEXTS, config, progress=False)


def _dash_writers(dash_state, tmp_path):
    """name -> function writing `folder/<name>`: each file the dashboards code writes."""
    from tl_clt.cli import main
    from tl_clt.dashboards import write_dashboards
    from tl_clt.dashboards.format import write_feature_json

    model, clt, state = dash_state
    record = {"index": 0, "examples_quantiles": []}

    def html(path):
        write_dashboards(state, model, clt, DASH_TEXTS, tmp_path / "src", progress=False)
        args = ["dashboards", "show", "--dashboards", str(tmp_path / "src"), "0", "1", "--html", str(path)]
        assert main(args) == 0

    return {
        "state.safetensors": lambda p: state.save(p),
        "feature.json": lambda p: write_feature_json(record, p),
        "layer_0.bin": lambda p: write_dashboards(state, model, clt, DASH_TEXTS, p.parent, progress=False),
        "index.json.gz": lambda p: write_dashboards(state, model, clt, DASH_TEXTS, p.parent, progress=False),
        "card.html": html,
    }


DASH_FILES = ["state.safetensors", "feature.json", "layer_0.bin", "index.json.gz", "card.html"]


@pytest.mark.parametrize("name", DASH_FILES)
def test_dashboards_writers_replace_a_symlink_and_leave_no_temp_file(dash_state, tmp_path, name):
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    _dash_writers(dash_state, tmp_path)[name](out / name)
    assert victim.read_bytes() == b"precious"
    assert not (out / name).is_symlink() and (out / name).stat().st_size > 10
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["state.safetensors", "feature.json", "index.json.gz"])
def test_a_failed_dashboards_write_keeps_the_old_file(dash_state, tmp_path, monkeypatch, name):
    writers = _dash_writers(dash_state, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        writers[name](out / name)
    assert (out / name).read_bytes() == b"old"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_graph_folder_feature_files_stay_inside_and_replace_symlinks(dash_state, tmp_path, graph):
    """write_graph_folder(dashboards=...) writes features/<name>/<id>.json through tl_clt.files."""
    from tl_clt.dashboards import FeatureDashboards, write_dashboards

    model, clt, state = dash_state
    write_dashboards(state, model, clt, DASH_TEXTS, tmp_path / "features", progress=False)
    dash = FeatureDashboards.from_pretrained(tmp_path / "features")
    site = tmp_path / "site"
    tl_clt.write_graph_folder({"g": graph}, site, dashboards=dash)
    written = sorted((site / "features").rglob("*.json"))
    assert written and all(p.resolve().is_relative_to(site.resolve()) for p in written)
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    written[0].unlink()
    written[0].symlink_to(victim)
    tl_clt.write_graph_folder({"g": graph}, site, dashboards=dash)
    assert victim.read_text() == "precious" and not written[0].is_symlink()


def test_the_corpus_spill_file_is_made_by_files_and_removed(tmp_path):
    from tl_clt.dashboards.corpus import StreamCorpus

    corpus = StreamCorpus(iter(["a", "b", "c"]), spill_dir=tmp_path)
    assert dict(corpus.iter_docs()) == {0: "a", 1: "b", 2: "c"} and corpus.get([2, 0]) == {0: "a", 2: "c"}
    (spill,) = tmp_path.iterdir()
    assert spill == corpus.spill and spill.stat().st_mode & 0o077 == 0  # private to this user
    del corpus
    assert not list(tmp_path.iterdir())
