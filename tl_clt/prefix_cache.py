"""The clean prompt's keys and values before a position, for tail passes (`steering.Steerer.last`).

A steering that touches no position before p leaves positions 0..p-1 as in the clean prompt (attention is
causal), so a pass can run positions p.. only, on those positions' cached keys and values.
- HookedTransformer: a frozen TransformerLens KV cache, filled once over the whole prompt (by the clean
  pass where frozen values are needed, else `TLPrefix.fill`) and served to any start as views (`TLPrefix`).
- TransformerBridge: Hugging Face's `DynamicCache`, filled by one plain pass over the first p tokens and
  copied for each pass (a pass appends its own keys to the cache it is given). transformers 5 hands the
  cache to each attention module as `cache=`, while the bridge's attention (transformer-lens 3.9 and 4.3)
  reads `past_key_values=`: without a mapping the cache stays empty and a pass over the tail sees only
  itself. `bridge_cache_kwargs` maps it, with forward pre-hooks on the attention modules that are removed
  when it exits; a prefix is used only when the filled cache holds exactly p positions (`HFPrefix.fill`),
  so another pairing of versions falls back to whole passes instead of wrong logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class TLPrefix:
    """A frozen TransformerLens KV cache (batch 1) of a HookedTransformer's first `start` positions."""

    cache: object  # transformer_lens.TransformerLensKeyValueCache

    @property
    def start(self) -> int:
        return self.cache.entries[0].past_keys.shape[1]

    @staticmethod
    def new_cache(model):
        """An empty TransformerLens KV cache (batch 1) for a pass over the prompt to fill (`clean_pass`'s
        `kv_cache`; then `frozen`)."""
        from transformer_lens import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)

    @staticmethod
    def frozen(cache) -> TLPrefix:
        """A filled cache, frozen (a pass given it reads it and appends nothing)."""
        cache.freeze()
        return TLPrefix(cache)

    @staticmethod
    def fill(model, tokens: Int[Tensor, " pos"]) -> TLPrefix:
        """One plain pass over `tokens` into a fresh cache, frozen: `head(n)` serves any start."""
        cache = TLPrefix.new_cache(model)
        with torch.no_grad():
            model(tokens[None], **tl_cache_kwargs(cache, tokens[None]))
        return TLPrefix.frozen(cache)

    def head(self, n: int) -> TLPrefix:
        """Its first `n` positions (views)."""
        return TLPrefix(self._viewed(lambda t: t[:, :n], lambda m: m[:, :n]))

    def run(self, model, tail: Int[Tensor, "batch q"]) -> Float[Tensor, "batch q d_vocab"]:
        """Logits of `tail` after the prefix, the cache seen as batch copies (views, nothing copied)."""
        b = tail.shape[0]
        batched = self._viewed(lambda t: t.expand(b, -1, -1, -1), lambda m: m.expand(b, -1))
        return model(tail, **tl_cache_kwargs(batched, tail))

    def _viewed(self, kv: Callable[[Tensor], Tensor], mask: Callable[[Tensor], Tensor]):
        """A frozen TransformerLens KV cache of views: `kv` of every layer's keys and values [batch, pos,
        n_kv_heads, d_head], `mask` of the attention mask [batch, pos]."""
        from transformer_lens import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry

        entries = [
            TransformerLensKeyValueCacheEntry(kv(e.past_keys), kv(e.past_values), frozen=True)
            for e in self.cache.entries
        ]
        return TransformerLensKeyValueCache(entries, mask(self.cache.previous_attention_mask), frozen=True)


def tl_cache_kwargs(cache, tokens: Int[Tensor, "batch q"]) -> dict:
    """A HookedTransformer's keyword arguments for a pass over `tokens` on a TransformerLens KV cache
    (which it fills, unless frozen): the cache and an attention mask of ones."""
    return dict(past_kv_cache=cache, attention_mask=torch.ones_like(tokens))


@dataclass(frozen=True)
class HFPrefix:
    """A Hugging Face `DynamicCache` (batch 1) of a TransformerBridge's first `start` positions."""

    cache: object  # transformers.DynamicCache
    start: int

    @staticmethod
    def fill(model, tokens: Int[Tensor, " pos"], start: int) -> HFPrefix | None:
        """One plain pass over `tokens[:start]` into a fresh cache; None when the cache does not come
        back holding exactly `start` positions (a bridge that does not pass it to its attention)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        with torch.no_grad(), bridge_cache_kwargs(model):
            model(tokens[None, :start], past_key_values=cache)
        return HFPrefix(cache, start) if cache.get_seq_length() == start else None

    def run(self, model, tail: Int[Tensor, "batch q"]) -> Float[Tensor, "batch q d_vocab"]:
        """Logits of `tail` after the prefix, on a copy of the cache repeated along the batch."""
        cache = copy.deepcopy(self.cache)
        if tail.shape[0] > 1:
            cache.batch_repeat_interleave(tail.shape[0])
        with bridge_cache_kwargs(model):
            return model(tail, past_key_values=cache)


@contextmanager
def bridge_cache_kwargs(model) -> Iterator[None]:
    """Inside it, each of the bridge's attention modules that is given transformers 5's `cache=` but no
    `past_key_values=` gets the cache under that name too (forward pre-hooks, removed on exit)."""

    def pre_hook(module, args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            return args, {**kwargs, "past_key_values": kwargs["cache"]}
        return None

    handles = []
    try:
        for block in model.blocks:
            handles.append(block.attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
