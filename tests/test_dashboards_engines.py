"""build_feature_dashboards on an engine: corpus shards built on workers and merged give the files of the
one-process build byte for byte: in-process shards (interrupted, then resumed: finished shards are not
built again), 2 Ray workers, and 2 Ray workers one of which is killed mid-shard. The Ray tests share one
local Ray (2 CPUs); its teardown checks that no Ray process is left."""

from __future__ import annotations

import os
import signal

import pytest
from ray_helpers import local_ray, wait_gone
from test_dashboards_builder import CONFIG, DOCS

import tl_clt
from tl_clt.batch import LocalEngine, RayEngine
from tl_clt.cli import main
from tl_clt.dashboards import DashboardConfig, build_feature_dashboards


def folder_bytes(folder) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def local_files(model_dir, clt_dir, corpus, tmp_path_factory):
    """The default build (engine="local": one state over the whole corpus, in this process)."""
    out = tmp_path_factory.mktemp("local") / "features"
    build_feature_dashboards(str(model_dir), str(clt_dir), corpus, out, config=CONFIG, progress=False)
    files = folder_bytes(out)
    assert {"index.json.gz", "dashboards.json", "layer_0.bin"} <= set(files)
    return files


class Watched:
    """An engine around another that records the tasks it is given and the results, and can stop (as
    Ctrl-C does) after `stop_after` results or kill the worker of the first result (mid-way through the
    next shard it was just handed)."""

    def __init__(self, inner, stop_after: int | None = None, kill_first: bool = False):
        self.inner, self.stop_after, self.kill_first = inner, stop_after, kill_first
        self.name, self.workers = inner.name, inner.workers
        self.threads_per_worker = inner.threads_per_worker
        self.tasks, self.results, self.killed = [], [], []

    def map(self, setup, fn, tasks):
        tasks = list(tasks)
        self.tasks.append(tasks)
        for result in self.inner.map(setup, fn, tasks):
            if self.kill_first and not self.killed:
                os.kill(result.worker_pid, signal.SIGKILL)
                self.killed.append(result.worker_pid)
            self.results.append(result)
            yield result
            if len(self.results) == self.stop_after:
                raise KeyboardInterrupt


def test_shards_in_process_resume_and_equal_one_run(model_dir, clt_dir, corpus, local_files, tmp_path):
    out = tmp_path / "features"
    args = (str(model_dir), str(clt_dir), corpus, out)
    first = Watched(LocalEngine(), stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        build_feature_dashboards(*args, config=CONFIG, engine=first, shards=5, progress=False)
    assert first.tasks == [[(0, 4), (4, 8), (8, 13), (13, 17), (17, 21)]]
    kept = sorted(p.name for p in (out / ".checkpoint").glob("shard-*"))
    assert kept == ["shard-0000000000-0000000004.safetensors", "shard-0000000004-0000000008.safetensors"]
    with pytest.raises(ValueError, match="made by another build"):
        other = DashboardConfig(**{**CONFIG.to_dict(), "n_top": 4})
        build_feature_dashboards(*args, config=other, engine=LocalEngine(), progress=False)

    second = Watched(LocalEngine())
    build_feature_dashboards(*args, config=CONFIG, engine=second, shards=5, progress=False)
    # only the documents no finished shard holds (8..21), cut into round(5 * 13 / 21) = 3 new shards
    assert second.tasks == [[(8, 12), (12, 17), (17, 21)]]
    assert folder_bytes(out) == local_files  # the checkpoint folder is gone, the files are the same


@pytest.mark.bridge
def test_shards_load_the_backend_asked_for(model_dir, clt_dir, corpus, tmp_path):
    """backend="bridge" with paths: the shards' workers and the merge load a TransformerBridge; the files
    are those of a one-process build on a bridge loaded here, byte for byte."""
    from tl_clt.batch.attribute_job import Loader
    from tl_clt.sites import TRANSFORMER_BRIDGE, sites_for

    paths = (str(model_dir), str(clt_dir))
    engine = Watched(LocalEngine())
    build_feature_dashboards(*paths, corpus, tmp_path / "s", config=CONFIG, engine=engine, shards=3,
                             backend="bridge", progress=False)  # fmt: skip
    model, clt = Loader(*paths, backend="bridge")()
    assert sites_for(model).backend == TRANSFORMER_BRIDGE and len(engine.results) == 3
    build_feature_dashboards(model, clt, corpus, tmp_path / "one", config=CONFIG, progress=False)
    assert folder_bytes(tmp_path / "s") == folder_bytes(tmp_path / "one")
    # a checkpoint's shards come from one backend: resuming with the other is refused
    with pytest.raises(KeyboardInterrupt):
        build_feature_dashboards(*paths, corpus, tmp_path / "r", config=CONFIG, shards=3, backend="bridge",
                                 engine=Watched(LocalEngine(), stop_after=1), progress=False)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"made by another build \(changed: \{'backend': \('bridge', 'hooked'\)"
    ):
        build_feature_dashboards(*paths, corpus, tmp_path / "r", config=CONFIG, shards=3, backend="hooked",
                                 engine=LocalEngine(), progress=False)  # fmt: skip


