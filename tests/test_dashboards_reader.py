"""FeatureDashboards reads the dashboards format from a folder, the hub (HfFileSystem, HTTP mocked), the
hub cache, and any fsspec file system; cards match hand-made records written by an independent writer."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import fsspec
import pytest
import torch
from dashboard_writer import hand_record, write_folder
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

import tl_clt
from tl_clt.dashboards import CorruptDashboardsError, DashboardsNotFoundError, FeatureDashboards
from tl_clt.dashboards.format import cantor_pair, cantor_unpair


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, dict]:
    records = write_folder(tmp_path / "clt" / "features")
    return tmp_path / "clt", records


def test_cards_equal_the_hand_made_records(folder):
    root, records = folder
    dash = tl_clt.FeatureDashboards.from_pretrained(root)
    assert (dash.n_layers, dash.n_features) == (3, [5, 5, 5])
    for (layer, feature), record in records.items():
        assert dash.record(layer, feature) == record
        card = dash[layer, feature]
        assert (card.layer, card.feature) == (layer, feature)
        assert card.top_logits == record["top_logits"] and card.bottom_logits == record["bottom_logits"]
        assert card.histogram == record["histogram"] and card.quantile_values == record["quantile_values"]
        assert card.activation_frequency == record["activation_frequency"]
        assert [g.name for g in card.groups] == ["Top activations", "Interval 0"]
        ex = card.top_examples[0]
        assert ex.tokens == record["examples_quantiles"][0]["examples"][0]["tokens"]
        assert ex.token == f" {2000 + feature}"
        assert ex.act == record["examples_quantiles"][0]["examples"][0]["tokens_acts_list"][2]
        assert card.top_examples[1].repeated


def test_features_folder_node_ids_and_index_as_dict(tmp_path):
    records = write_folder(tmp_path / "f", index_as_dict=True)
    dash = FeatureDashboards.from_pretrained(tmp_path / "f")  # the features/ folder itself
    assert dash["F:2:7:4"].record == records[2, 4]  # a node id: (layer 2, pos 7, feature 4)
    assert dash[(1, 3, 2)].record == records[1, 2]
    assert dash[torch.tensor(1), torch.tensor(3)].feature == 3


def test_one_read_per_card_and_the_cache(folder):
    root, records = folder
    dash = FeatureDashboards.from_pretrained(root, cache_size=2)
    dash[0, 1]
    index_bytes = dash.bytes_read
    assert dash.n_reads == 1
    dash[0, 1]
    assert dash.n_reads == 1  # cached
    dash[0, 2], dash[0, 3], dash[0, 1]  # the cache holds 2: (0, 1) was evicted
    assert dash.n_reads == 4
    offsets = json.loads(gzip.decompress((root / "features/index.json.gz").read_bytes()))[0]["offsets"]
    index_size = (root / "features/index.json.gz").stat().st_size
    assert index_bytes == index_size + offsets[2] - offsets[1]
    assert dash.bytes_read == index_bytes + offsets[4] - offsets[1]  # records 2, 3 and 1 again


def test_text_and_html(folder):
    root, _ = folder
    card = FeatureDashboards.from_pretrained(root)[1, 4]
    text = repr(card)
    assert text.startswith("FeatureCard(layer=1, feature=4): active on 0.4% of tokens")
    assert "« 2004»" in text and "' up1_4'" in text and len(text.splitlines()) <= 10
    assert card.label == "2004 / In → up1_4, Obama"  # chosen tokens of the top examples → top logits
    html = card._repr_html_()
    assert "café" in html and "up1_4" in html and "<svg" in html and "&lt;" not in card.label
    control = dataclasses.replace(card, top_logits=["\x19", " a\x7fb", "\t"])  # byte-level tokens
    assert control.label == "2004 / In → \\x19, a\\x7fb" and control.label.isprintable()
    evil = FeatureDashboards.from_pretrained(root)[0, 0]
    evil.groups[0].examples[0].tokens[0] = "<script>"
    assert "<script>" not in evil._repr_html_() and "&lt;script&gt;" in evil._repr_html_()


def test_cantor_ids_match_the_frontend():
    for layer in range(30):
        for feature in (0, 1, 7, 847, 20479):
            z = cantor_pair(layer, feature)
            assert cantor_unpair(z) == (layer, feature)
            # util.js: w = floor((sqrt(8z+1)-1)/2), t = (w^2+w)/2, y = z-t, x = w-y
            w = int(((8 * z + 1) ** 0.5 - 1) // 2)
            y = z - (w * w + w) // 2
            assert (w - y, y) == (layer, feature)


# ------------------------------------------------------------------------ the hub
def test_hub_reads_through_hffilesystem_ranges(folder, monkeypatch):
    """The real HfFileSystem code path with only its HTTP range fetch (and metadata calls) mocked:
    each card is one range request for exactly the record's bytes."""
    from huggingface_hub import HfFileSystem
    from huggingface_hub import hf_file_system as hffs

    root, records = folder
    requests = []

    def local(path: str) -> Path:
        assert path.startswith("someone/clt/features/"), path
        return root / path.removeprefix("someone/clt/")

    def fetch_range(self, start, end):
        data = local(self.resolved_path.unresolve()).read_bytes()[start:end]
        requests.append((Path(self.resolved_path.path_in_repo).name, start, end))
        return data

    monkeypatch.setattr(HfFileSystem, "_repo_and_revision_exist", lambda self, *a, **k: (True, None))
    monkeypatch.setattr(
        HfFileSystem,
        "info",
        lambda self, path, **k: {"name": path, "size": local(path).stat().st_size, "type": "file"},
    )
    monkeypatch.setattr(hffs.HfFileSystemFile, "_fetch_range", fetch_range)
    monkeypatch.setattr("tl_clt.dashboards.reader._cached_hub_folder", lambda *a: None)
    dash = FeatureDashboards.from_pretrained("someone/clt")
    assert dash.n_reads == 0 and requests == []  # nothing read before the first card
    assert dash[2, 3].record == records[2, 3]
    offsets = json.loads(gzip.decompress((root / "features/index.json.gz").read_bytes()))[2]["offsets"]
    assert requests[0][0] == "index.json.gz"
    assert requests[1:] == [("layer_2.bin", offsets[3], offsets[4])]
    assert dash[0, 0].record == records[0, 0] and len(requests) == 3


