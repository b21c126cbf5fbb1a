"""Prompt handling: text or token ids -> a 1-D token tensor with Qwen3's attention-sink convention.

Qwen3 has no BOS token. Like circuit-tracer, when the first token is not a special token we put
`<|endoftext|>` in front; that position is an attention sink and is left out of graphs.

Positions vs TransformerLens: `load_qwen3` models do not prepend a BOS (`default_prepend_bos=False`), so
`model.to_str_tokens(prompt)[i]` is graph position `i + prompt_offset(model, prompt)` (1 when the sink
was added). `to_str_tokens(model, prompt)` gives the strings at graph positions. Token ids from
`model.to_tokens(prompt)` (shape `[1, pos]`) are accepted as prompts and give the same graph as the text.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from tl_clt.sites import sites_for

Prompt = str | list[int] | Tensor
SINK_POS = 0  # position of the attention-sink token; features and errors there are left out of graphs


def sink_token_id(model) -> int:
    """Id of the model's attention-sink token (`Sites.sink_token`, `<|endoftext|>` for Qwen3)."""
    sink = sites_for(model).sink_token
    tok = model.tokenizer
    if tok is None:
        raise ValueError(
            f"This model has no tokenizer, so the {sink!r} sink id is unknown. Give it one with "
            "model.set_tokenizer(AutoTokenizer.from_pretrained(<the model's folder or hub id>))."
        )
    token_id = tok.convert_tokens_to_ids(sink)
    if token_id is None or token_id == tok.unk_token_id:
        token_id = tok.eos_token_id
    if token_id is None:
        raise ValueError(f"The tokenizer has neither {sink!r} nor an eos token to prepend.")
    return int(token_id)


def to_tokens(model, prompt: Prompt) -> Int[Tensor, " pos"]:
    """Token ids on the model's device, with `<|endoftext|>` prepended when the first is not special."""
    sites_for(model)  # a supported model, or a clear error
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("This model has no tokenizer: pass token ids instead of a string.")
        if not prompt:
            raise ValueError("The prompt is empty: pass some text or token ids.")
        ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tokens = torch.tensor(ids, dtype=torch.long)
    else:
        tokens = _as_token_tensor(prompt)
        tokens = tokens.long().reshape(-1) if tokens.ndim == 2 and tokens.shape[0] == 1 else tokens.long()
        if tokens.ndim != 1:
            raise ValueError(
                f"Expected one prompt (1-D token ids), got shape {tuple(tokens.shape)}; tl_clt works on one "
                "prompt at a time: loop over the batch."
            )
    if tokens.numel() == 0:
        raise ValueError("The prompt has no tokens.")
    if tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab:
        raise ValueError(
            f"Token ids must be in [0, {model.cfg.d_vocab}) (this model's vocabulary); got "
            f"{tokens.min()}..{tokens.max()}. Tokenize with this model's tokenizer (tl_clt.to_tokens)."
        )
    special = set(model.tokenizer.all_special_ids) if model.tokenizer is not None else set()
    if int(tokens[0]) not in special:
        tokens = torch.cat([torch.tensor([sink_token_id(model)]), tokens])
    if len(tokens) > model.cfg.n_ctx:
        raise ValueError(
            f"The prompt has {len(tokens)} tokens (sink included) but the model's context is "
            f"{model.cfg.n_ctx}; shorten it (or load the model with a larger n_ctx)."
        )
    return tokens.to(model.cfg.device)


def tokens_after_sink(model, prompt: Prompt, *, needed_for: str) -> Int[Tensor, " pos"]:
    """`to_tokens(model, prompt)`, which must hold a real token after the sink (`needed_for` says why)."""
    tokens = to_tokens(model, prompt)
    if len(tokens) <= SINK_POS + 1:
        raise ValueError(f"The prompt is only the attention-sink token; {needed_for}")
    return tokens


def _as_token_tensor(prompt) -> Tensor:
    """A tensor of token ids from a list or tensor, with clear errors for anything else."""
    if isinstance(prompt, (list, tuple)):
        if len(prompt) == 0:
            raise ValueError("The prompt has no tokens.")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in _flat(prompt)):
            raise TypeError(
                "A prompt is a string, a list of int token ids or a 1-D integer tensor; got a list "
                f"holding {sorted({type(t).__name__ for t in _flat(prompt)})}. Pass one prompt at a time."
            )
    elif not isinstance(prompt, Tensor):
        raise TypeError(
            "A prompt is a string, a list of int token ids or a 1-D integer tensor, got "
            f"{type(prompt).__name__}."
        )
    tokens = torch.as_tensor(prompt).detach().to("cpu")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"Token ids must be integers, got dtype {tokens.dtype}; use tokens.long().")
    return tokens


def _flat(items):
    for x in items:
        if isinstance(x, (list, tuple)):
            yield from _flat(x)
        else:
            yield x


def prompt_offset(model, prompt: Prompt) -> int:
    """How many tokens `to_tokens` puts in front of `prompt`: 1 (the sink) or 0 (it began with a special
    token). Graph position p is position `p - prompt_offset` of the prompt's own tokens."""
    tokens = to_tokens(model, prompt)
    if isinstance(prompt, str):
        n_raw = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    else:
        n_raw = _as_token_tensor(prompt).numel()
    return len(tokens) - n_raw


def to_str_tokens(model, prompt: Prompt) -> list[str]:
    """The token strings at graph positions (position 0: the sink), like `model.to_str_tokens`."""
    return [model.tokenizer.decode([t]) for t in to_tokens(model, prompt).tolist()]
