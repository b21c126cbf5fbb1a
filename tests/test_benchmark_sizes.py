"""benchmarks/sizes.py's disk check: what a size needs on disk (`data_bytes`) against the folders it writes,
and `build` refusing up front where the disk cannot hold the rest (the 1.7B shape writes ~40 GB)."""

import shutil
from collections import namedtuple
from pathlib import Path

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def sizes():
    return benchmark_scripts.load("sizes")


def _weights(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def test_data_bytes_is_what_build_writes(sizes, tmp_path):
    """The tiny size's folders hold data_bytes' weights; the rest is safetensors headers (under 1 %
    for the model, whose one file has a header; under 5 % for the CLT's 2 x 4 small files)."""
    mdir, cdir = sizes.build("tiny", tmp_path)
    model_bytes, clt_bytes = sizes.data_bytes("tiny")
    assert model_bytes <= _weights(mdir) <= 1.01 * model_bytes
    assert clt_bytes <= _weights(cdir) <= 1.05 * clt_bytes


def test_data_bytes_of_the_large_sizes(sizes):
    """By hand: the 1.7B shape's CLT is 20480 features x 2048 x (28 encoder + 406 decoder rows) in bf16.
    Its model (tied embeddings) 151936 x 2048 + 28 x (2048 x 128 x 48 + 3 x 2048 x 6144 + 4352) + 2048 =
    1,720,574,976 parameters in bf16; the real shape's 151936 x 1024 + 28 x (1024 x 128 x 48 + 3 x 1024 x
    3072 + 2304) + 1024 = 596,049,920 in float32 (Qwen3-1.7B's and -0.6B's published sizes)."""
    model, clt = sizes.data_bytes("1.7b")
    assert clt == 20480 * 2048 * (28 + 28 * 29 // 2) * 2
    assert model == 2 * 1_720_574_976
    assert sizes.data_bytes("real")[0] == 4 * 596_049_920


def test_build_refuses_when_the_disk_is_short(sizes, tmp_path, monkeypatch):
    """Too little free space: a clear SystemExit naming the size, the bytes and --root, before any file."""
    usage = namedtuple("usage", "total used free")
    need = sum(sizes.data_bytes("tiny"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, need))  # short of the margin
    root = tmp_path / "not yet" / ".bench"
    with pytest.raises(SystemExit, match=r"tiny size.*GB more.*--root"):
        sizes.build("tiny", root)
    assert not root.exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, need + (1 << 30) + 1))
    mdir, cdir = sizes.build("tiny", root)
    assert (mdir / "config.json").exists() and (cdir / "config.yaml").exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, 0))
    assert sizes.build("tiny", root) == (mdir, cdir)  # made already: nothing more needed


def test_a_resumed_clt_needs_only_its_missing_part(sizes, tmp_path):
    """A streamed CLT resumes from its finished layers: those files count as written; finished folders
    need nothing."""
    model_bytes, clt_bytes = sizes.data_bytes("tiny")
    mdir, cdir = tmp_path / "tiny-model", tmp_path / "tiny-clt"
    assert sizes.missing_bytes("tiny", mdir, cdir) == model_bytes + clt_bytes
    cdir.mkdir()
    (cdir / "W_dec_0.safetensors").write_bytes(b"\0" * (clt_bytes // 3))
    (cdir / "W_dec_1.partial").write_bytes(b"\0" * 100)  # an unfinished layer counts for nothing
    assert sizes.missing_bytes("tiny", mdir, cdir) == model_bytes + clt_bytes - clt_bytes // 3
    (cdir / "config.yaml").write_text("")
    assert sizes.missing_bytes("tiny", mdir, cdir) == model_bytes
