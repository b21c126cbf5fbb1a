"""Graph node ids: every spelling a user meets, formatted and parsed here only.

Spellings of a node (all accepted wherever a node is taken):
- Python ids (networkx, `graph.node_id`): `"F:{layer}:{pos}:{feature}"`, `"E:{layer}:{pos}"` (MLP error),
  `"T:{pos}"` (token), `"L:{token_id}"` (logit, at the last position);
- the CLI's feature spelling `"{layer}:{pos}:{feature}"`;
- a `(layer, pos, feature)` tuple, list or 1-D integer tensor (features), or a `Node`;
- the frontend / Neuronpedia JSON ids (`tl_clt.export`): feature `"{layer}_{feature}_{pos}"`, error
  `"{layer}_-1_{pos}"`, token `"E_{token_id}_{pos}"`, logit `"{n_layers + 1}_{token_id}_{pos}"`. A logit's
  JSON id reads as a feature's unless `n_layers` is known, so functions that know the graph pass it;
  `to_json_id` needs the prompt's tokens too (a token node's id holds its token id).
Numbers are ASCII digits, with a minus sign allowed (negative positions count from the end).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import torch

FeatureKey = tuple[int, int, int]
KINDS = ("feature", "error", "token", "logit")
PYTHON_FORMATS = {
    "feature": "F:{layer}:{pos}:{feature}",
    "error": "E:{layer}:{pos}",
    "token": "T:{pos}",
    "logit": "L:{token_id}",
}
JSON_FORMATS = {  # the circuit-tracer frontend's node_id
    "feature": "{layer}_{feature}_{pos}",
    "error": "{layer}_-1_{pos}",
    "token": "E_{token_id}_{pos}",
    "logit": "{logit_layer}_{token_id}_{pos}",
}
_INT = r"(-?[0-9]+)"  # ASCII digits only: "¹".isdigit() and int("٣") would accept other scripts
_PYTHON = {
    "feature": re.compile(rf"F:{_INT}:{_INT}:{_INT}"),  # layer, pos, feature
    "error": re.compile(rf"E:{_INT}:{_INT}"),  # layer, pos
    "token": re.compile(rf"T:{_INT}"),  # pos
    "logit": re.compile(rf"L:{_INT}"),  # token id
}
_CLI_FEATURE = re.compile(rf"{_INT}:{_INT}:{_INT}")  # layer, pos, feature
_JSON_ERROR = re.compile(rf"{_INT}_-1_{_INT}")  # layer, pos
_JSON_TOKEN = re.compile(rf"E_{_INT}_{_INT}")  # token id, pos
_JSON_FEATURE_OR_LOGIT = re.compile(rf"{_INT}_{_INT}_{_INT}")  # layer, feature, pos | n_layers+1, token, pos
SPELLINGS = (
    "Node ids look like 'F:layer:pos:feature', 'E:layer:pos', 'T:pos' or 'L:token_id' (ASCII digits); "
    "features can also be given as 'layer:pos:feature', (layer, pos, feature) tuples or the frontend's "
    "JSON ids ('layer_feature_pos')."
)


class Node(NamedTuple):
    """One node: its kind and the fields that name it (the others None)."""

    kind: str  # "feature" | "error" | "token" | "logit"
    layer: int | None = None
    pos: int | None = None
    feature: int | None = None
    token_id: int | None = None

    @classmethod
    def from_info(cls, info: Mapping) -> Node:
        """The node described by `AttributionGraph.node_info` (or a networkx node's attributes)."""
        return cls(
            info["kind"], info.get("layer"), info.get("pos"), info.get("feature"), info.get("token_id")
        )

    @property
    def id(self) -> str:
        """The Python node id."""
        return PYTHON_FORMATS[self.kind].format(**self._asdict())

    @property
    def key(self) -> FeatureKey:
        """`(layer, pos, feature)` of a feature node; ValueError for the other kinds."""
        if self.kind != "feature":
            raise ValueError(
                f"{self.id!r} is a {self.kind} node; only features (ids 'F:layer:pos:feature') can be "
                "steered or scaled."
            )
        return self.layer, self.pos, self.feature

    def json_id(self, *, n_layers: int, pos: int | None = None) -> str:
        """The frontend's JSON id (`pos`: the position of a token or logit node when it is not known)."""
        fields = {**self._asdict(), "pos": self.pos if self.pos is not None else pos}
        return JSON_FORMATS[self.kind].format(logit_layer=n_layers + 1, **fields)


NodeLike = str | Sequence[int] | Node


def _is_int(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.ndim == 0 and not x.is_floating_point() and x.dtype != torch.bool
    return isinstance(x, int) and not isinstance(x, bool)


def is_key(node) -> bool:
    """True for a `(layer, pos, feature)` triple of ints (a tuple, list or 1-D tensor)."""
    if isinstance(node, Node):
        return False
    if isinstance(node, torch.Tensor):
        return node.ndim == 1 and len(node) == 3 and not node.is_floating_point()
    return isinstance(node, (tuple, list)) and len(node) == 3 and all(_is_int(x) for x in node)


def _parse_str(text: str, n_layers: int | None) -> Node | None:
    for kind, pattern in _PYTHON.items():
        if m := pattern.fullmatch(text):
            values = [int(v) for v in m.groups()]
            if kind == "feature":
                return Node(kind, *values)
            if kind == "error":
                return Node(kind, values[0], values[1])
            return Node(kind, pos=values[0]) if kind == "token" else Node(kind, token_id=values[0])
    if m := _CLI_FEATURE.fullmatch(text):
        return Node("feature", *(int(v) for v in m.groups()))
    if m := _JSON_ERROR.fullmatch(text):
        return Node("error", int(m[1]), int(m[2]))
    if m := _JSON_TOKEN.fullmatch(text):
        return Node("token", pos=int(m[2]), token_id=int(m[1]))
    if m := _JSON_FEATURE_OR_LOGIT.fullmatch(text):
        first, middle, pos = (int(v) for v in m.groups())
        if n_layers is not None and first == n_layers + 1:
            return Node("logit", pos=pos, token_id=middle)
        return Node("feature", first, pos, middle)
    return None


def parse_node(node: NodeLike, *, n_layers: int | None = None) -> Node:
    """The `Node` named by any spelling (module docstring); ValueError / TypeError for anything else.

    `n_layers` (the graph's) lets a logit's JSON id be told from a feature's.
    """
    if isinstance(node, Node):
        return node
    if isinstance(node, str):
        parsed = _parse_str(node, n_layers)
        if parsed is None:
            raise ValueError(f"{node!r} is not a node id. {SPELLINGS}")
        return parsed
    if is_key(node):
        return Node("feature", *(int(x) for x in node))
    raise TypeError(f"Expected a node id like 'F:12:5:847' or a (layer, pos, feature) tuple, got {node!r}.")


def node_id(node: NodeLike, *, n_layers: int | None = None) -> str:
    """The Python node id (`"F:12:5:847"`, ...) of a node in any spelling."""
    return parse_node(node, n_layers=n_layers).id


def node_kind(node: NodeLike, *, n_layers: int | None = None) -> str:
    """ "feature" | "error" | "token" | "logit" for a node in any spelling; ValueError for a malformed id."""
    return parse_node(node, n_layers=n_layers).kind


def feature_key(node: NodeLike, *, n_layers: int | None = None) -> FeatureKey:
    """`(layer, pos, feature)` of a feature node in any spelling; ValueError for other node kinds."""
    return parse_node(node, n_layers=n_layers).key


def to_json_id(node: NodeLike, *, n_layers: int, tokens: Sequence[int]) -> str:
    """The frontend's JSON id of a node; `tokens` are the prompt's (a token's id, the logits' position)."""
    parsed = parse_node(node, n_layers=n_layers)
    if parsed.kind == "token":
        parsed = parsed._replace(token_id=int(tokens[parsed.pos]))
    return parsed.json_id(n_layers=n_layers, pos=len(tokens) - 1)


def from_json_id(json_id: str, *, n_layers: int) -> str:
    """The Python node id of a frontend JSON id (needs the graph's `n_layers` to tell logits apart)."""
    return node_id(json_id, n_layers=n_layers)


# kept for callers of the first version of this module
to_node_id = node_id


def as_node_list(nodes: NodeLike | Iterable[NodeLike]) -> list[NodeLike]:
    """A single node (id, key or Node) as a one-element list; an iterable of nodes as a list."""
    if isinstance(nodes, (str, Node)) or is_key(nodes):
        return [nodes]
    if isinstance(nodes, torch.Tensor) and nodes.ndim == 2:
        return [tuple(int(x) for x in row) for row in nodes]
    return list(nodes)


def group_members(name: str, members) -> list[NodeLike]:
    """The members of group `name` as a list: one node (id, key or Node) or an iterable of nodes.

    A single id string is one member (never its characters); a number, a mapping or None is refused.
    """
    if isinstance(members, (str, Node)) or is_key(members):
        return [members]
    if isinstance(members, Mapping) or not isinstance(members, Iterable):
        raise TypeError(
            f"Group {name!r}: members must be a list of nodes (ids like 'F:1:2:3', (layer, pos, feature) "
            f"keys), got {members!r} ({type(members).__name__})."
        )
    return as_node_list(members)
