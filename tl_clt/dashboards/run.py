"""build_feature_dashboards(): the whole build, in this process or in corpus shards on an engine's workers.

`engine="local"` (the default): one `build_state` over the corpus, checkpointed into `OUT/.checkpoint/`,
then `write_dashboards`. `engine="ray"` (or any engine object of `tl_clt.batch`): the corpus in shards,
merged exactly in the driver. The workers are the batch engine's (`tl_clt.batch.engines`): each loads the
model and the CLT once (`Loader`, from paths or hub ids) and builds one shard's `DashboardState` per task
(`BuildShard`), saved atomically to `OUT/.checkpoint/shard-{start}-{stop}.safetensors` (every
`checkpoint_every` seconds and at the end; a retried shard resumes from it). The driver merges each
finished shard's state as it arrives (`DashboardState.merge`: exact, in any order; it refuses overlapping
documents, so no shard counts twice), then loads the model and the CLT itself and writes the files.

Resuming: `OUT/.checkpoint/shards.json` names the build (model, CLT, dtype, settings, corpus, documents);
a rerun of the same build reuses every shard file it finds (a finished one, or the documents a partial one
covers) and splits only the documents left over into new shards, so the workers' count may change between
runs. The corpus must be readable by index on every worker: a list, a `.txt`/`.jsonl` path (which every
worker must see, like `OUT`) or a `datasets.Dataset`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tl_clt import files
from tl_clt.dashboards.builder import CHECKPOINT_DIR, build_state, shard_ranges, write_dashboards
from tl_clt.dashboards.corpus import Corpus, DatasetCorpus, SequenceCorpus, TextFileCorpus, open_corpus
from tl_clt.dashboards.state import DashboardConfig, DashboardState

SHARDS_FILE = "shards.json"
SHARD_GLOB = "shard-*.safetensors"


def shard_path(folder: str | os.PathLike, start: int, stop: int) -> Path:
    return Path(folder) / f"shard-{start:010d}-{stop:010d}.safetensors"


@dataclass(frozen=True)
class BuildShard:
    """`fn(context, (start, stop))` of the job: one shard's state, checkpointed into `folder`."""

    corpus: Corpus
    config: DashboardConfig
    folder: str
    checkpoint_every: float = 300.0

    def __call__(self, context, shard: tuple[int, int]) -> dict:
        model, clt = context
        start, stop = shard
        path = shard_path(self.folder, start, stop)
        state = build_state(
            model,
            clt,
            self.corpus,
            self.config,
            start=start,
            stop=stop,
            checkpoint=path,
            checkpoint_every=self.checkpoint_every,
            resume=True,
            progress=False,
        )
        return {"path": str(path), "n_tokens": state.n_tokens, "ranges": state.ranges}


def _indexable(corpus: Corpus, engine_name: str) -> int:
    """The corpus's number of documents; TypeError for corpora a worker cannot read by index."""
    if isinstance(corpus, TextFileCorpus):
        corpus._index_lines()
    if not isinstance(corpus, (SequenceCorpus, TextFileCorpus, DatasetCorpus)) or corpus.n_docs is None:
        raise TypeError(
            f'engine="{engine_name}" builds dashboards in shards that workers read by document index: pass '
            "the corpus as a list of strings, a .txt/.jsonl path or a datasets.Dataset, not a "
            f'{type(corpus).__name__} (a one-shot iterator or an iterable dataset); or use engine="local".'
        )
    return corpus.n_docs


