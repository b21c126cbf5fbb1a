"""Tables across the prompts of a batch run: the manifest, the features of every pruned graph, and which
features recur.

`features.parquet` has one row per (prompt, feature node of its pruned graph):

| column | meaning |
|---|---|
| `id` | the prompt's id (joins the manifest) |
| `node` | node id `F:{layer}:{pos}:{feature}` |
| `layer`, `pos`, `feature` | the feature node |
| `pos_from_end` | `pos` as a negative index (-1: the last token), to line up prompts of other lengths |
| `token`, `token_id` | the prompt token at `pos` |
| `activation` | the feature's activation there |
| `influence` | its influence on the logits (`AttributionGraph.prune`'s node influence) |
| `logit_edge` | its direct edge to the top logit (the most probable target), in the full graph |

Both tables are pandas DataFrames; DuckDB queries them by variable name, or the Parquet files directly
(`SELECT ... FROM 'DIR/features.parquet'`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tl_clt.batch.layout import RunDir, write_atomic
from tl_clt.batch.manifest import DONE, INT_FIELDS, Manifest

FEATURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("node", pa.string()),
        ("layer", pa.int32()),
        ("pos", pa.int32()),
        ("pos_from_end", pa.int32()),
        ("token", pa.string()),
        ("token_id", pa.int64()),
        ("feature", pa.int32()),
        ("activation", pa.float32()),
        ("influence", pa.float32()),
        ("logit_edge", pa.float32()),
    ]
)
MANIFEST_COLUMNS = ["id", "prompt", "status", "error"]


def feature_table(graph, pruned, prompt_id: str) -> pa.Table:
    """The rows of `features.parquet` for one prompt: the feature nodes of `pruned = graph.prune(...)`."""
    kept = pruned.node_mask[: graph.n_features].nonzero().flatten()
    keys = graph.feature_keys[kept]
    layer, pos, feature = (keys[:, i].tolist() for i in range(3))
    columns = {
        "id": [prompt_id] * len(kept),
        "node": [f"F:{a}:{b}:{c}" for a, b, c in zip(layer, pos, feature)],
        "layer": layer,
        "pos": pos,
        "pos_from_end": [p - graph.n_pos for p in pos],
        "token": [graph.token_strs[p] for p in pos],
        "token_id": graph.tokens[pos].tolist() if pos else [],
        "feature": feature,
        "activation": graph.activation_values[graph.selected_features[kept]].tolist(),
        "influence": pruned.influence[kept].tolist(),
        "logit_edge": graph.adjacency[graph.logit_index(0), kept].tolist(),
    }
    return pa.table(columns, schema=FEATURE_SCHEMA)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    """`table` to `path`, atomically."""
    return write_atomic(path, lambda f: pq.write_table(table, f))


# ------------------------------------------------------------------------ reading
@dataclass
class BatchTables:
    """A batch run's tables: `manifest` (one row per prompt) and `features` (one row per prompt and
    feature node of its pruned graph), pandas DataFrames."""

    manifest: "pd.DataFrame"  # noqa: F821
    features: "pd.DataFrame"  # noqa: F821
    folder: Path

    @property
    def n_done(self) -> int:
        return int((self.manifest["status"] == DONE).sum()) if len(self.manifest) else 0

    def __repr__(self) -> str:
        n = len(self.manifest)
        failed = n - self.n_done
        return (
            f"BatchTables({self.folder}: {n} prompts, {self.n_done} done, {failed} failed; "
            f"{len(self.features)} feature rows)"
        )


def manifest_frame(records: list[dict]):
    """The manifest DataFrame of `records` (the last record per id)."""
    import pandas as pd

    latest = {r["id"]: r for r in records}
    frame = pd.DataFrame(list(latest.values()))
    for column in MANIFEST_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    for column in INT_FIELDS:  # missing for failed prompts: nullable ints, not floats
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def _features_for(run: RunDir, done: list[dict], previous: pa.Table | None) -> pa.Table:
    """features.parquet's table for the `done` records: the rows `previous` has of those prompts, plus
    the per-prompt files of the others."""
    tables, have = [], set()
    if previous is not None and previous.num_rows:
        wanted = pa.array([r["id"] for r in done], pa.string())
        kept = previous.filter(pc.is_in(previous.column("id"), value_set=wanted))
        have = set(pc.unique(kept.column("id")).to_pylist())
        tables.append(kept)
    for record in done:
        if record["id"] not in have and record.get("features"):
            tables.append(pq.read_table(run.root / record["features"], schema=FEATURE_SCHEMA))
    return pa.concat_tables(tables) if tables else FEATURE_SCHEMA.empty_table()


def _covers(table: pa.Table, done: list[dict]) -> bool:
    """Does `table` hold the rows of exactly the done prompts that have feature nodes?"""
    expected = {r["id"] for r in done if r.get("n_pruned_features")}
    return set(pc.unique(table.column("id")).to_pylist()) == expected


def _arrow_safe(frame):
    """Columns pyarrow cannot type (mixed types in an extra field) become JSON text."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            try:
                pa.array(frame[column])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                frame[column] = [json.dumps(v) if v is not None else None for v in frame[column]]
    return frame


