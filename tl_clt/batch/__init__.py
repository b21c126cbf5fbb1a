"""Many prompts, many workers: `attribute_many`, the run folder's tables, and the engines behind them.

    tables = tl_clt.attribute_many(model_dir, clt_dir, "prompts.jsonl", "runs/x", engine="ray", workers=2)
    tables = tl_clt.load_batch("runs/x")          # .manifest, .features: pandas DataFrames
    tl_clt.recurring_features(tables)             # which features matter in most prompts

Modules: `sources` (prompt lists and files -> ids), `layout` (the run folder, atomic writes),
`manifest` (the append-only record of finished prompts), `engines` (local and Ray workers),
`attribute_job` (what a worker does per prompt), `run` (the driver), `tables` (cross-prompt tables).
"""

from tl_clt.batch.engines import LocalEngine, RayEngine, TaskResult, make_engine
from tl_clt.batch.run import attribute_many
from tl_clt.batch.sources import PromptItem, read_prompts
from tl_clt.batch.tables import BatchTables, load_batch, recurring_features

__all__ = [
    "BatchTables",
    "LocalEngine",
    "PromptItem",
    "RayEngine",
    "TaskResult",
    "attribute_many",
    "load_batch",
    "make_engine",
    "read_prompts",
    "recurring_features",
]
