"""Small hand-made AttributionGraphs (no model): a random DAG in the real node layout."""

from __future__ import annotations

from dataclasses import fields

import torch

from tl_clt import AttributionGraph


def make_graph(
    features: list[tuple[int, int, int]],
    n_layers: int = 3,
    n_pos: int = 5,
    n_logits: int = 2,
    seed: int = 0,
    density: float = 0.6,
) -> AttributionGraph:
    """Graph over `features` = [(layer, pos, feature)]: sources feed targets at higher layers and
    not-later positions; every feature, error and token also feeds the logits."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.tensor(sorted(features), dtype=torch.long).reshape(-1, 3)
    n_f = len(keys)
    n_nodes = n_f + (n_layers + 1) * n_pos + n_logits
    layer = torch.cat(
        [
            keys[:, 0].float(),
            torch.arange(n_layers).repeat_interleave(n_pos).float(),
            torch.full((n_pos,), -1.0),
        ]
    )
    pos = torch.cat([keys[:, 1], torch.arange(n_pos).repeat(n_layers), torch.arange(n_pos)])
    n_src = len(layer)
    A = torch.zeros(n_nodes, n_nodes)
    allowed = (layer[None, :] < keys[:, 0, None].float()) & (pos[None, :] <= keys[:, 1, None])
    allowed[:, n_f : n_f + n_pos] = False  # errors at position 0 are zero vectors
    weights = torch.randn(n_f, n_src, generator=gen)
    weights *= torch.rand(n_f, n_src, generator=gen) < density
    A[:n_f, :n_src] = weights * allowed
    logit_w = torch.randn(n_logits, n_src, generator=gen)
    logit_w[:, n_f : n_f + n_pos] = 0
    A[n_nodes - n_logits :, :n_src] = logit_w
    probs = torch.softmax(torch.randn(n_logits, generator=gen), 0)
    return AttributionGraph(
        tokens=torch.arange(100, 100 + n_pos),
        token_strs=["<|endoftext|>"] + [f" t{i}" for i in range(1, n_pos)],
        active_features=keys,
        activation_values=torch.rand(n_f, generator=gen) + 0.5,
        selected_features=torch.arange(n_f),
        logit_tokens=torch.arange(200, 200 + n_logits),
        logit_probabilities=probs.sort(descending=True).values,
        logit_token_strs=[f" out{i}" for i in range(n_logits)],
        adjacency=A,
        n_layers=n_layers,
        model_name="hand-made",
    )


def assert_same_graph(a: AttributionGraph, b: AttributionGraph, *, skip: tuple[str, ...] = ()) -> None:
    """Every field of the two graphs equal (tensors bit for bit, with their dtype), but those in `skip`
    (e.g. "meta": timings differ between runs), and the same networkx edges."""
    for f in fields(AttributionGraph):
        if f.name in skip:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(y, torch.Tensor):
            assert isinstance(x, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), f.name
        else:
            assert x == y, f.name
    assert list(a.to_networkx().edges(data=True)) == list(b.to_networkx().edges(data=True))
