"""tl_clt: circuit tracing on Qwen3 with cross-layer transcoders, as a TransformerLens plugin."""

from tl_clt.attribution import attribute
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.export import graph_to_dict, validate_graph_json, write_graph_folder
from tl_clt.graph import AttributionGraph, GraphScores
from tl_clt.hooks import check_compatible, preserve, replacement_hooks
from tl_clt.loading import load_qwen3
from tl_clt.plot import plot_graph
from tl_clt.prompts import to_tokens
from tl_clt.replacement import ReconstructionReport, feature_activations, reconstruction_report

__all__ = [
    "AttributionGraph",
    "CrossLayerTranscoder",
    "GraphScores",
    "ReconstructionReport",
    "attribute",
    "check_compatible",
    "feature_activations",
    "graph_to_dict",
    "load_qwen3",
    "plot_graph",
    "preserve",
    "reconstruction_report",
    "replacement_hooks",
    "to_tokens",
    "validate_graph_json",
    "write_graph_folder",
]
__version__ = "0.1.0"
