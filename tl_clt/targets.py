"""Attribution targets: what a graph explains (`attribute(..., targets=[...])`).

A target is one row of the graph, read by one backward pass through the frozen replacement model:
- a token (a string that is exactly one token, or a token id): its de-meaned logit at the last position,
  read through the frozen final norm (the same row the default graph gives that token);
- `logit_diff(a, b)`: the de-meaned logit of `a` minus that of `b` at the last position; its row is the
  difference of the two tokens' rows (the read-out vector is the difference of theirs);
- `Direction(label, vector)`: a named residual-stream direction read like a logit at the last position,
  i.e. `vector . final_norm(resid)` with the norm's scale frozen;
- a feature node id in any spelling (`"F:2:15:301"`, `"2:15:301"`, `(2, 15, 301)`, JSON id): the rows into
  that feature's pre-activation, i.e. its row in the full graph (the feature must be active).

Graph nodes: targets sit where the logits sit (the last block of the adjacency). A token target keeps
its logit id `L:{token_id}`; any other target gets a virtual id `L:{d_vocab + i}` (past the vocabulary,
so it is never a real token; `i` counts the non-token targets) and its label in `logit_token_strs`
(`"logit_diff( Barack,  George)"`, the direction's label, `"F:2:15:301"`). Influence weights: custom
targets weigh equally, `1 / n_targets` each, summing to 1 like the default logits' probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt.nodes import is_key, parse_node


class TargetError(ValueError):
    """An attribution target that cannot be read (not one token, inactive feature, empty list, ...)."""


@dataclass(frozen=True)
class LogitDiff:
    """The de-meaned logit of token `a` minus that of token `b` at the last position."""

    a: str | int
    b: str | int

    @property
    def label(self) -> str:
        return f"logit_diff({self.a}, {self.b})"


def logit_diff(a: str | int, b: str | int) -> LogitDiff:
    """Target: the logit of `a` minus that of `b` (each a one-token string or a token id)."""
    return LogitDiff(a, b)


@dataclass(frozen=True, eq=False)
class Direction:
    """A named residual-stream direction [d_model], read like a logit at the last position."""

    label: str
    vector: Float[Tensor, " d_model"]


@dataclass
class ResolvedTarget:
    """One target made concrete: `kind` "logit" (token, logit_diff, direction) or "feature".

    logit kinds: `direction` [d_model] in unembedding space (read through the frozen final norm);
    feature: `key` (layer, pos, feature) and `active_index` into the active features.
    """

    kind: str
    label: str
    token_id: int  # the target node's id: a real token id, or a virtual one past the vocabulary
    direction: Tensor | None = None
    key: tuple[int, int, int] | None = None
    active_index: int | None = None


def token_id_of(model, token: str | int) -> int:
    """The id of a one-token string or a token id; TargetError otherwise."""
    d_vocab = model.cfg.d_vocab
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < d_vocab:
            raise TargetError(f"Token id {token} is outside the vocabulary [0, {d_vocab}).")
        return token
    if isinstance(token, str):
        ids = model.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise TargetError(
                f"Target {token!r} is {len(ids)} tokens ({ids}); give one token (e.g. with its leading "
                "space, ' Barack') or a token id."
            )
        return int(ids[0])
    raise TargetError(f"A token target is a one-token string or a token id, got {token!r}.")


def _looks_like_node(target) -> bool:
    if is_key(target):
        return True
    if isinstance(target, str):
        try:
            return parse_node(target).kind == "feature"
        except ValueError:
            return False
    return False


def resolve_targets(
    model, targets, *, W_U: Tensor, active_index: Tensor, n_layers: int
) -> list[ResolvedTarget]:
    """Concrete targets for `attribute`; TargetError for an empty list or a target that cannot be read."""
    if isinstance(targets, (str, int, LogitDiff, Direction)) or is_key(targets):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise TargetError("targets is empty; give at least one target, or None for the top logits.")
    d_vocab = W_U.shape[1]
    mean = W_U.mean(1)
    resolved: list[ResolvedTarget] = []
    n_virtual = 0

    def virtual() -> int:
        nonlocal n_virtual
        n_virtual += 1
        return d_vocab + n_virtual - 1

    for t in targets:
        if isinstance(t, LogitDiff):
            a, b = token_id_of(model, t.a), token_id_of(model, t.b)
            resolved.append(ResolvedTarget("logit", t.label, virtual(), direction=W_U[:, a] - W_U[:, b]))
        elif isinstance(t, Direction):
            v = torch.as_tensor(t.vector)
            if v.shape != (W_U.shape[0],) or not torch.isfinite(v).all():
                raise TargetError(
                    f"Direction {t.label!r} must be a finite vector of shape ({W_U.shape[0]},) (d_model), "
                    f"got shape {tuple(v.shape)}."
                )
            resolved.append(ResolvedTarget("logit", str(t.label), virtual(), direction=v.to(W_U)))
        elif _looks_like_node(t):
            node = parse_node(t, n_layers=n_layers)
            key = node.key
            hit = (active_index.cpu() == torch.tensor(key)).all(1).nonzero()
            if len(hit) == 0:
                raise TargetError(
                    f"Feature target {node.id} is not active on this prompt (or position 0, the attention "
                    "sink); pick an active feature (graph.active_features of the default graph)."
                )
            resolved.append(
                ResolvedTarget("feature", node.id, virtual(), key=key, active_index=int(hit[0, 0]))
            )
        else:
            tid = token_id_of(model, t)
            resolved.append(
                ResolvedTarget("logit", model.tokenizer.decode([tid]), tid, direction=W_U[:, tid] - mean)
            )
    return resolved


TARGET_SYNTAX = (
    "TEXT: a one-token string, exactly as written (quote it: ' Barack'); 'id:N': token id N; "
    "'diff:A|B': logit_diff(A, B), the texts after 'diff:' split at '|' and kept exactly "
    "('diff: Barack| George'); 'F:layer:pos:feature' or 'layer:pos:feature': what drives that feature; "
    "'token:TEXT': TEXT as a token even if it looks like one of the forms above"
)


def parse_target_spec(text: str):
    """A target from its command-line spelling (`TARGET_SYNTAX`); TargetError for a malformed one."""
    if text.startswith("token:"):
        return text.removeprefix("token:")
    if text.startswith("id:"):
        value = text.removeprefix("id:")
        if not value.isascii() or not value.isdigit():
            raise TargetError(f"--target {text!r}: 'id:' takes a token id (ASCII digits), e.g. 'id:1234'.")
        return int(value)
    if text.startswith("diff:"):
        parts = text.removeprefix("diff:").split("|")
        if len(parts) != 2 or not all(parts):
            raise TargetError(
                f"--target {text!r}: a difference is 'diff:A|B' with two tokens, e.g. 'diff: Barack| George'."
            )
        return LogitDiff(*parts)
    return text  # a feature id or a token: resolve_targets tells them apart
