"""Synthetic Qwen3 checkpoints and CLTs in the real on-disk layouts, for tests and benchmarks.

Nothing here is downloaded: a byte-level BPE tokenizer is trained on a few sentences, the model is a
randomly initialised `Qwen3ForCausalLM` saved with `save_pretrained`, and the CLT is written exactly as
BluelightAI publishes theirs (config.yaml + per-layer W_enc_{l}/W_dec_{l} safetensors, bf16 by default).
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
import yaml

from tl_clt import files

SPECIAL = "<|endoftext|>"
_CORPUS = [
    "Fact: The president of the United States in 2010 was Barack Obama.",
    "Fact: The capital of France is Paris. The year 1999 came before 2000.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "In 1776 the declaration was signed; in 1969 people walked on the moon.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and words like president, king, queen, mayor.",
]


def make_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None):
    """A byte-level BPE `PreTrainedTokenizerFast` with `<|endoftext|>` as eos/pad, like Qwen's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus or _CORPUS * 4, trainer=bpe_trainer(vocab_size))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIAL, pad_token=SPECIAL)


def bpe_trainer(vocab_size: int):
    """The byte-level BPE trainer of our tokenizers: `<|endoftext|>` special, every byte in the alphabet."""
    from tokenizers import pre_tokenizers, trainers

    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def qwen3_config(**overrides):
    """A small `Qwen3Config`; any field can be overridden (hidden_size, head_dim, ...)."""
    from transformers import Qwen3Config

    base = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    base.update(overrides)
    return Qwen3Config(**base)


def make_qwen3_folder(
    path: str | Path, seed: int = 0, norm_noise: float = 0.3, tokenizer=None, **config
) -> Path:
    """Save a random `Qwen3ForCausalLM` + tokenizer as a normal HF folder; returns the path.

    Norm weights get `1 + norm_noise * N(0, 1)` so that folding or dropping them would show.
    """
    from transformers import Qwen3ForCausalLM

    path = Path(path)
    tokenizer = tokenizer or make_tokenizer(config.get("vocab_size", 512))
    config.setdefault("vocab_size", len(tokenizer))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(**config)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + norm_noise * torch.randn_like(param))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_clt_folder(
    path: str | Path,
    W_enc: list[torch.Tensor],
    b_enc: list[torch.Tensor],
    W_dec: list[torch.Tensor],
    b_dec: list[torch.Tensor],
    threshold: list[torch.Tensor] | None = None,
    model_name: str = "tiny-qwen3",
    feature_input_hook: str = "mlp.hook_in",
    feature_output_hook: str = "mlp.hook_out",
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a CLT in BluelightAI's split layout. W_enc[l]: [F, d], W_dec[l]: [F, n_layers - l, d]."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": model_name,
        "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook,
    }
    files.write_text(path / "config.yaml", yaml.safe_dump(config))
    for layer in range(len(W_enc)):
        enc = {
            f"W_enc_{layer}": W_enc[layer],
            f"b_enc_{layer}": b_enc[layer],
            f"b_dec_{layer}": b_dec[layer],
        }
        if threshold is not None:
            enc[f"threshold_{layer}"] = threshold[layer]
        enc = {k: v.to(dtype).contiguous() for k, v in enc.items()}
        files.write_bytes(path / f"W_enc_{layer}.safetensors", safetensors.torch.save(enc))
        dec = {f"W_dec_{layer}": W_dec[layer].to(dtype).contiguous()}
        files.write_bytes(path / f"W_dec_{layer}.safetensors", safetensors.torch.save(dec))
    return path


def make_random_clt_folder(
    path: str | Path,
    n_layers: int,
    d_model: int,
    n_features: int,
    seed: int = 0,
    jumprelu: bool = True,
    density: float = 0.1,
    dtype: torch.dtype = torch.bfloat16,
    **config,
) -> Path:
    """A random CLT whose features fire on roughly `density` of inputs of unit-RMS scale."""
    gen = torch.Generator().manual_seed(seed)
    scale = d_model**-0.5
    W_enc = [torch.randn(n_features, d_model, generator=gen) * scale for _ in range(n_layers)]
    # A feature's pre-activation is ~N(b, 1) for unit-RMS inputs: fire on the top `density`.
    cut = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(1 - density)))
    b_enc = [torch.full((n_features,), -cut / 2) for _ in range(n_layers)]
    thr = [torch.full((n_features,), cut / 2) for _ in range(n_layers)] if jumprelu else None
    if not jumprelu:
        b_enc = [torch.full((n_features,), -cut) for _ in range(n_layers)]
    W_dec = [
        torch.randn(n_features, n_layers - layer, d_model, generator=gen) * scale * 0.5
        for layer in range(n_layers)
    ]
    b_dec = [torch.randn(d_model, generator=gen) * 0.01 for _ in range(n_layers)]
    return write_clt_folder(path, W_enc, b_enc, W_dec, b_dec, thr, dtype=dtype, **config)
