"""attribute_many(): attribution graphs of many prompts, resumable, in this process or on Ray workers."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from datetime import datetime, timezone

from tqdm.auto import tqdm

from tl_clt.batch.attribute_job import (
    AttributeOptions,
    AttributePrompt,
    AttributeSetup,
    Loader,
    check_sources,
    source_name,
)
from tl_clt.batch.engines import TaskResult, make_engine
from tl_clt.batch.layout import RunDir
from tl_clt.batch.manifest import DONE, FAILED, Manifest
from tl_clt.batch.sources import PromptItem, read_prompts
from tl_clt.batch.tables import BatchTables, load_batch, write_tables

Source = str | os.PathLike


def attribute_many(
    model,
    clt,
    prompts,
    out_dir: str | os.PathLike,
    *,
    engine="local",
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    update_interval: int = 4,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    save_graphs: bool = True,
    scan: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    backend: str | None = None,
    column: str | None = None,
    id_column: str | None = None,
    split: str = "train",
    retry_failed: bool = False,
    verbose: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> BatchTables:
    """Attribute every prompt into `out_dir`; returns the run's tables (`tl_clt.load_batch(out_dir)`).

    model, clt: loaded objects (engine "local" only) or paths / hub ids, which each worker loads once
        (with `dtype`, default "float32", `device`, default cuda when the worker has a GPU, and `backend`,
        `load_qwen3`'s, default the installed TransformerLens's: "hooked" on 3.x, "bridge" on 4.x).
    prompts: a list of strings, a .txt file (one prompt per line), a .jsonl file (`prompt`, optional `id`,
        other fields kept in the manifest and the graph JSON), or a `datasets.Dataset` / dataset folder or
        name with `column=` (and `id_column=`, `split=`). See `tl_clt.batch.sources`.
    engine: "local" (this process, one prompt after the other) or "ray" (`workers` Ray actors, each with
        `cpus_per_worker` CPUs and `gpus_per_worker` GPUs; `address` None starts Ray on this machine or uses
        this process's Ray connection, "auto" or "ray://..." joins a cluster, whose workers must see
        `out_dir`).
    max_n_logits ... update_interval: as in `tl_clt.attribute`; node_threshold, edge_threshold: as in
        `AttributionGraph.prune`, for the JSON and the feature table. save_graphs: also write the full
        graph (`.pt`, `AttributionGraph.load`); scan: the model id written into the JSON.

    Writes `graphs/{id}.pt` and `.json`, `features/{id}.parquet`, a line per prompt in `manifest.jsonl`
    (status, error, top logit and probability, scores, timings, worker) and, at the end (also after
    Ctrl-C), `manifest.parquet` and `features.parquet`. A rerun with the same options skips the prompts
    already done (and the failed ones unless `retry_failed`). A prompt that raises is recorded as failed
    and the run goes on. `on_record(record)` is called with each manifest record as it is written.
    """
    options = AttributeOptions(
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        max_feature_nodes=max_feature_nodes,
        batch_size=batch_size,
        update_interval=update_interval,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )
    # before Ray is imported
    check_sources(model, clt, getattr(engine, "name", engine), dtype, device, backend)
    runner = make_engine(
        engine, workers, address=address, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker
    )
    items = read_prompts(prompts, column=column, id_column=id_column, split=split)
    run = RunDir(out_dir)
    run.create()
    with run.lock():
        settings = {
            **vars(options),
            "save_graphs": bool(save_graphs),
            "scan": scan,
            "dtype": _dtype_name(model, dtype),
        }
        sources = {"model": source_name(model), "clt": source_name(clt)}
        manifest, todo = _open_run(run, items, settings, sources, retry_failed)
        setup = AttributeSetup(
            Loader(model, clt, dtype=dtype, device=device, threads=runner.threads_per_worker, backend=backend)
        )
        fn = AttributePrompt(str(run.root), options, save_graph=save_graphs, scan=scan)
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="prompts", disable=not verbose)
        counts = {DONE: 0, FAILED: 0}
        try:
            if todo:
                with contextlib.closing(runner.map(setup, fn, todo)) as results:
                    _write_records(results, manifest, bar, counts, on_record)
        finally:
            bar.close()
            run.remove_temp_files()
            write_tables(run)
            if verbose:
                print(
                    f"{run.root}: {counts[DONE]} done, {counts[FAILED]} failed, "
                    f"{len(items) - len(todo)} already finished before this run",
                    file=sys.stderr,
                )
    return load_batch(run.root)


def _write_records(results, manifest: Manifest, bar, counts: dict, on_record) -> None:
    """Append each result's record to the manifest as it arrives (the moment its prompt counts as done)."""
    for result in results:
        record = _record(result)
        manifest.append(record)
        counts[record["status"]] += 1
        bar.update()
        bar.set_postfix(done=counts[DONE], failed=counts[FAILED], refresh=False)
        if on_record is not None:
            on_record(record)


def _open_run(
    run: RunDir, items: list[PromptItem], settings: dict, sources: dict, retry_failed: bool
) -> tuple[Manifest, list[PromptItem]]:
    """Check a rerun against the folder (options, prompts), clean up after a crash; the prompts to do."""
    manifest = Manifest(run.manifest)
    manifest.repair()
    finished = manifest.latest()
    for warning in run.check_settings(settings, sources, fresh=not finished):
        warnings.warn(warning, stacklevel=3)
    _check_same_prompts(items, finished, run)
    run.remove_temp_files()
    skip = {DONE} if retry_failed else {DONE, FAILED}
    return manifest, [item for item in items if finished.get(item.id, {}).get("status") not in skip]


def _check_same_prompts(items: list[PromptItem], finished: dict[str, dict], run: RunDir) -> None:
    """A rerun must give each finished id the same prompt (ids from positions shift when a list changes)."""
    for item in items:
        old = finished.get(item.id, {}).get("prompt")
        if old is not None and old != item.text:
            raise ValueError(
                f"Prompt id {item.id!r} was {old!r} in the earlier run in {run.root} and is now "
                f"{item.text!r}; default ids are positions, so adding or removing prompts in the middle "
                "shifts them: append new prompts at the end, give each prompt an id (JSONL), or use another "
                "folder."
            )


def _dtype_name(model, dtype: str | None) -> str:
    if not isinstance(model, (str, os.PathLike)):
        return str(model.cfg.dtype).removeprefix("torch.")
    return dtype or "float32"


def _record(result: TaskResult) -> dict:
    """The manifest record of a finished task."""
    item: PromptItem = result.task
    record = {
        "id": item.id,
        "prompt": item.text,
        "status": DONE if result.ok else FAILED,
        "error": result.error,
    }
    if result.ok:
        record.update(result.value)
    else:
        record["traceback"] = result.traceback
    record.update(
        attempts=result.attempts,
        worker=result.worker,
        worker_pid=result.worker_pid,
        seconds_total=result.seconds,
        cpu_seconds=result.cpu_seconds,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    )
    record.update(item.extra)
    return record
