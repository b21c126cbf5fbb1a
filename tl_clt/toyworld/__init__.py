"""The toy world: a tiny Qwen3 and a CLT trained on dated facts, shipped with the package.

The model answers "Fact: The president of the United States in 2010 was" with " Barack"; see
`tl_clt.toyworld.build` for how both were made (`python -m tl_clt.toyworld.build`).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toyworld"


def toyworld_paths(root: str | Path | None = None) -> tuple[Path, Path]:
    """(model_dir, clt_dir) of the shipped artifacts (or of a toy world built into `root`)."""
    root = DATA_DIR if root is None else Path(root)
    model_dir, clt_dir = root / "model", root / "clt"
    if not (model_dir / "config.json").is_file() or not (clt_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"The toy world is missing under {root}; rebuild it with "
            "`python -m tl_clt.toyworld.build --out tl_clt/data/toyworld`."
        )
    return model_dir, clt_dir


def load_toyworld(device: str = "cpu", *, root: str | Path | None = None, backend: str | None = None):
    """(model, clt): the toy model (`load_qwen3`) and its CLT (float32); `root`: a toy world built
    elsewhere (`python -m tl_clt.toyworld.build --out ROOT`), default the shipped one. `backend`:
    "hooked" (a HookedTransformer, transformer-lens 3.x), "bridge" (a TransformerBridge) or None, the
    installed TransformerLens's (`tl_clt.default_backend()`: "hooked" on 3.x, "bridge" on 4.x)."""
    import torch

    from tl_clt import CrossLayerTranscoder, load_qwen3

    model_dir, clt_dir = toyworld_paths(root)
    model = load_qwen3(model_dir, device=device, backend=backend)
    clt = CrossLayerTranscoder.from_pretrained(clt_dir, device=device, dtype=torch.float32)
    return model, clt
