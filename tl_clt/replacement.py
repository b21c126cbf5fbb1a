"""The replacement model as a user sees it: active features of a prompt, and how well the CLT fits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.display import as_feature_activations
from tl_clt.hooks import capture_hooks, check_compatible, preserve, replacement_hooks
from tl_clt.prompts import Prompt, to_tokens


def _capture(model: HookedTransformer, clt: CrossLayerTranscoder, tokens: Tensor):
    store: dict[str, list] = {}
    with preserve(model), torch.no_grad(), model.hooks(fwd_hooks=capture_hooks(model, clt, store)):
        logits = model(tokens[None])
    return torch.cat(store["mlp_in"]), torch.cat(store["mlp_out"]), logits[0]


def feature_activations(
    model: HookedTransformer, clt: CrossLayerTranscoder, prompt: Prompt
) -> Float[Tensor, "n_layers pos n_features"]:
    """Active CLT features of `prompt` as a sparse COO tensor indexed (layer, pos, feature); it prints
    as a short summary (`tl_clt.display.FeatureActivations`, a torch.Tensor).

    Positions are those of `tl_clt.to_tokens(model, prompt)` (sink token at 0 included here).
    """
    check_compatible(model, clt)
    mlp_in, _, _ = _capture(model, clt, to_tokens(model, prompt))
    with torch.no_grad():
        acts = torch.stack([clt.encode(mlp_in[k], k) for k in range(clt.n_layers)])
    return as_feature_activations(acts.to_sparse().coalesce())


@dataclass
class ReconstructionReport:
    """Per-layer FVU and L0 of the CLT on a prompt, and how the replacement model's output compares."""

    fvu: list[float]  # per layer: |mlp_out - recon|^2 / |mlp_out - mean|^2 (positions >= 1)
    l0: list[float]  # per layer: mean number of active features per position (positions >= 1)
    top1_agreement: float  # share of positions where model and replacement agree on the top token
    kl: float  # mean KL(model || replacement) over positions, in nats

    def __str__(self) -> str:
        lines = ["layer    FVU      L0"]
        lines += [f"{i:>5} {f:8.4f} {n:7.1f}" for i, (f, n) in enumerate(zip(self.fvu, self.l0))]
        lines.append(f"top-1 agreement {self.top1_agreement:.3f}   KL {self.kl:.4f} nats")
        return "\n".join(lines)


def reconstruction_report(
    model: HookedTransformer, clt: CrossLayerTranscoder, prompt: Prompt
) -> ReconstructionReport:
    """FVU, L0, top-1 agreement and KL of the replacement model (every MLP replaced) vs the model."""
    check_compatible(model, clt)
    tokens = to_tokens(model, prompt)
    if len(tokens) < 2:
        raise ValueError(
            "The prompt is only the attention-sink token; the report averages over the positions after "
            "it, so pass at least one real token."
        )
    mlp_in, mlp_out, logits = _capture(model, clt, tokens)
    with torch.no_grad():
        acts = torch.stack([clt.encode(mlp_in[k], k) for k in range(clt.n_layers)])
        recon = clt.decode(acts)
        with preserve(model), model.hooks(fwd_hooks=replacement_hooks(model, clt)):
            rep_logits = model(tokens[None])[0]
    body = slice(1, None)
    resid = (mlp_out[:, body] - recon[:, body]).pow(2).sum((-1, -2))
    total = (mlp_out[:, body] - mlp_out[:, body].mean(1, keepdim=True)).pow(2).sum((-1, -2))
    logp, logq = logits.log_softmax(-1), rep_logits.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)[body].mean()
    agree = (logits.argmax(-1) == rep_logits.argmax(-1))[body].float().mean()
    return ReconstructionReport(
        fvu=(resid / total.clamp(min=1e-12)).tolist(),
        l0=(acts[:, body] != 0).sum(-1).float().mean(-1).tolist(),
        top1_agreement=float(agree),
        kl=float(kl),
    )
