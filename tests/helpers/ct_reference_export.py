"""Run circuit-tracer's exporter on a saved tl_clt graph (with a python that has circuit-tracer).

usage: python ct_reference_export.py GRAPH_FILE TOKENIZER_DIR OUT_DIR SLUG SCAN NODE_T EDGE_T

Both libraries use the same adjacency layout, so circuit-tracer's `create_graph_files` can export
our graph; tests compare its file with ours and validate it against our schema.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import Graph
from circuit_tracer.utils.create_graph_files import create_graph_files
from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig
from safetensors import safe_open


def old_transformers_tokenizer(folder: str) -> str:
    """A copy of a tokenizer folder that transformers 4.x reads (5.x writes a class 4.x lacks)."""
    tmp = Path(tempfile.mkdtemp())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(folder) / name).is_file():
            shutil.copy(Path(folder) / name, tmp / name)
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg))
    return str(tmp)


def read_graph(path: str) -> dict:
    """The fields of a tl_clt graph file (safetensors tensors + JSON in its metadata; no tl_clt here)."""
    with safe_open(path, framework="pt") as f:
        fields = json.loads(f.metadata()["graph"])
        fields.update({k: f.get_tensor(k) for k in f.keys()})
    return fields


def main(pt, tokenizer_dir, out_dir, slug, scan, node_t, edge_t):
    g = read_graph(pt)
    n_layers = g["n_layers"]
    cfg = UnifiedConfig(
        n_layers=n_layers,
        d_model=1,
        d_head=1,
        n_heads=1,
        d_mlp=1,
        d_vocab=100_000,
        tokenizer_name=old_transformers_tokenizer(tokenizer_dir),
        model_name=scan,
        original_architecture="Qwen3ForCausalLM",
    )
    pairs = zip(g["logit_token_strs"], g["logit_tokens"].tolist(), strict=True)
    targets = [LogitTarget(s, int(t)) for s, t in pairs]
    graph = Graph(
        input_string="".join(g["token_strs"]),
        input_tokens=g["tokens"],
        active_features=g["active_features"],
        adjacency_matrix=g["adjacency"],
        cfg=cfg,
        selected_features=g["selected_features"],
        activation_values=g["activation_values"],
        logit_targets=targets,
        logit_probabilities=g["logit_probabilities"],
        scan=scan,
    )
    create_graph_files(
        graph, slug, out_dir, scan=scan, node_threshold=float(node_t), edge_threshold=float(edge_t)
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
