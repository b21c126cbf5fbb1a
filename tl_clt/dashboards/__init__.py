"""Feature dashboards: what each CLT feature does, read from BluelightAI's `features/` or built from a corpus.

- `FeatureDashboards.from_pretrained(hub_id_or_folder)`, `dash[layer, feature]` -> `FeatureCard`
  (`reader.py`, `card.py`);
- `build_feature_dashboards(model, clt, texts, out_dir)` (`run.py`; with `engine="ray", workers=N`
  corpus shards on the batch engine's workers, merged exactly) and the shard API `build_state` /
  `DashboardState.merge` / `write_dashboards` (`builder.py`, `state.py`, `corpus.py`);
- the on-disk format circuit-tracer's frontend reads (`format.py`).
"""

from tl_clt.dashboards.builder import (
    build_state,
    feature_record,
    shard_ranges,
    write_dashboards,
)
from tl_clt.dashboards.card import Example, ExampleGroup, FeatureCard
from tl_clt.dashboards.corpus import Corpus, open_corpus
from tl_clt.dashboards.format import CorruptDashboardsError, DashboardsNotFoundError, validate_record
from tl_clt.dashboards.reader import FeatureDashboards
from tl_clt.dashboards.run import build_feature_dashboards
from tl_clt.dashboards.state import DashboardConfig, DashboardState

__all__ = [
    "Corpus",
    "CorruptDashboardsError",
    "DashboardConfig",
    "DashboardState",
    "DashboardsNotFoundError",
    "Example",
    "ExampleGroup",
    "FeatureCard",
    "FeatureDashboards",
    "build_feature_dashboards",
    "build_state",
    "feature_record",
    "open_corpus",
    "shard_ranges",
    "validate_record",
    "write_dashboards",
]