def test_a_one_shot_stream_cannot_be_sharded(model_dir, clt_dir, tmp_path):
    with pytest.raises(TypeError, match="read by document index"):
        build_feature_dashboards(
            str(model_dir), str(clt_dir), iter(DOCS), tmp_path / "o", engine=LocalEngine(), progress=False
        )


def test_cli_passes_engine_options(model_dir, clt_dir, corpus, tmp_path, monkeypatch, capsys):
    import tl_clt.dashboards as dashboards

    seen = {}
    monkeypatch.setattr(dashboards, "build_feature_dashboards", lambda *a, **k: seen.update(args=a, **k))
    argv = ["dashboards", "build", "--model", str(model_dir), "--clt", str(clt_dir), "--texts", corpus]
    argv += ["-o", str(tmp_path / "o"), "--engine", "ray", "--workers", "2", "--gpus-per-worker", "0.5"]
    assert main([*argv, "--shards", "6", "-q"]) == 0
    assert seen["args"][:2] == (str(model_dir), str(clt_dir))  # paths: the workers load them
    want = dict(engine="ray", workers=2, gpus_per_worker=0.5, shards=6, address=None, dtype="float32")
    assert {k: seen[k] for k in want} == {**want} and seen["backend"] is None  # None: the installed TL's
    assert main([*argv, "--shards", "6", "-q", "--backend", "bridge"]) == 0
    assert seen["backend"] == "bridge"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:8], "-o", str(tmp_path / "o"), "--workers", "2", "--shards", "2"])
    assert exit_info.value.code == 2 and "need --engine ray" in capsys.readouterr().err


# ------------------------------------------------------------------------ Ray
ray_cluster = pytest.fixture(scope="module")(local_ray)


def test_ray_two_workers_equal_local(ray_cluster, model_dir, clt_dir, corpus, local_files, tmp_path):
    out = tmp_path / "features"
    dash = build_feature_dashboards(
        str(model_dir), str(clt_dir), corpus, out, config=CONFIG, engine="ray", workers=2, progress=False
    )
    assert isinstance(dash, tl_clt.dashboards.FeatureDashboards)
    assert folder_bytes(out) == local_files


def test_ray_killed_worker_gives_the_same_files(
    ray_cluster, model_dir, clt_dir, corpus, local_files, tmp_path
):
    out = tmp_path / "features"
    with RayEngine(workers=2) as ray_engine:
        engine = Watched(ray_engine, kill_first=True)
        build_feature_dashboards(
            str(model_dir),
            str(clt_dir),
            corpus,
            out,
            config=CONFIG,
            engine=engine,
            checkpoint_every=0.0,  # the killed shard may resume from its own checkpoint
            progress=False,
        )
        pids = {int(name.rsplit(":", 1)[1]) for name in ray_engine.worker_names}
    assert folder_bytes(out) == local_files
    shards = sorted(r.task for r in engine.results)
    assert shards == sorted(engine.tasks[0]) and len(shards) == 8  # each shard once, none lost
    retried = [r for r in engine.results if r.attempts == 2]
    assert len(retried) == 1 and retried[0].worker_pid != engine.killed[0]
    assert len(pids) >= 2 and engine.killed[0] in pids  # (+ the replacement once it had loaded)
    assert not wait_gone(pids)  # the engine stopped its workers
