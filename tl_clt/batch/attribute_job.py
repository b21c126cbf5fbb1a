"""The attribution job: load the model and CLT once per worker, then per prompt attribute, prune, score and
write the graph files and that prompt's feature rows (each file atomically), returning the manifest fields.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tl_clt.batch.layout import RunDir, write_atomic
from tl_clt.batch.sources import PromptItem
from tl_clt.batch.tables import feature_table, write_parquet
from tl_clt.loading import check_backend

DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass(frozen=True)
class AttributeOptions:
    """The `attribute` and `prune` options of a batch run (defaults as in `tl_clt.attribute` and
    `AttributionGraph.prune`)."""

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    max_feature_nodes: int | None = None
    batch_size: int = 64
    update_interval: int = 4
    node_threshold: float = 0.8
    edge_threshold: float = 0.98

    def __post_init__(self):
        for name in ("max_n_logits", "max_feature_nodes", "batch_size", "update_interval"):
            value = getattr(self, name)
            if value is None and name == "max_feature_nodes":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        for name, low_open in (
            ("desired_logit_prob", True),
            ("node_threshold", False),
            ("edge_threshold", False),
        ):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (0 < value <= 1 if low_open else 0 <= value <= 1)
            if not ok:
                raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}.")

    def attribute_kwargs(self) -> dict:
        d = asdict(self)
        return {
            k: d[k]
            for k in (
                "max_n_logits",
                "desired_logit_prob",
                "max_feature_nodes",
                "batch_size",
                "update_interval",
            )
        }

    def prune_kwargs(self) -> dict:
        return {"node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold}


@dataclass(frozen=True)
class Loader:
    """The job's setup: the model and CLT as given (local engine), or loaded from paths / hub ids.

    `dtype` (a name, default float32), `device` (default: cuda when this worker sees a GPU) and `backend`
    (`load_qwen3`'s; default None: the installed TransformerLens's) apply to what is loaded; `threads` sets
    torch's intra-op threads in the worker (Ray: its CPUs).
    """

    model: object
    clt: object
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    backend: str | None = None

    def __call__(self):
        import torch

        from tl_clt.clt import CrossLayerTranscoder
        from tl_clt.loading import load_qwen3

        if self.threads:
            torch.set_num_threads(self.threads)
        dtype = getattr(torch, self.dtype or "float32")
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, clt = self.model, self.clt
        if isinstance(model, (str, os.PathLike)):
            model = load_qwen3(model, device=device, dtype=dtype, backend=self.backend)
        if isinstance(clt, (str, os.PathLike)):
            clt = CrossLayerTranscoder.from_pretrained(clt, device=device, dtype=dtype)
        return model, clt


@dataclass(frozen=True)
class AttributeSetup:
    """A worker's context for attribution: what `loader` loads and one `tl_clt.Workspace`, so that its
    graphs reuse their work memory instead of faulting in fresh GBs per prompt (freed with the worker)."""

    loader: Loader

    def __call__(self):
        from tl_clt.workspace import Workspace

        model, clt = self.loader()
        return model, clt, Workspace()


@dataclass(frozen=True)
class AttributePrompt:
    """`fn(context, item)` of the job: one prompt -> files in the run folder + its manifest fields."""

    out_dir: str
    options: AttributeOptions
    save_graph: bool = True
    scan: str | None = None

    def __call__(self, context, item: PromptItem) -> dict:
        import time

        from tl_clt.attribution import attribute
        from tl_clt.export import graph_to_dict

        model, clt, workspace = context
        run = RunDir(self.out_dir)
        start = time.perf_counter()
        kwargs = self.options.attribute_kwargs()
        graph = attribute(model, clt, item.prompt, **kwargs, verbose=False, workspace=workspace)
        seconds_attribute = time.perf_counter() - start
        pruned = graph.prune(**self.options.prune_kwargs())
        scores = graph.scores()
        stem = item.stem
        data = graph_to_dict(
            pruned,  # already pruned: its thresholds are in pruned.meta["pruning_settings"]
            stem,
            scan=self.scan,
            prompt=item.text,
            extra_metadata={
                "generation_settings": self.options.attribute_kwargs(),
                "batch": {"id": item.id, **item.extra},
            },
        )
        text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        write_atomic(run.json_path(stem), lambda f: f.write(text.encode("utf-8")))
        features = feature_table(graph, pruned, item.id)
        write_parquet(features, run.features_path(stem))
        if self.save_graph:
            graph.save(run.graph_path(stem))
        G = pruned.to_networkx()
        return {
            "graph": run.relative(run.graph_path(stem)) if self.save_graph else None,
            "json": run.relative(run.json_path(stem)),
            "features": run.relative(run.features_path(stem)),
            "n_tokens": graph.n_pos,
            "n_active_features": int(graph.meta.get("n_active_features", len(graph.active_features))),
            "n_feature_rows": graph.n_features,
            "n_pruned_features": features.num_rows,
            "n_pruned_nodes": G.number_of_nodes(),
            "n_pruned_edges": G.number_of_edges(),
            "n_logits": graph.n_logits,
            "top_token": graph.logit_token_strs[0],
            "top_token_id": int(graph.logit_tokens[0]),
            "top_probability": float(graph.logit_probabilities[0]),
            "replacement_score": scores.replacement,
            "completeness_score": scores.completeness,
            "seconds_attribute": seconds_attribute,
        }


def check_sources(
    model, clt, engine: str, dtype: str | None, device: str | None, backend: str | None = None
) -> None:
    """dtype is a known name; on Ray the model and the CLT are paths / hub ids; dtype and device only
    with something to load; backend a known one, and only with a model to load."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (a name), got {dtype!r}.")
    check_backend(backend)
    if backend is not None and not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            "backend= applies when the model is loaded from a path or hub id; this model is already "
            f"loaded (a {type(model).__name__}): leave backend= out, or pass the model's path."
        )
    for name, obj in (("model", model), ("clt", clt)):
        is_path = isinstance(obj, (str, os.PathLike))
        if engine == "ray" and not is_path:
            raise TypeError(
                f'engine="ray" loads the {name} in each worker: pass the {name} as a path or hub id (the '
                f"folder or name you loaded it from), not a loaded {type(obj).__name__}."
            )
        if not is_path and (dtype is not None or device is not None):
            raise ValueError(
                f"dtype= and device= apply when the {name} is loaded from a path or hub id; this {name} is "
                "already loaded: convert it yourself, or pass its path."
            )


def source_name(obj) -> str:
    """How the run file names a model or CLT: its path / hub id, or a loaded object's name."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj).expanduser()
        return str(path.resolve()) if path.exists() else str(obj)
    name = getattr(getattr(obj, "cfg", None), "model_name", None) or getattr(obj, "path", None)
    return str(Path(name).resolve()) if name and Path(str(name)).exists() else str(name)
