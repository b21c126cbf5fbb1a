"""A Qwen-style byte-level BPE tokenizer trained on the toy corpus.

Pre-tokenization uses Qwen2/3's split pattern (words keep their leading space, every digit is its
own token), so "in 2010 was" becomes " in", " ", "2", "0", "1", "0", " was" as in Qwen3. The
holders' first names are fed to the trainer often enough that each is one token (" Barack").
"""

from __future__ import annotations

from tl_clt.synthetic import SPECIAL, bpe_trainer

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tokenizer(corpus: list[str], names: list[str], vocab_size: int = 640):
    """A `PreTrainedTokenizerFast` with `<|endoftext|>` as eos/pad; raises if a name is split."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus + ["".join(names)] * 200, trainer=bpe_trainer(vocab_size))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIAL, pad_token=SPECIAL)
    split = [n for n in names if len(fast(n, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        raise ValueError(f"Names split into several tokens (raise vocab_size): {split}")
    return fast
