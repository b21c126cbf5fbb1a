"""FeatureCard: one feature's dashboard record, readable as text (`repr`) and as HTML in notebooks."""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """A context where the feature fired: its tokens, the feature's activation on each, and the token
    (`index`, the record's `train_token_ind`) it was chosen for."""

    tokens: list[str]
    acts: list[float]
    index: int
    repeated: bool = False

    @property
    def token(self) -> str:
        return self.tokens[self.index] if 0 <= self.index < len(self.tokens) else ""

    @property
    def act(self) -> float:
        return float(self.acts[self.index]) if 0 <= self.index < len(self.acts) else float("nan")

    def text(self, width: int = 70) -> str:
        """The context as one line, the chosen token in «», cut to about `width` characters around it."""
        left = "".join(self.tokens[: self.index])
        right = "".join(self.tokens[self.index + 1 :])
        mid = f"«{self.token}»"
        room = max(width - len(mid), 10)
        n_left = min(len(left), max(room - min(len(right), room // 3), room // 2))
        n_right = max(room - n_left, 0)
        left = left if len(left) <= n_left else "…" + left[len(left) - n_left + 1 :]
        right = right if len(right) <= n_right else right[: max(n_right - 1, 0)] + "…"
        return (left + mid + right).replace("\n", "⏎")


@dataclass(frozen=True)
class ExampleGroup:
    """A named group of examples (the record's `examples_quantiles[i]`)."""

    name: str
    examples: list[Example]


def _examples(group: dict) -> list[Example]:
    out = []
    for ex in group.get("examples") or []:
        tokens = [str(t) for t in ex.get("tokens") or []]
        acts = [float(a) for a in ex.get("tokens_acts_list") or []]
        index = ex.get("train_token_ind")
        if not isinstance(index, int):  # a record without it: the most active token
            index = max(range(len(acts)), key=acts.__getitem__) if acts else 0
        out.append(Example(tokens, acts, index, bool(ex.get("is_repeated_datapoint", False))))
    return out


def _show(token: str) -> str:
    """A token for a one-line label: stripped, or its repr when it is only whitespace; characters that
    do not print (control bytes of byte-level tokens) are written as escapes (`\\x19`)."""
    text = token.strip()
    if not text:
        return repr(token)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, repr=False)
class FeatureCard:
    """What feature `feature` of layer `layer` does, from its dashboard record.

    `groups[0]` holds the top activating examples; the others sample activation intervals.
    `label` is a short automatic name (top activating tokens -> top output tokens); `record` is the
    raw JSON record.
    """

    layer: int
    feature: int
    activation_frequency: float | None
    act_min: float | None
    act_max: float | None
    quantile_values: list[float]
    histogram: list[float]
    top_logits: list[str]
    bottom_logits: list[str]
    groups: list[ExampleGroup]
    record: dict = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict, layer: int, feature: int) -> FeatureCard:
        def num(key):
            value = record.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        groups = [
            ExampleGroup(str(g.get("quantile_name", "")), _examples(g))
            for g in record.get("examples_quantiles") or []
            if isinstance(g, dict)
        ]
        return cls(
            layer=layer,
            feature=feature,
            activation_frequency=num("activation_frequency"),
            act_min=num("act_min"),
            act_max=num("act_max"),
            quantile_values=[float(v) for v in record.get("quantile_values") or []],
            histogram=[float(v) for v in record.get("histogram") or []],
            top_logits=[str(t) for t in record.get("top_logits") or []],
            bottom_logits=[str(t) for t in record.get("bottom_logits") or []],
            groups=groups,
            record=record,
        )

    # ---------------------------------------------------------------- summaries
    @property
    def top_examples(self) -> list[Example]:
        return self.groups[0].examples if self.groups else []

    @property
    def max_activation(self) -> float | None:
        acts = [ex.act for g in self.groups for ex in g.examples]
        return max(acts) if acts else None

    def top_tokens(self, k: int = 3) -> list[str]:
        """The most common chosen tokens among the top examples (first seen wins ties)."""
        counts = Counter(_show(ex.token) for ex in self.top_examples)
        return [t for t, _ in counts.most_common(k)]

    @property
    def label(self) -> str:
        """A short name: `top activating tokens → top output tokens` (empty for a feature never seen)."""
        inputs = " / ".join(self.top_tokens(3))
        outputs = ", ".join(_show(t) for t in self.top_logits[:2])
        if not inputs:
            return f"→ {outputs}" if outputs else ""
        text = f"{inputs} → {outputs}" if outputs else inputs
        return text if len(text) <= 60 else text[:59] + "…"

    # ---------------------------------------------------------------- text
    def __repr__(self) -> str:
        freq = "?" if self.activation_frequency is None else f"{100 * self.activation_frequency:.3g}%"
        top = self.max_activation
        lines = [
            f"FeatureCard(layer={self.layer}, feature={self.feature}): active on {freq} of tokens"
            + ("" if top is None else f", max activation {top:.3g}"),
            f"  label:         {self.label or '(no examples)'}",
            "  top logits:    " + " ".join(repr(t) for t in self.top_logits[:6]),
            "  bottom logits: " + " ".join(repr(t) for t in self.bottom_logits[:6]),
        ]
        examples = self.top_examples[:3]
        if examples:
            lines.append(f"  {self.groups[0].name}:")
            lines += [f"    {ex.act:7.3f}  {ex.text()}" for ex in examples]
        more = len(self.groups) - 1
        if more > 0:
            lines.append(f"  (+ {more} more example groups; card._repr_html_() or card.groups)")
        return "\n".join(lines)

    # ---------------------------------------------------------------- HTML
    def _repr_html_(self) -> str:
        scale = self.act_max or self.max_activation or 1.0
        freq = "?" if self.activation_frequency is None else f"{100 * self.activation_frequency:.3g}%"
        parts = [
            '<div style="font-family:sans-serif;font-size:13px;max-width:900px">',
            f"<div><b>Feature {self.layer}/{self.feature}</b> &nbsp;"
            f'<span style="color:#666">active on {freq} of tokens'
            + (f", max activation {self.max_activation:.3g}" if self.max_activation is not None else "")
            + "</span></div>",
            f'<div style="margin:2px 0 6px 0;color:#333"><i>{html.escape(self.label)}</i></div>',
            _logit_row("Top outputs", self.top_logits, "#d9f2d9"),
            _logit_row("Bottom outputs", self.bottom_logits, "#f6d6d6"),
            _histogram_svg(self.histogram, self.act_min, self.act_max),
        ]
        for group in self.groups:
            parts.append(f'<div style="margin-top:8px;font-weight:bold">{html.escape(group.name)}</div>')
            parts += [_example_html(ex, scale) for ex in group.examples]
        parts.append("</div>")
        return "\n".join(parts)


def _logit_row(title: str, tokens: list[str], color: str) -> str:
    chips = "".join(
        f'<span style="background:{color};margin:0 2px;padding:0 3px;white-space:pre;font-family:monospace">'
        f"{html.escape(t)}</span>"
        for t in tokens
    )
    return f'<div style="margin:2px 0"><span style="color:#666">{title}:</span> {chips}</div>'


def _histogram_svg(counts: list[float], lo: float | None, hi: float | None) -> str:
    if not counts or max(counts) <= 0:
        return ""
    width, height, top = 240, 50, max(counts)
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - c / top * height:.1f}" width="{bar:.1f}" '
        f'height="{c / top * height:.1f}" fill="#e67e22"/>'
        for i, c in enumerate(counts)
        if c > 0
    )
    axis = f"{lo or 0:.3g} … {hi or 0:.3g}"
    return (
        f'<div style="margin:4px 0"><svg width="{width}" height="{height}" '
        f'style="background:#f4f4f4">{rects}</svg><div style="color:#666;font-size:11px">'
        f"activations: {html.escape(axis)}</div></div>"
    )


def _example_html(ex: Example, scale: float) -> str:
    spans = []
    for i, (tok, act) in enumerate(zip(ex.tokens, ex.acts)):
        alpha = max(0.0, min(1.0, act / scale)) if scale > 0 else 0.0
        style = f"background:rgba(230,126,34,{alpha:.2f})" if act > 0 else ""
        if i == ex.index:
            style += ";border-bottom:2px solid #000"
        title = f' title="{act:.3g}"' if act else ""
        spans.append(f'<span style="{style}"{title}>{html.escape(tok)}</span>')
    opacity = "0.45" if ex.repeated else "1"
    return (
        f'<div style="white-space:pre-wrap;font-family:monospace;opacity:{opacity};margin:1px 0">'
        f'<span style="color:#888">{ex.act:6.3f} </span>{"".join(spans)}</div>'
    )
