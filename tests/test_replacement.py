"""replacement_hooks, feature_activations and reconstruction_report against direct computations."""

from __future__ import annotations

import torch
from conftest import PROMPT
from safetensors.torch import load_file

import tl_clt


def _raw(clt_dir, n_layers):
    enc = [load_file(str(clt_dir / f"W_enc_{k}.safetensors")) for k in range(n_layers)]
    dec = [load_file(str(clt_dir / f"W_dec_{k}.safetensors"))[f"W_dec_{k}"].float() for k in range(n_layers)]
    return enc, dec


def _direct_acts(enc, k, x):
    pre = x @ enc[k][f"W_enc_{k}"].float().T + enc[k][f"b_enc_{k}"].float()
    return pre * (pre > enc[k][f"threshold_{k}"].float())


def test_error_term_gives_the_original_logits(model, clt):
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    clean = model(tokens)
    with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt, use_error_term=True)):
        replaced = model(tokens)
    torch.testing.assert_close(replaced, clean, atol=1e-5, rtol=1e-5)


def test_replacement_writes_the_clt_reconstruction(model, clt, clt_dir):
    """Each MLP output becomes sum_{k<=l} W_dec_{k->l} f_k + b_dec_l of the replaced model's own inputs."""
    enc, dec = _raw(clt_dir, 3)
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    seen_in, seen_out = {}, {}

    def grab_in(t, hook):
        seen_in[int(hook.name.split(".")[1])] = t[0] * model.blocks[int(hook.name.split(".")[1])].ln2.w
        return t

    def grab_out(t, hook):
        seen_out[int(hook.name.split(".")[1])] = t[0].clone()
        return t

    ours = tl_clt.replacement_hooks(model, clt)
    mine = [(f"blocks.{k}.ln2.hook_normalized", grab_in) for k in range(3)]
    mine += [(f"blocks.{k}.hook_mlp_out", grab_out) for k in range(3)]
    with model.hooks(fwd_hooks=ours + mine):  # ours run first at each hook point
        logits = model(tokens)
    acts = [_direct_acts(enc, k, seen_in[k].detach()) for k in range(3)]
    for layer in range(3):
        expected = enc[layer][f"b_dec_{layer}"].float().expand_as(seen_out[layer]).clone()
        for k in range(layer + 1):
            expected += acts[k] @ dec[k][:, layer - k]
        torch.testing.assert_close(seen_out[layer], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, model(tokens), atol=1e-3), "a random CLT must change the output"


def test_feature_activations_are_the_direct_encoding(model, clt, clt_dir):
    enc, _ = _raw(clt_dir, 3)
    acts = tl_clt.feature_activations(model, clt, PROMPT)
    assert acts.is_sparse and acts.shape == (3, len(tl_clt.to_tokens(model, PROMPT)), 96)
    _, cache = model.run_with_cache(tl_clt.to_tokens(model, PROMPT)[None])
    for k in range(3):
        x = cache[f"blocks.{k}.ln2.hook_normalized"][0] * model.blocks[k].ln2.w
        torch.testing.assert_close(acts.to_dense()[k], _direct_acts(enc, k, x.detach()))


def test_reconstruction_report_matches_direct_numbers(model, clt, clt_dir):
    enc, dec = _raw(clt_dir, 3)
    report = tl_clt.reconstruction_report(model, clt, PROMPT)
    tokens = tl_clt.to_tokens(model, PROMPT)
    _, cache = model.run_with_cache(tokens[None])
    acts = [
        _direct_acts(enc, k, (cache[f"blocks.{k}.ln2.hook_normalized"][0] * model.blocks[k].ln2.w).detach())
        for k in range(3)
    ]
    for layer in range(3):
        out = cache[f"blocks.{layer}.hook_mlp_out"][0, 1:]
        recon = enc[layer][f"b_dec_{layer}"].float() + sum(
            acts[k][1:] @ dec[k][:, layer - k] for k in range(layer + 1)
        )
        fvu = ((out - recon) ** 2).sum() / ((out - out.mean(0)) ** 2).sum()
        assert abs(report.fvu[layer] - float(fvu)) < 1e-4
        assert abs(report.l0[layer] - float((acts[layer][1:] > 0).sum(-1).float().mean())) < 1e-6
    with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt)):
        rep = model(tokens[None])[0, 1:].log_softmax(-1)
    clean = model(tokens[None])[0, 1:].log_softmax(-1)
    kl = (clean.exp() * (clean - rep)).sum(-1).mean()
    assert abs(report.kl - float(kl)) < 1e-5 and report.kl > 0
    agree = (clean.argmax(-1) == rep.argmax(-1)).float().mean()
    assert report.top1_agreement == float(agree)
    assert "FVU" in str(report) and len(str(report).splitlines()) == 5
