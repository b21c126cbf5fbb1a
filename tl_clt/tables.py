"""Before/after tables of the top next tokens, printable as text and rendered as HTML in notebooks."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

from tl_clt.checks import check_k


class TokenProb(NamedTuple):
    token: str
    token_id: int
    prob: float  # in this column's distribution
    other_prob: float  # the same token in the other distribution


@dataclass
class PredictionTable:
    """Top-k next tokens before and after steering. Prints as text; renders as HTML in notebooks."""

    before: list[TokenProb]
    after: list[TokenProb]

    def rows(self) -> list[tuple[int, TokenProb, TokenProb]]:
        return [(i + 1, b, a) for i, (b, a) in enumerate(zip(self.before, self.after, strict=True))]

    def __str__(self) -> str:
        cells = [
            (
                str(r),
                repr(b.token),
                f"{b.prob:.3f}",
                f"{b.other_prob:.3f}",
                repr(a.token),
                f"{a.prob:.3f}",
                f"{a.other_prob:.3f}",
            )
            for r, b, a in self.rows()
        ]
        head = ("#", "before", "p", "p after", "after", "p", "p before")
        widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
        lines = [
            "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
            for line in [head, *cells]
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("#", "before", "p", "p after", "after", "p", "p before"))
        body = "".join(
            f"<tr><td>{r}</td><td><code>{html.escape(repr(b.token))}</code></td>"
            f"<td>{b.prob:.3f}</td><td>{b.other_prob:.3f}</td>"
            f"<td><code>{html.escape(repr(a.token))}</code></td>"
            f"<td>{a.prob:.3f}</td><td>{a.other_prob:.3f}</td></tr>"
            for r, b, a in self.rows()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _next_token_logits(logits: Tensor, pos: int) -> Float[Tensor, " d_vocab"]:
    if logits.ndim == 3:
        if logits.shape[0] != 1:
            raise ValueError(f"Expected logits of one prompt, got batch size {logits.shape[0]}.")
        logits = logits[0]
    if logits.ndim == 2 and not -len(logits) <= pos < len(logits):
        raise IndexError(f"pos {pos} is out of range for logits of {len(logits)} positions.")
    return logits[pos] if logits.ndim == 2 else logits


def prediction_table(
    model: HookedTransformer,
    before_logits: Tensor,
    after_logits: Tensor,
    k: int = 5,
    pos: int = -1,
) -> PredictionTable:
    """Top-k next tokens (at `pos`) with probabilities, before and after steering.

    Logits: [d_vocab], [pos, d_vocab] or [1, pos, d_vocab]. Each entry also shows the same token's
    probability in the other distribution.
    """
    k = check_k(k, what="tokens per column")
    p_before, p_after = (
        torch.softmax(_next_token_logits(x, pos).detach().float(), -1) for x in (before_logits, after_logits)
    )
    if p_before.shape != p_after.shape:
        raise ValueError(f"before/after logits differ in shape: {p_before.shape} vs {p_after.shape}.")

    def column(p: Tensor, other: Tensor) -> list[TokenProb]:
        top = p.topk(min(k, len(p)))
        return [
            TokenProb(model.tokenizer.decode([i]), i, float(p[i]), float(other[i]))
            for i in top.indices.tolist()
        ]

    return PredictionTable(column(p_before, p_after), column(p_after, p_before))
