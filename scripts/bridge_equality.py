"""Graphs on a TransformerBridge vs the HookedTransformer of the same checkpoint, with tl_clt.attribute.

Prints, per model: active features on each backend, max |edge difference|, and that over the largest edge
(issue 9's target: <= 1e-5). Needs transformer-lens 3.x (both backends). Run:
`PYTHONPATH=$PWD python scripts/bridge_equality.py`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

import tl_clt
from tl_clt import synthetic
from tl_clt.toyworld import toyworld_paths

warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
PROMPT = "Fact: The president of the United States in 2010 was"  # tutorial 01's prompt


def compare(name: str, model_dir: Path, clt_dir: Path, prompt: str) -> None:
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    hooked, bridge = (
        tl_clt.attribute(tl_clt.load_qwen3(model_dir, backend=b), clt, prompt, verbose=False)
        for b in ("hooked", "bridge")
    )
    same = hooked.feature_keys.tolist() == bridge.feature_keys.tolist()
    diff = float((hooked.adjacency - bridge.adjacency).abs().max())
    top = float(hooked.adjacency.abs().max())
    print(
        f"| {name} | {hooked.n_features} / {bridge.n_features} ({'same' if same else 'DIFFERENT'}) "
        f"| {diff:.2e} | {top:.3g} | {diff / top:.1e} |"
    )


def main() -> None:
    print("| model | active features HT / bridge | max abs edge diff | largest edge | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = synthetic.make_qwen3_folder(
            tmp / "tiny-qwen3",
            tokenizer=synthetic.make_tokenizer(),
            num_hidden_layers=3,
            initializer_range=0.1,
        )
        clt_dir = synthetic.make_random_clt_folder(
            tmp / "clt", n_layers=3, d_model=64, n_features=96, density=0.1
        )
        compare("tiny random Qwen3 + 96-feature random CLT", model_dir, clt_dir, PROMPT)
    model_dir, clt_dir = toyworld_paths()
    compare("toy world (trained CLT)", model_dir, clt_dir, PROMPT)


if __name__ == "__main__":
    main()