class _CountingFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        self.fs.fetched += end - start
        with open(self.fs.root / self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


class _CountingFS(AbstractFileSystem):
    """A remote-like file system over a local folder that counts the bytes it serves."""

    def __init__(self, root: Path):
        super().__init__(skip_instance_cache=True)
        self.root, self.fetched = root, 0

    def info(self, path, **kwargs):
        p = self.root / path
        if not p.is_file():
            raise FileNotFoundError(path)
        return {"name": path, "size": p.stat().st_size, "type": "file"}

    def _open(self, path, mode="rb", **kwargs):
        return _CountingFile(self, path, mode, **kwargs)


def test_any_fsspec_filesystem_reads_only_the_record(folder):
    root, records = folder
    fs = _CountingFS(root.parent)
    dash = FeatureDashboards.from_pretrained("clt", fs=fs)
    assert dash.n_layers == 3
    before = fs.fetched
    assert dash[1, 2].record == records[1, 2]
    offsets = dash.index[1][1]
    assert fs.fetched - before == offsets[3] - offsets[2]  # no read-ahead


def test_hub_cache_is_used_offline(folder, tmp_path, monkeypatch):
    """A hub repo whose features/ is in the HF cache is read from there (no network)."""
    import huggingface_hub.constants as constants

    root, records = folder
    snap = tmp_path / "hub" / "models--owner--name" / "snapshots" / "0123abc"
    shutil.copytree(root / "features", snap / "features")
    (tmp_path / "hub" / "models--owner--name" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--name" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    dash = FeatureDashboards.from_pretrained("owner/name")
    assert Path(str(dash.source)) == snap / "features"
    assert dash[1, 1].record == records[1, 1]


# ------------------------------------------------------------------------ errors
def test_errors_name_the_problem(folder, tmp_path):
    root, _ = folder
    dash = FeatureDashboards.from_pretrained(root)
    with pytest.raises(IndexError, match="feature 5 is out of range: layer 0 has 5 features"):
        dash[0, 5]
    with pytest.raises(IndexError, match="layer 3 is out of range"):
        dash[3, 0]
    with pytest.raises(IndexError, match="feature -1 is out of range"):
        dash[0, -1]
    with pytest.raises(TypeError, match="feature must be an int"):
        dash[0, 1.5]
    with pytest.raises(ValueError, match="is a token node"):
        dash["T:3"]
    with pytest.raises(DashboardsNotFoundError, match="without features/index.json.gz"):
        FeatureDashboards.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nor a hub id"):
        FeatureDashboards.from_pretrained(tmp_path / "absent")
    (root / "features/layer_1.bin").unlink()
    with pytest.raises(DashboardsNotFoundError, match="layer_1.bin is missing"):
        dash[1, 0]
    data = (root / "features/layer_2.bin").read_bytes()
    (root / "features/layer_2.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDashboardsError, match="truncated"):
        dash[2, 4]
    start, end = dash.index[0][1][3:5]
    data = bytearray((root / "features/layer_0.bin").read_bytes())
    data[start + 4 : end] = b"x" * (end - start - 4)  # the length prefix stays, the body is junk
    (root / "features/layer_0.bin").write_bytes(bytes(data))
    with pytest.raises(CorruptDashboardsError, match="not zlib data"):
        dash[0, 3]
    data[start : start + 4] = (10**6).to_bytes(4, "little")
    (root / "features/layer_0.bin").write_bytes(bytes(data))
    with pytest.raises(CorruptDashboardsError, match="length prefix says 1000000 bytes"):
        dash[0, 3]
    (root / "features/index.json.gz").write_bytes(b"not gzip")
    with pytest.raises(CorruptDashboardsError, match="is not gzip data"):
        _ = FeatureDashboards.from_pretrained(root).n_layers
    (root / "features/index.json.gz").write_bytes(gzip.compress(b'[{"filename": "../x", "offsets": [0]}]'))
    with pytest.raises(CorruptDashboardsError, match="not a file in the folder"):
        _ = FeatureDashboards.from_pretrained(root).n_layers


def test_fsspec_memory_filesystem(folder):
    """fsspec's in-memory file system (no AbstractBufferedFile) works too."""
    root, records = folder
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    for p in (root / "features").iterdir():
        fs.pipe(f"/mem/features/{p.name}", p.read_bytes())
    dash = FeatureDashboards.from_pretrained("/mem", fs=fs)
    assert dash[2, 2].record == records[2, 2]
    assert hand_record(2, 2) == records[2, 2]
