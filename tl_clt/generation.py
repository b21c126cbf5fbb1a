"""Steered generation: sample tokens with interventions acting, open-ended slices on new tokens too."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_clt.checks import as_int, as_number, check_k
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.hooks import check_compatible
from tl_clt.prompts import Prompt, to_tokens
from tl_clt.steering import (
    Intervention,
    check_interventions,
    plan_interventions,
    resolve_positions,
    run_steered,
)


def _sample(
    logits: Float[Tensor, " d_vocab"],
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> int:
    if temperature == 0:
        return int(logits.argmax())
    # float64 and shifted so the top logit is 0: a tiny temperature gives -inf elsewhere (greedy), never NaN
    logits = logits.double()
    logits = (logits - logits.max()) / temperature
    if top_k is not None:
        cut = logits.topk(min(top_k, len(logits))).values[-1]
        logits = logits.masked_fill(logits < cut, -math.inf)
    probs = torch.softmax(logits, -1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model,
    clt: CrossLayerTranscoder,
    prompt: Prompt,
    interventions: Intervention | Iterable[Intervention],
    *,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int | None = None,
    freeze_attention: bool = False,
    stop_at_eos: bool = True,
    seed: int | None = None,
    return_type: Literal["input", "str", "tokens"] = "input",
) -> str | Int[Tensor, " pos"]:
    """Sample `max_new_tokens` tokens with `interventions` applied (greedy for temperature=0).

    Each step is `steer(model, clt, tokens_so_far, interventions, freeze_attention=...)` on the full
    sequence (no KV cache); the interventions are checked and their decoder rows read once per call.
    Positions refer to the full sequence: ints and negative slice bounds are resolved against the
    prompt once (pos=-1 is the prompt's last token, never a generated one), an open-ended slice
    `slice(k, None)` keeps acting on every generated token, pos="generated" acts on generated tokens
    only (see `Intervention`). The same hooks inside TL's `model.generate` give the same tokens
    (`steering_hooks(..., tokens=prompt, freeze_attention=False)`; docs/tl_generate.md).
    `freeze_attention` defaults to False here: with it, each step freezes patterns to an unsteered
    pass over the sequence so far.
    Returns the text (without the added sink token) for a str prompt or return_type="str", else
    the full token tensor (sink included).
    """
    sites = check_compatible(model, clt)
    max_new_tokens = as_int(max_new_tokens, "max_new_tokens")
    temperature = as_number(temperature, "temperature", finite=False)
    if max_new_tokens < 0 or not 0 <= temperature < math.inf:
        raise ValueError(
            f"max_new_tokens and temperature must be finite and >= 0, got {max_new_tokens}, {temperature}."
        )
    if top_k is not None:
        top_k = check_k(top_k, "top_k", what="None, or how many tokens to sample from")
    if seed is not None:
        seed = as_int(seed, "seed")
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}.")
    tokens = to_tokens(model, prompt)
    n_prompt = len(tokens)
    check_room(model, n_prompt, max_new_tokens)
    ivs = [resolve_positions(iv, n_prompt) for iv in check_interventions(interventions, clt, n_prompt)]
    plans = plan_interventions(clt, ivs)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    for _ in range(max_new_tokens):
        logits = run_steered(model, clt, sites, plans, tokens, freeze_attention=freeze_attention)[-1]
        nxt = _sample(logits, temperature, top_k, generator)
        tokens = torch.cat([tokens, tokens.new_tensor([nxt])])
        if stop_at_eos and nxt == eos:
            break
    if return_type == "tokens" or (return_type == "input" and not isinstance(prompt, str)):
        return tokens
    start = n_prompt - _n_raw_tokens(model, prompt)
    return model.tokenizer.decode(tokens[start:].tolist())


def check_room(model, n_prompt: int, max_new_tokens: int) -> None:
    """ValueError, before any work, when the prompt plus `max_new_tokens` would not fit in `n_ctx`."""
    n_ctx = model.cfg.n_ctx
    if n_prompt + max_new_tokens > n_ctx:
        raise ValueError(
            f"The prompt has {n_prompt} tokens (sink included) and max_new_tokens={max_new_tokens}, but the "
            f"model's context is {n_ctx} tokens: use max_new_tokens <= {max(n_ctx - n_prompt, 0)} or a "
            "shorter prompt."
        )


def _n_raw_tokens(model, prompt: Prompt) -> int:
    if isinstance(prompt, str):
        return len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return torch.as_tensor(prompt).numel()
