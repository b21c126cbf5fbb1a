"""A small JumpReLU cross-layer transcoder trainer for the toy world (CPU, minutes).

The CLT reads each layer's MLP input `x_l` (`blocks.{l}.ln2.hook_normalized * ln2.w`) and writes
every later MLP output: `f_l = JumpReLU(W_enc_l x_l + b_enc_l, theta_l)`,
`mlp_out_l ~ sum_{k<=l} W_dec_{k->l} f_k + b_dec_l`.

Training (kept simple on purpose):
- inputs and outputs are divided by one RMS scale per layer; the scales are folded back on export;
- loss = sum over layers of the batch FVU + `sparsity * sum_f tanh(c * f * |W_dec_f|)` (Anthropic's
  tanh penalty; |W_dec_f| is the norm of the feature's decoder rows over all layers it writes to),
  with `sparsity` ramped up linearly from 0 over the first half of training;
- the threshold theta = exp(log_theta) gets gradients by a straight-through estimator: the jump of
  JumpReLU is smoothed by a rectangle of width `bandwidth` (Rajamanoharan et al. 2024).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt.sites import sites_for
from tl_clt.synthetic import write_clt_folder
from tl_clt.toyworld.train_model import encode

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

INPUT_HOOK = "mlp.hook_in"  # the CLT reads the MLP's true input (ln2's output, weight included)


@torch.no_grad()
def collect_activations(
    model: HookedTransformer, corpus: list[str], batch_size: int = 128
) -> tuple[Float[Tensor, "n_layers n_tok d_model"], Float[Tensor, "n_layers n_tok d_model"]]:
    """(mlp_in, mlp_out) at every real token of `corpus`, sink position excluded."""
    ids, lengths = encode(model.tokenizer, corpus)
    n_layers, sites = model.cfg.n_layers, sites_for(model)
    ins = [sites.clt_input_hook(INPUT_HOOK, layer) for layer in range(n_layers)]
    outs = [sites.mlp_out_hook(layer) for layer in range(n_layers)]
    mlp_in, mlp_out = [], []
    for start in range(0, len(ids), batch_size):
        x, n = ids[start : start + batch_size], lengths[start : start + batch_size]
        x = x[:, : int(n.max())].to(model.cfg.device)
        _, cache = model.run_with_cache(x, names_filter=ins + outs, return_type=None)
        pos = torch.arange(x.shape[1])[None]
        keep = (pos < n[:, None]) & (pos > 0)
        mlp_in.append(
            torch.stack([sites.to_clt_input(model, INPUT_HOOK, k, cache[h][keep]) for k, h in enumerate(ins)])
        )
        mlp_out.append(torch.stack([cache[h][keep] for h in outs]))
    return torch.cat(mlp_in, 1).float().cpu(), torch.cat(mlp_out, 1).float().cpu()


class JumpReLU(torch.autograd.Function):
    """`z * (z > theta)`; d/dz as usual, d/dtheta through a rectangle kernel of width `bandwidth`"""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < ctx.bandwidth / 2).to(z.dtype)
        grad_theta = (grad * -(theta / ctx.bandwidth) * near).sum_to_size(theta.shape)
        return grad * (z > theta), grad_theta, None


class TrainableCLT(torch.nn.Module):
    """CLT parameters in the normalised space used for training (see module docstring)."""

    def __init__(self, n_layers: int, d_model: int, n_features: int, theta: float = 1.0):
        super().__init__()
        self.n_layers, self.d_model, self.n_features = n_layers, d_model, n_features
        self.W_enc = torch.nn.Parameter(torch.randn(n_layers, n_features, d_model) / d_model**0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(n_layers, n_features))
        self.log_theta = torch.nn.Parameter(torch.full((n_layers, n_features), float(theta)).log())
        scale = 0.1 / n_features**0.5
        self.W_dec = torch.nn.ParameterList(
            [
                torch.nn.Parameter(torch.randn(n_features, n_layers - k, d_model) * scale)
                for k in range(n_layers)
            ]
        )
        self.b_dec = torch.nn.Parameter(torch.zeros(n_layers, d_model))

    def decoder_norms(self) -> Float[Tensor, "n_layers n_features"]:
        """Norm of each feature's decoder rows over all layers it writes to."""
        return torch.stack([w.pow(2).sum((1, 2)).sqrt() for w in self.W_dec])

    def forward(
        self, x: Float[Tensor, "n_layers batch d_model"], bandwidth: float = 0.1
    ) -> tuple[Float[Tensor, "n_layers batch n_features"], Float[Tensor, "n_layers batch d_model"]]:
        """(feature activations, reconstructed MLP outputs)."""
        pre = torch.einsum("lbd,lfd->lbf", x, self.W_enc) + self.b_enc[:, None]
        acts = JumpReLU.apply(pre, self.log_theta.exp()[:, None], bandwidth)
        recon = self.b_dec[:, None].expand(-1, x.shape[1], -1)
        parts = [torch.einsum("bf,fjd->jbd", acts[k], self.W_dec[k]) for k in range(self.n_layers)]
        into = [sum(parts[k][t - k] for k in range(t + 1)) for t in range(self.n_layers)]
        recon = recon + torch.stack(into)
        return acts, recon


