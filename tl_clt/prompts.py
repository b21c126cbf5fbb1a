"""Prompt handling: text or token ids -> a 1-D token tensor with Qwen3's attention-sink convention.

Qwen3 has no BOS token. Like circuit-tracer, when the first token is not a special token we put
`<|endoftext|>` in front; that position is an attention sink and is left out of graphs.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

Prompt = str | list[int] | Tensor
SINK_TOKEN = "<|endoftext|>"


def sink_token_id(model: HookedTransformer) -> int:
    tok = model.tokenizer
    token_id = tok.convert_tokens_to_ids(SINK_TOKEN)
    if token_id is None or token_id == tok.unk_token_id:
        token_id = tok.eos_token_id
    if token_id is None:
        raise ValueError(f"The tokenizer has neither {SINK_TOKEN!r} nor an eos token to prepend.")
    return int(token_id)


def to_tokens(model: HookedTransformer, prompt: Prompt) -> Int[Tensor, " pos"]:
    """Token ids on the model's device, with `<|endoftext|>` prepended when the first is not special."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("This model has no tokenizer: pass token ids instead of a string.")
        if not prompt:
            raise ValueError("The prompt is empty: pass some text or token ids.")
        ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tokens = torch.tensor(ids, dtype=torch.long)
    else:
        tokens = torch.as_tensor(prompt).detach().to("cpu")
        if tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"Token ids must be integers, got dtype {tokens.dtype}.")
        tokens = tokens.long().reshape(-1) if tokens.ndim == 2 and tokens.shape[0] == 1 else tokens.long()
        if tokens.ndim != 1:
            raise ValueError(f"Expected one prompt (1-D token ids), got shape {tuple(tokens.shape)}.")
    if tokens.numel() == 0:
        raise ValueError("The prompt has no tokens.")
    if tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab:
        raise ValueError(
            f"Token ids must be in [0, {model.cfg.d_vocab}); got {tokens.min()}..{tokens.max()}."
        )
    special = set(model.tokenizer.all_special_ids) if model.tokenizer is not None else set()
    if int(tokens[0]) not in special:
        tokens = torch.cat([torch.tensor([sink_token_id(model)]), tokens])
    if len(tokens) > model.cfg.n_ctx:
        raise ValueError(f"The prompt has {len(tokens)} tokens; the model's context is {model.cfg.n_ctx}.")
    return tokens.to(model.cfg.device)
