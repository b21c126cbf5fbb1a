"""Graph node ids and feature keys, shared by steering and supernodes.

A node is named either by its networkx id (`"F:{layer}:{pos}:{feature}"`, `"E:{layer}:{pos}"`,
`"T:{pos}"`, `"L:{token_id}"`, see graph.py) or, for features, by a `(layer, pos, feature)` key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

FeatureKey = tuple[int, int, int]
NodeLike = str | Sequence[int]
_KINDS = {"F": ("feature", 3), "E": ("error", 2), "T": ("token", 1), "L": ("logit", 1)}


def _is_int(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.ndim == 0 and not x.is_floating_point() and x.dtype != torch.bool
    return isinstance(x, int) and not isinstance(x, bool)


def is_key(node) -> bool:
    """True for a `(layer, pos, feature)` triple of ints (a tuple, list or 1-D tensor)."""
    if isinstance(node, torch.Tensor):
        return node.ndim == 1 and len(node) == 3 and not node.is_floating_point()
    return isinstance(node, (tuple, list)) and len(node) == 3 and all(_is_int(x) for x in node)


def node_kind(node_id: str) -> str:
    """ "feature" | "error" | "token" | "logit" for a node id; ValueError for a malformed id."""
    parts = node_id.split(":") if isinstance(node_id, str) else []
    kind = _KINDS.get(parts[0]) if parts else None
    if kind is None or len(parts) != kind[1] + 1 or not all(_int_str(p) for p in parts[1:]):
        raise ValueError(
            f"{node_id!r} is not a node id. Node ids look like 'F:layer:pos:feature', "
            "'E:layer:pos', 'T:pos' or 'L:token_id'; features can also be given as "
            "(layer, pos, feature) tuples."
        )
    return kind[0]


def _int_str(s: str) -> bool:
    return s.lstrip("-").isdigit()


def to_node_id(node: NodeLike) -> str:
    """The networkx node id of a node id or a `(layer, pos, feature)` key."""
    if isinstance(node, str):
        node_kind(node)
        return node
    if is_key(node):
        layer, pos, feature = (int(x) for x in node)
        return f"F:{layer}:{pos}:{feature}"
    raise TypeError(f"Expected a node id like 'F:12:5:847' or a (layer, pos, feature) tuple, got {node!r}.")


def feature_key(node: NodeLike) -> FeatureKey:
    """`(layer, pos, feature)` of a feature node id or key; ValueError for other node kinds."""
    node_id = to_node_id(node)
    kind = node_kind(node_id)
    if kind != "feature":
        raise ValueError(
            f"{node_id!r} is a {kind} node; only features (ids 'F:layer:pos:feature') can be "
            "steered or scaled."
        )
    layer, pos, feature = (int(x) for x in node_id.split(":")[1:])
    return layer, pos, feature


def as_node_list(nodes: NodeLike | Iterable[NodeLike]) -> list[NodeLike]:
    """A single node (id or key) as a one-element list; an iterable of nodes as a list."""
    if isinstance(nodes, str) or is_key(nodes):
        return [nodes]
    if isinstance(nodes, torch.Tensor) and nodes.ndim == 2:
        return [tuple(int(x) for x in row) for row in nodes]
    return list(nodes)
