"""Synthetic Qwen3-shaped models and CLTs at the benchmark sizes, saved in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

from tl_clt import synthetic

SIZES = {
    # name: model config overrides, CLT features per layer, density, prompt
    "tiny": dict(
        model=dict(
            num_hidden_layers=4,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=512,
        ),
        features=96,
        density=0.05,
    ),
    "medium": dict(
        model=dict(
            num_hidden_layers=8,
            hidden_size=256,
            intermediate_size=768,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=32,
            vocab_size=2048,
        ),
        features=1024,
        density=0.01,
    ),
    "real": dict(
        model=dict(
            num_hidden_layers=28,
            hidden_size=1024,
            intermediate_size=3072,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=4096,
        ),
        features=20480,
        density=0.002,
    ),
}
PROMPT_28 = (
    "Fact: The president of the United States in 2010 was Barack Obama, and the capital of France "
    "is Paris, which"
)


def prompt_of_length(tokenizer, n: int) -> list[int]:
    """Exactly n token ids (sink token included), cycling through PROMPT_28's tokens."""
    ids = tokenizer(PROMPT_28, add_special_tokens=False)["input_ids"]
    body = (ids * (n // len(ids) + 1))[: n - 1]
    return [tokenizer.convert_tokens_to_ids("<|endoftext|>")] + body


def build(size: str, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(model_dir, clt_dir) for `size` under root, created once and reused."""
    spec = SIZES[size]
    mdir, cdir = root / f"{size}-model", root / f"{size}-clt"
    if not (mdir / "config.json").exists():
        tok = synthetic.make_tokenizer(spec["model"]["vocab_size"])
        synthetic.make_qwen3_folder(mdir, seed=seed, tokenizer=tok, initializer_range=0.05, **spec["model"])
    if not (cdir / "config.yaml").exists():
        m = spec["model"]
        synthetic.make_random_clt_folder(
            cdir,
            m["num_hidden_layers"],
            m["hidden_size"],
            spec["features"],
            seed=seed,
            density=spec["density"],
            model_name=str(mdir),
        )
    return mdir, cdir
