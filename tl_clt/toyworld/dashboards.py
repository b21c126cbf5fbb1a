"""The toy world's feature dashboards, built from its own corpus by `tl_clt.build_feature_dashboards`.

    python -m tl_clt.toyworld.dashboards          # writes tl_clt/data/toyworld/clt/features/

`load_toyworld()` then returns a CLT whose `clt.dashboards[layer, feature]` shows each feature's top
sentences, sampled activation intervals and output tokens. Every corpus sentence is one context
(none is longer than 31 tokens), shown whole up to 16 tokens before and 8 after the chosen one;
the folder is about 2.3 MB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tl_clt.dashboards import DashboardConfig, FeatureDashboards, build_feature_dashboards

TOY_CONFIG = DashboardConfig(
    context_len=32,
    batch_size=64,
    n_top=10,
    n_intervals=8,
    n_per_interval=2,
    before=16,
    after=8,
    n_bins=32,
    bin_resolution=8,
    n_logits=8,
)
TRANSCODER_ID = "toyworld/clt"


def build_toyworld_dashboards(
    model, clt, out: str | Path | None = None, seed: int = 0, progress: bool = True
) -> FeatureDashboards:
    """Dashboards of every toy-world feature from the toy world's corpus (`make_corpus(seed)`)."""
    from tl_clt.toyworld import toyworld_paths
    from tl_clt.toyworld.corpus import make_corpus

    out = Path(out) if out is not None else toyworld_paths()[1] / "features"
    return build_feature_dashboards(
        model,
        clt,
        make_corpus(seed),
        out,
        config=TOY_CONFIG,
        resume=False,
        transcoder_id=TRANSCODER_ID,
        progress=progress,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="default: the shipped CLT's features/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tl_clt import default_backend
    from tl_clt.toyworld import load_toyworld

    if args.out is None and default_backend() != "hooked":  # the shipped files were made on 3.x
        parser.error(
            "rewriting the shipped dashboards needs transformer-lens 3.x (HookedTransformer), where they "
            "were made; on 4.x build them elsewhere with --out DIR (on the TransformerBridge)"
        )
    model, clt = load_toyworld()
    t0 = time.time()
    dash = build_toyworld_dashboards(model, clt, args.out, args.seed)
    size = sum(p.stat().st_size for p in Path(str(dash.source)).iterdir() if p.is_file())
    print(f"{dash}: {size / 1e6:.2f} MB in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
