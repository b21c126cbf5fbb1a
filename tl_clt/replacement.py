"""The replacement model as a user sees it: the CLT spliced in through hooks, active features of a prompt,
and how well the CLT fits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tl_clt.clt import CrossLayerTranscoder
from tl_clt.display import as_feature_activations
from tl_clt.frozen import all_activations, clean_pass
from tl_clt.hooks import CrossLayerWrites, HookList, added_hooks, check_compatible, preserve, refuse_saes_at
from tl_clt.prompts import SINK_POS, Prompt, to_tokens, tokens_after_sink
from tl_clt.sites import Sites


class ReplacementState(CrossLayerWrites):
    """The replacement hooks: every layer's active features write their decoder rows; each MLP output is
    replaced by what was written to it (plus the detached error, with `use_error_term`)."""

    def __init__(self, model, clt: CrossLayerTranscoder, sites: Sites, use_error_term: bool):
        super().__init__()
        self.model, self.clt, self.sites, self.use_error_term = model, clt, sites, use_error_term

    def read_input(self, value: Tensor, *, hook, layer: int) -> Tensor:
        x = self.sites.to_clt_input(self.model, self.clt.feature_input_hook, layer, value)
        acts = self.clt.encode(x, layer)
        active = acts.reshape(-1, acts.shape[-1]).abs().sum(0).nonzero().squeeze(-1)
        rows = self.clt.decoder_rows(layer, active).to(acts.dtype)  # [n, L-layer, d]
        self.add(layer, torch.einsum("...n,nld->l...d", acts[..., active], rows))
        return value

    def write_output(self, mlp_out: Tensor, *, hook, layer: int) -> Tensor:
        recon = self.clt.b_dec[layer].to(mlp_out.dtype)
        written = self.take(layer)
        if written is not None:
            recon = written + recon
        recon = recon.expand_as(mlp_out)
        if self.use_error_term:
            recon = recon + (mlp_out - recon).detach()
        return recon.to(mlp_out.dtype)  # a float32 CLT on a bfloat16 model: the model's dtype goes on


def build_replacement_hooks(model, clt: CrossLayerTranscoder, sites: Sites, use_error_term: bool) -> HookList:
    """`replacement_hooks` for a model and CLT already checked (`sites` from `check_compatible`)."""
    layers = range(clt.n_layers)
    return ReplacementState(model, clt, sites, use_error_term).hooks(sites, clt, layers, layers)


def replacement_hooks(model, clt: CrossLayerTranscoder, *, use_error_term: bool = False) -> HookList:
    """TL forward hooks that replace every MLP output with the CLT's reconstruction.

    With `use_error_term=True` the output equals the original MLP output (reconstruction + the
    detached error), so gradients flow through the CLT features. Use with `model.hooks(fwd_hooks=...)`.
    """
    hooks = build_replacement_hooks(model, clt, check_compatible(model, clt), use_error_term)
    refuse_saes_at(model, [name for name, _ in hooks])
    return hooks


def feature_activations(
    model, clt: CrossLayerTranscoder, prompt: Prompt
) -> Float[Tensor, "n_layers pos n_features"]:
    """Active CLT features of `prompt` as a sparse COO tensor indexed (layer, pos, feature); it prints
    as a short summary (`tl_clt.display.FeatureActivations`, a torch.Tensor).

    Positions are those of `tl_clt.to_tokens(model, prompt)` (sink token at 0 included here).
    """
    sites = check_compatible(model, clt)
    tokens = to_tokens(model, prompt)
    with preserve(model):
        state = clean_pass(model, clt, tokens, sites)
    with torch.no_grad():
        acts = all_activations(clt, state.mlp_in)
    return as_feature_activations(acts.to_sparse().coalesce())


@dataclass
class ReconstructionReport:
    """Per-layer FVU and L0 of the CLT on a prompt, and how the replacement model's output compares."""

    fvu: list[float]  # per layer: |mlp_out - recon|^2 / |mlp_out - mean|^2 (positions after the sink); NaN
    # where undefined: one real token (or identical MLP outputs at every position) has no variance
    l0: list[float]  # per layer: mean number of active features per position (positions after the sink)
    top1_agreement: float  # share of positions where model and replacement agree on the top token
    kl: float  # mean KL(model || replacement) over positions, in nats
    note: str = ""  # why some numbers are undefined (NaN), if any are

    def __str__(self) -> str:
        lines = ["layer    FVU      L0"]
        lines += [f"{i:>5} {f:8.4f} {n:7.1f}" for i, (f, n) in enumerate(zip(self.fvu, self.l0))]
        lines.append(f"top-1 agreement {self.top1_agreement:.3f}   KL {self.kl:.4f} nats")
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)


def reconstruction_report(model, clt: CrossLayerTranscoder, prompt: Prompt) -> ReconstructionReport:
    """FVU, L0, top-1 agreement and KL of the replacement model (every MLP replaced) vs the model."""
    sites = check_compatible(model, clt)
    tokens = tokens_after_sink(
        model,
        prompt,
        needed_for="the report averages over the positions after it, so pass at least one real token.",
    )
    with preserve(model), torch.no_grad():
        state = clean_pass(model, clt, tokens, sites)
        acts = all_activations(clt, state.mlp_in)
        recon = clt.decode(acts)
        with added_hooks(model, build_replacement_hooks(model, clt, sites, use_error_term=False)):
            rep_logits = model(tokens[None])[0]
    mlp_out, logits = state.mlp_out, state.logits
    body = slice(SINK_POS + 1, None)
    resid = (mlp_out[:, body] - recon[:, body]).pow(2).sum((-1, -2))
    total = (mlp_out[:, body] - mlp_out[:, body].mean(1, keepdim=True)).pow(2).sum((-1, -2))
    logp, logq = logits.log_softmax(-1), rep_logits.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)[body].mean()
    agree = (logits.argmax(-1) == rep_logits.argmax(-1))[body].float().mean()
    # the variance of the MLP outputs over positions: zero for one real token, where FVU is undefined
    undefined = total <= 1e-12 * mlp_out[:, body].pow(2).sum((-1, -2)).clamp(min=1e-30)
    fvu = torch.where(undefined, torch.nan, resid / total.clamp(min=1e-30))
    note = ""
    if undefined.any():
        note = (
            f"FVU is undefined (NaN) at layers {undefined.nonzero().squeeze(-1).tolist()}: the MLP "
            f"outputs do not vary over the {mlp_out.shape[1] - 1} position(s) after the sink (FVU "
            "divides by that variance). Use a prompt of two or more real tokens."
        )
    return ReconstructionReport(
        fvu=fvu.tolist(),
        note=note,
        l0=(acts[:, body] != 0).sum(-1).float().mean(-1).tolist(),
        top1_agreement=float(agree),
        kl=float(kl),
    )