def _shard_ranges_of(path: Path) -> list[list[int]]:
    """The document ranges a shard file holds (from its header, without loading its tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["state"])["ranges"]


def _finished_pieces(folder: Path, n_docs: int) -> list[tuple[int, int, Path]]:
    """Disjoint (start, stop, file) of the shard files in `folder`; unreadable or overlapping ones are
    deleted (a rerun builds their documents again)."""
    found = []
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            ranges = _shard_ranges_of(path)
        except Exception:  # noqa: BLE001 - a file we cannot read is built again
            ranges = None
        if ranges and len(ranges) == 1 and 0 <= ranges[0][0] < ranges[0][1] <= n_docs:
            found.append((ranges[0][0], ranges[0][1], path))
        else:
            path.unlink(missing_ok=True)
    kept: list[tuple[int, int, Path]] = []
    for start, stop, path in sorted(found, key=lambda p: (p[0], -p[1])):
        if kept and start < kept[-1][1]:
            path.unlink(missing_ok=True)
        else:
            kept.append((start, stop, path))
    return kept


def _new_shards(pieces: list[tuple[int, int, Path]], n_docs: int, n_shards: int) -> list[tuple[int, int]]:
    """The documents no piece covers, cut into about `n_shards * (their share of the corpus)` shards."""
    gaps, at = [], 0
    for start, stop, _ in pieces:
        if start > at:
            gaps.append((at, start))
        at = stop
    if at < n_docs:
        gaps.append((at, n_docs))
    out = []
    for a, b in gaps:
        k = max(1, round(n_shards * (b - a) / n_docs))
        out.extend((a + x, a + y) for x, y in shard_ranges(b - a, k))
    return out


def build_sharded(
    model,
    clt,
    corpus: Corpus,
    n_docs: int,
    out: Path,
    *,
    runner,
    config: DashboardConfig,
    max_docs: int | None,
    shards: int | None,
    resume: bool,
    checkpoint_every: float,
    dtype: str | None,
    device: str | None,
    backend: str | None,
    transcoder_id: str | None,
    progress: bool,
):
    """The sharded build behind `build_feature_dashboards` for an engine (see the module docstring)."""
    from tl_clt.batch.attribute_job import Loader, source_name
    from tl_clt.dashboards.reader import FeatureDashboards

    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ValueError(f"shards must be None or an int >= 1, got {shards!r}.")
    if max_docs is not None:
        n_docs = min(n_docs, max_docs)
    if n_docs < 1:
        raise ValueError("The corpus is empty: pass at least one text.")
    n_shards = shards or 4 * max(1, int(getattr(runner, "workers", 1)))

    folder = out / CHECKPOINT_DIR
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    build = {
        "model": source_name(model),
        "clt": source_name(clt),
        "backend": _backend_name(model, backend),
        "dtype": dtype or "float32",
        "config": config.to_dict(),
        "corpus": corpus.describe(),
        "n_docs": n_docs,
    }
    _check_same_build(folder, build)

    pieces = _finished_pieces(folder, n_docs)
    todo = _new_shards(pieces, n_docs, n_shards)
    merged: DashboardState | None = None

    def add(path: Path) -> None:
        nonlocal merged
        state = DashboardState.load(path)
        merged = state if merged is None else merged.merge(state)

    for _, _, path in pieces:
        add(path)
    bar = tqdm(total=n_docs, initial=n_docs - sum(b - a for a, b in todo), unit="doc", disable=not progress)
    bar.set_description(f"dashboards ({runner.name}, {len(todo)} shards)")
    failed = []
    try:
        if todo:
            setup = Loader(
                model, clt, dtype=dtype, device=device, threads=runner.threads_per_worker, backend=backend
            )
            fn = BuildShard(corpus, config, str(folder), checkpoint_every)
            with contextlib.closing(runner.map(setup, fn, todo)) as results:
                for result in results:
                    start, stop = result.task
                    if not result.ok:
                        failed.append(f"documents {start}..{stop}: {result.error}")
                        continue
                    if result.value["ranges"] != [[start, stop]]:
                        raise RuntimeError(f"Shard {start}..{stop} came back as {result.value['ranges']}.")
                    add(Path(result.value["path"]))
                    bar.update(stop - start)
    finally:
        bar.close()
    if failed:
        raise RuntimeError(
            f"{len(failed)} dashboard shard(s) failed (finished shards are kept in {folder}; fix the cause "
            "and run again to build only these): " + "; ".join(failed)
        )
    assert merged is not None and merged.ranges == [[0, n_docs]], merged and merged.ranges
    # what is loaded already is kept as it is
    loaded = Loader(model, clt, dtype=dtype, device=device, backend=backend)()
    write_dashboards(merged, *loaded, corpus, out, transcoder_id=transcoder_id, progress=progress)
    shutil.rmtree(folder, ignore_errors=True)
    return FeatureDashboards.from_pretrained(out)


def _backend_name(model, backend: str | None) -> str:
    """ "hooked" or "bridge": what `model` is, or what a path is loaded as (`backend`, None: the installed
    transformer-lens's); shards of one build all come from it."""
    from tl_clt.loading import default_backend
    from tl_clt.sites import TRANSFORMER_BRIDGE, backend_of

    if isinstance(model, (str, os.PathLike)):
        return backend or default_backend()
    return "bridge" if backend_of(model) == TRANSFORMER_BRIDGE else "hooked"


def _check_same_build(folder: Path, build: dict) -> None:
    path = folder / SHARDS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        old.setdefault("backend", "hooked")  # checkpoints from before the key: 4.x could not build then
        if old != json.loads(json.dumps(build)):
            changed = {k: (old.get(k), v) for k, v in build.items() if old.get(k) != v}
            raise ValueError(
                f"The checkpoint in {folder} was made by another build (changed: {changed}). Delete it, or "
                "pass resume=False to start over."
            )
    else:
        files.write_text(path, json.dumps(build, indent=1), what="dashboard shards file")


def build_feature_dashboards(
    model,
    clt,
    texts: Any,
    out_dir: str | os.PathLike,
    *,
    column: str = "text",
    max_docs: int | None = None,
    config: DashboardConfig | None = None,
    resume: bool = True,
    checkpoint_every: float = 300.0,
    transcoder_id: str | None = None,
    progress: bool = True,
    engine="local",
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    shards: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    backend: str | None = None,
    **config_kwargs,
):
    """Build dashboards of every feature of `clt` from `texts` into `out_dir`; returns FeatureDashboards.

    `texts`: a list of strings, a text file (one document per line; `.jsonl` with `column`), a
    `datasets.Dataset` and its `column`, or any iterable of strings; `max_docs` documents at most.
    Options of `DashboardConfig` can be given as keywords (`context_len=64, n_top=20, ...`). The
    build checkpoints into `out_dir/.checkpoint/` and resumes from it when interrupted
    (`resume=False` starts over); the checkpoint is removed when the files are written. `model` and
    `clt` are loaded objects, or paths / hub ids loaded here with `dtype`, `device` and `backend`
    (`load_qwen3`'s; default the installed TransformerLens's: "hooked" on 3.x, "bridge" on 4.x).

    `engine="ray"` (or an engine object of `tl_clt.batch`) builds the corpus in `shards` document ranges
    (default 4 per worker) on `workers` Ray actors that load the model and the CLT once, and merges their
    states exactly: the files are those of `engine="local"`, byte for byte (on CPU). The model and the CLT
    are then paths or hub ids (loaded with `dtype`, default float32, and `device`); the corpus a list, a
    .txt/.jsonl path or a `datasets.Dataset`; `address`, `cpus_per_worker`, `gpus_per_worker` as in
    `tl_clt.attribute_many`. A killed worker's shard is built again elsewhere; finished shards are kept
    in the checkpoint folder and a rerun builds only the rest (see `tl_clt.dashboards.run`).
    """
    from tl_clt.dashboards.reader import FeatureDashboards

    if config is not None and config_kwargs:
        raise TypeError("Pass either config=DashboardConfig(...) or its fields as keywords, not both.")
    config = config or DashboardConfig(**config_kwargs)
    if max_docs is not None and (isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1):
        raise ValueError(f"max_docs must be None or an int >= 1, got {max_docs!r}.")
    from tl_clt.batch.attribute_job import Loader, check_sources
    from tl_clt.batch.engines import make_engine

    engine_name = getattr(engine, "name", engine)
    check_sources(model, clt, engine_name, dtype, device, backend)  # these checks run before Ray is imported
    if engine != "local":  # the corpus, opened once, is read by index on the workers
        corpus = open_corpus(texts, column)
        n_docs = _indexable(corpus, engine_name)
    runner = make_engine(
        engine, workers, address=address, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker
    )
    out = files.check_output_folder(out_dir, what="dashboards folder")
    if engine != "local":
        return build_sharded(
            model,
            clt,
            corpus,
            n_docs,
            out,
            runner=runner,
            config=config,
            max_docs=max_docs,
            shards=shards,
            resume=resume,
            checkpoint_every=checkpoint_every,
            dtype=dtype,
            device=device,
            backend=backend,
            transcoder_id=transcoder_id,
            progress=progress,
        )
    if shards is not None:
        raise ValueError('shards= splits the corpus between workers; engine="local" builds it in one piece.')
    # paths / hub ids are loaded here
    model, clt = Loader(model, clt, dtype=dtype, device=device, backend=backend)()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    ckpt_dir.mkdir(exist_ok=True)
    corpus = open_corpus(texts, column)
    state = build_state(
        model,
        clt,
        corpus,
        config,
        stop=max_docs,
        checkpoint=ckpt_dir / "state.safetensors",
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
    )
    write_dashboards(state, model, clt, corpus, out, transcoder_id=transcoder_id, progress=progress)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return FeatureDashboards.from_pretrained(out)