def rms_scales(t: Float[Tensor, "n_layers n_tok d_model"]) -> Float[Tensor, " n_layers"]:
    """Per-layer RMS over tokens and dimensions."""
    return t.pow(2).mean((1, 2)).sqrt()


def train_clt(
    mlp_in: Float[Tensor, "n_layers n_tok d_model"],
    mlp_out: Float[Tensor, "n_layers n_tok d_model"],
    n_features: int = 512,
    steps: int = 1500,
    batch_size: int = 1024,
    lr: float = 2e-3,
    sparsity: float = 2e-3,
    tanh_c: float = 1.0,
    seed: int = 0,
    log_every: int = 250,
) -> tuple[TrainableCLT, Tensor, Tensor]:
    """(trained CLT in normalised space, input scales, output scales); seeded."""
    torch.manual_seed(seed)
    s_in, s_out = rms_scales(mlp_in), rms_scales(mlp_out)
    x_all, y_all = mlp_in / s_in[:, None, None], mlp_out / s_out[:, None, None]
    n_layers, n_tok, d_model = x_all.shape
    clt = TrainableCLT(n_layers, d_model, n_features)
    with torch.no_grad():
        clt.b_dec.copy_(y_all.mean(1))
    var = (y_all - y_all.mean(1, keepdim=True)).pow(2).sum(-1).mean(1)  # [n_layers]
    opt = torch.optim.Adam(clt.parameters(), lr=lr)
    gen, start = torch.Generator().manual_seed(seed), time.time()
    for step in range(steps):
        idx = torch.randint(n_tok, (batch_size,), generator=gen)
        acts, recon = clt(x_all[:, idx])
        fvu = (y_all[:, idx] - recon).pow(2).sum(-1).mean(1) / var
        penalty = torch.tanh(tanh_c * acts * clt.decoder_norms()[:, None]).sum((0, 2)).mean()
        ramp = min(1.0, step / (steps / 2))
        frac = 1 - step / steps
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, 5 * frac)  # decay over the last 20%
        loss = fvu.sum() + sparsity * ramp * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            l0 = (acts > 0).sum(-1).float().mean(1)
            print(
                f"  step {step:5d}  fvu {[round(v, 3) for v in fvu.tolist()]}  "
                f"l0 {[round(v, 1) for v in l0.tolist()]}  ({time.time() - start:.0f}s)"
            )
    return clt, s_in, s_out


@torch.no_grad()
def export_clt(clt: TrainableCLT, s_in: Tensor, s_out: Tensor, path: str | Path, model_name: str) -> Path:
    """Fold the scales back in; write BluelightAI's split format (bf16) with `write_clt_folder`."""
    W_enc = [clt.W_enc[k] / s_in[k] for k in range(clt.n_layers)]
    b_enc = list(clt.b_enc)
    theta = list(clt.log_theta.exp())
    W_dec = [w * s_out[k:, None] for k, w in enumerate(clt.W_dec)]
    b_dec = [clt.b_dec[k] * s_out[k] for k in range(clt.n_layers)]
    return write_clt_folder(
        path, W_enc, b_enc, W_dec, b_dec, theta, model_name=model_name, feature_input_hook=INPUT_HOOK
    )
