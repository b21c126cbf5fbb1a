"""Snapshots of everything a call could leave changed on a HookedTransformer, for the no-change tests."""

from __future__ import annotations

import torch


def snapshot(model) -> dict:
    """Hooks (ours and torch's), modules, cfg, requires_grad, grads, train/eval flags and parameters."""
    return {
        "hook_points": {
            n: (tuple(map(id, hp.fwd_hooks)), tuple(map(id, hp.bwd_hooks)))
            for n, hp in model.hook_dict.items()
        },
        "torch_hooks": {
            n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks))
            for n, m in model.named_modules()
        },
        "modules": [id(m) for m in model.modules()],
        "cfg_id": id(model.cfg),
        "cfg": dict(model.cfg.__dict__),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "context_level": model.context_level,
        "tokenizer": id(model.tokenizer),
        "params": {n: (p.detach().clone(), p.dtype, p.device) for n, p in model.named_parameters()},
    }


def assert_unchanged(model, before: dict, tokens, logits_before) -> None:
    """`model` is as in `before` and gives bit-identical logits on `tokens`."""
    after = snapshot(model)
    assert before.keys() == after.keys()
    for key in before:
        if key == "params":
            assert before[key].keys() == after[key].keys()
            for n, (value, dtype, device) in before[key].items():
                assert after[key][n][1:] == (dtype, device), n
                assert torch.equal(after[key][n][0], value), n
        else:
            assert before[key] == after[key], key
    with torch.no_grad():
        assert torch.equal(model(tokens), logits_before), "logits changed"