def write_tables(run: RunDir) -> tuple[Path, Path]:
    """Rewrite `manifest.parquet` and `features.parquet` from the manifest and the per-prompt parts."""
    records = Manifest(run.manifest).read()
    frame = manifest_frame(records)
    write_parquet(pa.Table.from_pandas(_arrow_safe(frame), preserve_index=False), run.manifest_table)
    done = [r for r in frame.to_dict("records") if r["status"] == DONE]
    previous = pq.read_table(run.features_table) if run.features_table.is_file() else None
    write_parquet(_features_for(run, done, previous), run.features_table)
    return run.manifest_table, run.features_table


def load_batch(folder: str | os.PathLike) -> BatchTables:
    """The tables of the batch run in `folder` (also of one still running, or stopped part way).

    The manifest comes from `manifest.jsonl` (the record of what finished); the features from
    `features.parquet` when it covers exactly the finished prompts, else from the per-prompt files.
    """
    run = RunDir(folder)
    if not run.manifest.is_file():
        raise FileNotFoundError(f"No batch run in {run.root}: {run.manifest.name} is missing.")
    records = Manifest(run.manifest).read()
    manifest = manifest_frame(records)
    done = [r for r in manifest.to_dict("records") if r["status"] == DONE]
    table = pq.read_table(run.features_table) if run.features_table.is_file() else None
    if table is None or not _covers(table, done):
        table = _features_for(run, done, None)
    return BatchTables(manifest=manifest, features=table.to_pandas(), folder=run.root)


def recurring_features(tables: BatchTables | str | os.PathLike, *, min_prompts: int = 1):
    """Which features matter in most prompts: one row per (layer, feature) of the pruned graphs.

    Per prompt, a feature's influence and logit edge are summed over the positions where it is a node
    and its activation is the largest there. Columns: `layer`, `feature`, `n_prompts` (prompts whose
    pruned graph has it), `share_of_prompts` (of the finished prompts), `mean_influence`, `max_influence`,
    `mean_activation`, `mean_logit_edge` (means over those prompts), `n_nodes` (positions, all prompts).
    Sorted by `n_prompts`, then `mean_influence`, both descending; rows with fewer than `min_prompts`
    prompts are left out.
    """
    import pandas as pd

    if not isinstance(tables, BatchTables):
        tables = load_batch(tables)
    f = tables.features
    columns = [
        "layer",
        "feature",
        "n_prompts",
        "share_of_prompts",
        "mean_influence",
        "max_influence",
        "mean_activation",
        "mean_logit_edge",
        "n_nodes",
    ]
    if f.empty:
        return pd.DataFrame(columns=columns)
    per_prompt = f.groupby(["id", "layer", "feature"], as_index=False).agg(
        influence=("influence", "sum"),
        activation=("activation", "max"),
        logit_edge=("logit_edge", "sum"),
        n_nodes=("pos", "size"),
    )
    out = per_prompt.groupby(["layer", "feature"], as_index=False).agg(
        n_prompts=("id", "size"),
        mean_influence=("influence", "mean"),
        max_influence=("influence", "max"),
        mean_activation=("activation", "mean"),
        mean_logit_edge=("logit_edge", "mean"),
        n_nodes=("n_nodes", "sum"),
    )
    out["share_of_prompts"] = out["n_prompts"] / max(tables.n_done, 1)
    out = out[out["n_prompts"] >= min_prompts]
    out = out.sort_values(["n_prompts", "mean_influence"], ascending=False, kind="stable")
    return out[columns].reset_index(drop=True)
