"""tl_clt: circuit tracing on Qwen3 with cross-layer transcoders, as a TransformerLens plugin."""

from tl_clt.attribution import attribute
from tl_clt.batch import BatchTables, attribute_many, load_batch, recurring_features
from tl_clt.circuit import plot_circuit
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.dashboards import FeatureCard, FeatureDashboards, build_feature_dashboards
from tl_clt.export import graph_to_dict, validate_graph_json
from tl_clt.fingerprints import GraphMismatchWarning
from tl_clt.frontend import write_graph_folder
from tl_clt.generation import generate
from tl_clt.graph import AttributionGraph, GraphScores
from tl_clt.hooks import UserHookWarning, check_compatible, preserve
from tl_clt.loading import default_backend, load_qwen3
from tl_clt.nodes import Node, from_json_id, node_id, parse_node, to_json_id
from tl_clt.plot import plot_graph
from tl_clt.prompts import to_tokens
from tl_clt.proposals import SupernodeInfo, SupernodeProposals, mediators, propose_supernodes
from tl_clt.replacement import (
    ReconstructionReport,
    feature_activations,
    reconstruction_report,
    replacement_hooks,
)
from tl_clt.sites import Sites, UnsupportedModelError, sites_for
from tl_clt.steering import Intervention, ablate, scale, steer, steer_many, steering_hooks
from tl_clt.supernodes import (
    Candidate,
    TokenScore,
    contrast_features,
    feature_output_tokens,
    features_at,
    group_effects,
    group_graph,
    group_interventions,
    top_inputs,
    top_outputs,
)
from tl_clt.tables import PredictionTable, prediction_table
from tl_clt.targets import Direction, LogitDiff, TargetError, logit_diff
from tl_clt.version import __version__
from tl_clt.workspace import Workspace, WorkspaceBusyError

__all__ = [
    "__version__",
    "AttributionGraph",
    "BatchTables",
    "Candidate",
    "CrossLayerTranscoder",
    "FeatureCard",
    "FeatureDashboards",
    "GraphScores",
    "Intervention",
    "PredictionTable",
    "ReconstructionReport",
    "SupernodeInfo",
    "SupernodeProposals",
    "TokenScore",
    "ablate",
    "attribute",
    "build_feature_dashboards",
    "Direction",
    "LogitDiff",
    "TargetError",
    "logit_diff",
    "attribute_many",
    "check_compatible",
    "contrast_features",
    "feature_activations",
    "feature_output_tokens",
    "features_at",
    "generate",
    "graph_to_dict",
    "group_graph",
    "group_effects",
    "group_interventions",
    "load_batch",
    "default_backend",
    "load_qwen3",
    "plot_circuit",
    "plot_graph",
    "prediction_table",
    "propose_supernodes",
    "mediators",
    "preserve",
    "reconstruction_report",
    "recurring_features",
    "replacement_hooks",
    "scale",
    "steer",
    "steer_many",
    "steering_hooks",
    "to_tokens",
    "top_inputs",
    "top_outputs",
    "validate_graph_json",
    "write_graph_folder",
    "Node",
    "Sites",
    "UnsupportedModelError",
    "UserHookWarning",
    "Workspace",
    "WorkspaceBusyError",
    "GraphMismatchWarning",
    "from_json_id",
    "node_id",
    "parse_node",
    "sites_for",
    "to_json_id",
]
