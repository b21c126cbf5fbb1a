"""Train the toy world's tiny Qwen3 on the corpus with plain PyTorch, and score it on facts.

Every sentence is one training sequence, `<|endoftext|>` first (the attention sink that
`tl_clt.to_tokens` puts in front of prompts), right-padded; the loss is next-token cross-entropy on
the real tokens.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_clt import files
from tl_clt.prompts import to_tokens
from tl_clt.synthetic import qwen3_config
from tl_clt.toyworld.corpus import Fact

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def model_config(vocab_size: int, **overrides):
    """4 layers, d_model 128, 4 query / 2 key-value heads of 32, tied embeddings."""
    base = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        head_dim=32,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    return qwen3_config(**{**base, **overrides})


def encode(tokenizer, corpus: list[str]) -> tuple[Int[Tensor, "n_seq pos"], Int[Tensor, " n_seq"]]:
    """Token ids [n_seq, pos] (sink first, right-padded with eos) and each sequence's length."""
    sink = tokenizer.eos_token_id
    seqs = [[sink] + tokenizer(s, add_special_tokens=False)["input_ids"] for s in corpus]
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), sink, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, lengths


def lr_at(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


SMOOTHING_TO = ("uniform", "followers")  # where `train_model` can spread its label smoothing


@torch.enable_grad()  # also where the caller turned gradients off
def train_model(
    tokenizer,
    corpus: list[str],
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 250,
    silent_attention: tuple[int, ...] = (),
    label_smoothing: float = 0.0,
    smoothing_to: str = "uniform",
):
    """A `Qwen3ForCausalLM` trained on `corpus` (seeded), returned in eval mode.

    `silent_attention`: layers whose attention output projection is kept at zero, so that their
    MLP reads each token alone (layer 0: the MLP is an extended embedding that later layers read).
    `label_smoothing`: of the cross-entropy (a model that answers with p ~ 1 - it), spread over
    `smoothing_to`: "uniform" (every token) or "followers" (evenly over the tokens that follow the
    current token somewhere in the corpus, `follower_matrix`: after " was", names and filler words,
    never "." or a digit)."""
    if smoothing_to not in SMOOTHING_TO:
        raise ValueError(f"smoothing_to is one of {SMOOTHING_TO}, got {smoothing_to!r}.")
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(model_config(len(tokenizer)))
    for layer in silent_attention:
        o_proj = model.model.layers[layer].self_attn.o_proj.weight
        o_proj.requires_grad_(False)
        with torch.no_grad():
            o_proj.zero_()
    ids, lengths = encode(tokenizer, corpus)
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]  # [n_seq, pos]
    followers = follower_matrix(ids, real, len(tokenizer)) if smoothing_to == "followers" else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    order, cursor, start = torch.randperm(len(ids), generator=gen), 0, time.time()
    model.train()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(ids), generator=gen), 0
        batch = order[cursor : cursor + batch_size]
        cursor += batch_size
        width = int(lengths[batch].max())
        x, mask = ids[batch, :width], real[batch, :width]
        logits = model(input_ids=x).logits[:, :-1]
        keep = mask[:, 1:]
        loss = smoothed_loss(logits[keep], x[:, 1:][keep], x[:, :-1][keep], label_smoothing, followers)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  step {step:5d}  loss {loss.item():.4f}  ({time.time() - start:.0f}s)")
    return model.eval()


def smoothed_loss(
    logits: Float[Tensor, "n vocab"],
    targets: Int[Tensor, " n"],
    current: Int[Tensor, " n"],
    label_smoothing: float,
    followers: Float[Tensor, "vocab vocab"] | None,
) -> Tensor:
    """Mean cross-entropy of next tokens `targets` with `label_smoothing` spread uniformly (followers
    None: torch's label smoothing) or by `followers[current]` (rows of `follower_matrix`)."""
    if followers is None:
        return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    logp = logits.log_softmax(-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    spread = -(followers[current] * logp).sum(-1)
    return ((1 - label_smoothing) * nll + label_smoothing * spread).mean()


def follower_matrix(
    ids: Int[Tensor, "n_seq pos"], real: Bool[Tensor, "n_seq pos"], vocab: int
) -> Float[Tensor, "vocab vocab"]:
    """Row c: evenly 1/k over the k tokens that follow token c somewhere in the sequences (their
    `real` tokens, not the padding); a token never followed by anything gets a uniform row."""
    pair = real[:, 1:]
    M = torch.zeros(vocab, vocab)
    M[ids[:, :-1][pair], ids[:, 1:][pair]] = 1.0
    M[M.sum(1) == 0] = 1.0
    return M / M.sum(1, keepdim=True)


def save_model(model, tokenizer, path: str | Path) -> Path:
    """Save as a normal HF folder (bf16 weights, config.json, tokenizer files).

    The folder also loads with transformers 4.x: config.json gets a top-level `rope_theta` and the
    tokenizer is declared as `PreTrainedTokenizerFast` (5.x writes `TokenizersBackend`).
    """
    path = Path(path)
    model.to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    model.float()
    make_portable(path)
    return path


def make_portable(path: Path) -> None:
    """Patch config.json and tokenizer_config.json in `path` as `save_model` describes."""
    config = json.loads((path / "config.json").read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta"))
    files.write_text(path / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    files.write_text(path / "tokenizer_config.json", json.dumps(tok_config, indent=2) + "\n")


@torch.no_grad()
def next_token_probs(model: HookedTransformer, prompt: str) -> Tensor:
    """Next-token distribution [d_vocab] after `prompt` (sink token prepended)."""
    return model(to_tokens(model, prompt)[None])[0, -1].softmax(-1)


def fact_accuracy(model: HookedTransformer, facts: list[Fact], template: str | None = None) -> float:
    """Share of facts whose top next token is the holder's first name."""
    hits = 0
    for fact in facts:
        prompt = fact.prompt(template) if template else fact.prompt()
        top = int(next_token_probs(model, prompt).argmax())
        hits += model.tokenizer.decode([top]) == " " + fact.name.split()[0]
    return hits / max(1, len(facts))
