"""attribute(): attribution graphs by batched backward passes through the local replacement model.

The local replacement model is the user's model with, for one prompt,
- attention patterns and every RMSNorm scale (ln1, ln2, ln_final) frozen to the prompt's values,
- every MLP output replaced by the CLT reconstruction plus an error node (a constant vector),
which makes the residual stream linear in its sources: token embeddings, feature activations (each
writing `a * W_dec` to its own and later layers' MLP outputs) and error vectors. An edge s -> t is the
direct effect of s on t in that model. We get a whole row (all sources of one target) from one
backward pass: inject the target's read-out vector at its site, read the gradient at every embedding
and MLP-output leaf, and contract it with the source vectors. `batch_size` rows share one pass.

Two engines compute the rows. `transposed` (the default): the frozen model's backward written out as
batched linear maps (`tl_clt.transpose`) from the weights and the clean pass's frozen values, with the
active features' decoder rows read once per graph. `autograd` (`LinearReplacement`): vmapped backward
passes through the hooked model itself, used when the model carries forward hooks of the user's (they run
inside the passes, which the transposed engine never makes). Both give the same rows (to float rounding).
Everything goes through TransformerLens hook points on the user's model; nothing is left behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_clt.checks import as_int, as_number, float_dtype
from tl_clt.clt import CrossLayerTranscoder
from tl_clt.fingerprints import clt_fingerprint, model_fingerprint
from tl_clt.frozen import PromptState, all_activations, clean_pass, freeze_hooks
from tl_clt.graph import AttributionGraph
from tl_clt.hooks import added_hooks, check_compatible, preserve
from tl_clt.influence import PartialInfluence
from tl_clt.progress import tqdm
from tl_clt.prompts import SINK_POS, Prompt, prompt_offset, tokens_after_sink
from tl_clt.targets import resolve_targets
from tl_clt.transpose import (
    DecoderByTarget,
    DecoderRows,
    EdgeRows,
    TransposedModel,
    buffer_bytes,
    default_compute_dtype,
    default_decoder_cache_bytes,
    layouts,
    n_source_columns,
    reconstruction,
)
from tl_clt.workspace import Workspace

DEFAULT_MAX_N_LOGITS = 10
DEFAULT_DESIRED_LOGIT_PROB = 0.95
DEFAULT_BATCH_SIZE = 64
DEFAULT_UPDATE_INTERVAL = 4
ENGINES = ("auto", "transposed", "autograd")


@dataclass
class ActiveFeatures:
    """Active features (position 0 excluded), ordered by (layer, pos, feature)."""

    index: Int[Tensor, "n 3"]  # (layer, pos, feature)
    values: Float[Tensor, " n"]
    reconstruction: Float[Tensor, "n_layers pos d_model"]


def find_active_features(clt: CrossLayerTranscoder, state: PromptState) -> ActiveFeatures:
    acts = all_activations(clt, state.mlp_in)
    acts[:, SINK_POS] = 0  # the attention sink is not explained by features
    index = acts.nonzero()
    values = acts[index[:, 0], index[:, 1], index[:, 2]]
    return ActiveFeatures(index, values, clt.decode(acts))


class LinearReplacement:
    """The frozen, linear model of one prompt, ready for batched backward passes."""

    def __init__(
        self,
        model,
        clt: CrossLayerTranscoder,
        state: PromptState,
        active: ActiveFeatures,
        batch_size: int,
    ):
        self.model, self.clt, self.state, self.active = model, clt, state, active
        self.model_sites = state.sites  # where things are on the model (tl_clt.sites)
        self.n_layers, self.n_pos = clt.n_layers, len(state.tokens)
        self.batch_size = batch_size
        self.n_backward = 0
        self.errors = state.mlp_out - active.reconstruction
        self.errors[:, SINK_POS] = 0
        self.embed: Tensor | None = None
        self.mlp_out: list[Tensor | None] = [None] * self.n_layers
        self.sites: list[Tensor | None] = [None] * (self.n_layers + 1)
        self._layers = self._decoder_layout()
        self._cached_rows: dict[int, Tensor] = {}

    # ---------------------------------------------------------------- forward
    def _hooks(self) -> list:
        def embed_hook(tensor: Tensor, *, hook) -> Tensor:
            self.embed = tensor.detach().requires_grad_(True)
            return self.embed

        def leaf_hook(layer: int):
            def fn(tensor: Tensor, *, hook) -> Tensor:
                self.mlp_out[layer] = tensor.detach().requires_grad_(True)
                return self.mlp_out[layer]

            return fn

        def site_hook(layer: int):
            def fn(tensor: Tensor, *, hook) -> Tensor:
                self.sites[layer] = tensor
                return tensor

            return fn

        sites, input_hook = self.model_sites, self.clt.feature_input_hook
        hooks = [(sites.embed, embed_hook)] + freeze_hooks(self.state.frozen)
        for layer in range(self.n_layers):
            hooks.append((sites.mlp_out_hook(layer), leaf_hook(layer)))
            hooks.append((sites.clt_input_hook(input_hook, layer), site_hook(layer)))
        return hooks

    def run_forward(self) -> None:
        """Build the autograd graph of the frozen model (batch 1; rows are vmapped over it)."""
        with torch.enable_grad(), added_hooks(self.model, self._hooks()):
            resid = self.model_sites.forward_to(self.model, self.state.tokens[None], self.n_layers)
        self.sites[self.n_layers] = resid

    # ---------------------------------------------------------------- read-out vectors
    def feature_readout(self, layer: Tensor, pos: Tensor, feature: Tensor) -> Float[Tensor, "n d_model"]:
        """Vectors that, injected at the features' sites (the CLT's input hook), give their pre-activations'
        gradients (the same at every position `pos`)."""
        W = self.clt.W_enc[layer, feature].to(self.embed.dtype)
        sites = self.model_sites
        if sites.clt_input(self.clt.feature_input_hook).times_ln2_weight:
            ln2 = [sites.weight(self.model, sites.ln2_weight, int(k)) for k in layer]
            W = W * torch.stack(ln2).to(W.dtype)
        return W.detach()

    def logit_readout(self, directions: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        """Logit directions pulled back through the frozen final norm at the last position."""
        norm_weight = self.model_sites.weight(self.model, self.model_sites.final_norm_weight)
        w = norm_weight / self.state.final_scale[-1]
        return (directions * w).to(self.embed.dtype).detach()

    # ---------------------------------------------------------------- backward
    def _decoder_layout(self) -> list[tuple[int, int, Tensor, list[tuple[int, int]]]]:
        """Per source layer k with active features: (k, first column, features, [(position, count)]).

        A layer's features are the columns first..first + n_k (active features are ordered by layer,
        position, feature), in runs of one position each.
        """
        index = self.active.index
        layout = []
        for k in range(self.n_layers):
            cols = (index[:, 0] == k).nonzero().squeeze(-1)
            if cols.numel():
                positions, counts = index[cols, 1].unique_consecutive(return_counts=True)
                spans = list(zip(positions.tolist(), counts.tolist()))
                layout.append((k, int(cols[0]), index[cols, 2], spans))
        return layout

    def _layer_rows(self, k: int, features: Tensor) -> Float[Tensor, "n n_out d_model"]:
        """Raw decoder rows `W_dec_k[features]` [n, n_layers - k, d_model] in the CLT's dtype.

        With a lazy CLT they are read again for every backward pass: they come from the OS page cache,
        and this process never holds more than one layer's rows (at the real shape the rows of all active
        features are ~0.75 GB in bf16 for 16 tokens, ~3 GB for 64). In-memory decoders are gathered once.
        """
        if self.clt.lazy_decoder:
            return self.clt.decoder_rows(k, features)
        if k not in self._cached_rows:
            self._cached_rows[k] = self.clt.decoder_rows(k, features)
        return self._cached_rows[k]

    @property
    def n_sources(self) -> int:
        return n_source_columns(len(self.active.values), self.n_layers, self.n_pos)

    def fill_rows(
        self,
        site_layers: Tensor,
        positions: Tensor,
        readouts: Tensor,
        out: Tensor,
        features: Tensor | None = None,
    ) -> None:
        """`rows` for any number of targets, `batch_size` per backward pass, written into `out` (all their
        columns: `features`, the hint that only those features' columns are read, is not used here)."""
        B = self.batch_size
        for i in range(0, len(site_layers), B):
            out[i : i + B] = self.rows(site_layers[i : i + B], positions[i : i + B], readouts[i : i + B])

    def all_features_order(self) -> Tensor:
        """Visiting order for every active feature: top layers first (each pass is as short as possible)."""
        return torch.argsort(self.active.index[:, 0], descending=True, stable=True)

    def meta(self) -> dict:
        return dict(
            engine="autograd",
            n_backward_passes=self.n_backward,
            compute_dtype=str(self.embed.dtype).removeprefix("torch."),
        )

    def rows(self, site_layers: Tensor, positions: Tensor, readouts: Tensor) -> Float[Tensor, "b n_sources"]:
        """Edge rows for targets read at (site layer, position) by `readouts` (n_layers = the logits).

        One vmapped backward pass (`is_grads_batched`) gives every row's gradient at all leaves. Rows are
        handled in order of target position: attention is causal, so a target's gradient is exactly zero
        at later positions, and the features at position p are contracted with the rows from p on only.
        """
        b = len(site_layers)
        self.n_backward += 1
        order = torch.argsort(positions, stable=True)
        site_layers, positions, readouts = site_layers[order], positions[order], readouts[order]
        outputs, grad_outputs = [], []
        for layer in site_layers.unique().tolist():
            mask = site_layers == layer
            g = torch.zeros(b, *self.sites[layer].shape, dtype=self.embed.dtype, device=self.embed.device)
            g[mask.nonzero().squeeze(-1), 0, positions[mask]] = readouts[mask].to(g.dtype)
            outputs.append(self.sites[layer])
            grad_outputs.append(g)
        top = int(site_layers.max())
        inputs = [self.embed] + self.mlp_out[:top]
        grads = torch.autograd.grad(
            outputs, inputs, grad_outputs, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        zeros = torch.zeros_like(grad_outputs[0])
        del outputs, grad_outputs
        G_emb = (grads[0] if grads[0] is not None else zeros)[:, 0].float()  # [b, pos, d]; edges in fp32
        n_feat = len(self.active.values)
        out = torch.zeros(b, self.n_sources, dtype=torch.float32, device=G_emb.device)  # edges in fp32
        if top:
            G = torch.stack([(g if g is not None else zeros)[:, 0] for g in grads[1:]], 2).float()
            del grads
            self._contract_features(G, positions, out)
            err = torch.stack([(G[:, p] * self.errors[:top, p]).sum(-1) for p in range(self.n_pos)], 1)
            start = n_feat
            out[:, start : start + top * self.n_pos] = err.transpose(1, 2).reshape(b, -1)
        start = n_feat + self.n_layers * self.n_pos
        out[:, start:] = (G_emb * self.embed[0].detach()).sum(-1)
        return out[torch.argsort(order)]

    def _contract_features(self, G: Float[Tensor, "b pos top d"], positions: Tensor, out: Tensor) -> None:
        """Feature columns of `out`: activation times G[row, p, k:top] . W_dec_{k->k..top-1}[f].

        `positions` (the rows' target positions) are sorted: rows before `first[p]` target positions
        before p, where their gradient is exactly zero, and are skipped. Blocks are strided views.
        """
        b, top = G.shape[0], G.shape[2]
        first = torch.searchsorted(positions, torch.arange(self.n_pos, device=positions.device)).tolist()
        acts = self.active.values
        for k, col, features, spans in self._layers:
            if k >= top:
                break
            dec = self._layer_rows(k, features)[:, : top - k].to(G.dtype)  # [n_k, top - k, d]
            i = 0
            for p, n in spans:
                r = first[p]
                if r < b:
                    D = dec[i : i + n].reshape(n, -1)
                    c = col + i
                    out[r:, c : c + n] = (G[r:, p, k:].reshape(b - r, -1) @ D.T) * acts[c : c + n]
                i += n


def logit_targets(
    logits: Float[Tensor, " d_vocab"], max_n_logits: int, desired_logit_prob: float
) -> tuple[Tensor, Tensor]:
    """Top tokens until their cumulative probability reaches `desired_logit_prob` (at most max_n)."""
    probs = torch.softmax(logits.float(), -1)
    top_p, top_i = probs.sort(descending=True)
    n = int((top_p.cumsum(0) < desired_logit_prob).sum()) + 1
    n = max(1, min(n, max_n_logits))
    return top_i[:n], top_p[:n]


def _check_args(max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval) -> tuple:
    """The arguments as plain Python numbers (0-d tensors and numpy scalars accepted), or a clear error."""
    ints = {}
    for name, value in [
        ("max_n_logits", max_n_logits),
        ("max_feature_nodes", max_feature_nodes),
        ("batch_size", batch_size),
        ("update_interval", update_interval),
    ]:
        ints[name] = None if value is None else as_int(value, name)
    try:
        desired_logit_prob = as_number(desired_logit_prob, "desired_logit_prob", finite=False)
    except TypeError:
        raise ValueError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob!r}.") from None
    if not 0 < desired_logit_prob <= 1:
        raise ValueError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob}.")
    max_n_logits, max_feature_nodes = ints["max_n_logits"], ints["max_feature_nodes"]
    batch_size, update_interval = ints["batch_size"], ints["update_interval"]
    if max_n_logits is None or max_n_logits < 1:
        raise ValueError(f"max_n_logits must be at least 1, got {max_n_logits}.")
    if max_feature_nodes is not None and max_feature_nodes < 1:
        raise ValueError(
            f"max_feature_nodes must be None (all features) or at least 1, got {max_feature_nodes}."
        )
    if batch_size is None or batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if update_interval is None or update_interval < 1:
        raise ValueError(f"update_interval must be >= 1 (batches per re-ranking), got {update_interval}.")
    return max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval


def attribute(
    model,
    clt: CrossLayerTranscoder,
    prompt: Prompt,
    *,
    max_n_logits: int = DEFAULT_MAX_N_LOGITS,
    desired_logit_prob: float = DEFAULT_DESIRED_LOGIT_PROB,
    max_feature_nodes: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    update_interval: int = DEFAULT_UPDATE_INTERVAL,
    verbose: bool = True,
    targets=None,
    compute_dtype: torch.dtype | str | None = None,
    decoder_cache_bytes: int | None = None,
    engine: str = "auto",
    workspace: Workspace | None = None,
) -> AttributionGraph:
    """Attribution graph of `prompt` over the CLT's features (see module docstring).

    Logit targets: the top tokens at the last position until cumulative probability
    `desired_logit_prob` (at most `max_n_logits`), each read along its de-meaned unembedding column.
    With `max_feature_nodes`, features are visited in order of estimated influence on the logits,
    refreshed every `update_interval` batches; otherwise every active feature gets a row.

    `targets`: what the graph explains instead of the top logits: a list of tokens (one-token strings or
    ids), `tl_clt.logit_diff(a, b)`, `tl_clt.Direction(label, vector)` and feature node ids (any
    spelling); they weigh equally in influence (see `tl_clt.targets`). None: the top logits.

    `engine`: "auto" (the transposed engine, or autograd when the model has forward hooks of yours),
    "transposed" or "autograd" (see the module docstring); `graph.meta["engine"]` says which ran.
    Transposed engine only: `compute_dtype`, the dtype of the rows' arithmetic (default: float32 on
    every device, float64 for a float64 model; the model is not changed; autograd
    computes in the model's dtype), and `decoder_cache_bytes`, memory for the active features' decoder
    rows, read once per graph (default min(8 GiB, half the memory available beyond the graph's other
    buffers, `transpose.buffer_bytes`)): when all of them fit it in the compute dtype they are laid out
    once per target layer (fastest); else, when they fit in their storage dtype (bf16 on disk), laid out
    so and cast a block at a time (nearly as fast); else those that fit stay in the CLT's dtype and layers
    beyond it are read again from the CLT files when used.

    `workspace`: a `tl_clt.Workspace` whose buffers the graph uses and leaves for the next graph (no fresh
    memory, so no page faults, when graphs follow each other); None: fresh buffers, freed on return.
    """
    max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval = _check_args(
        max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval
    )
    compute_dtype = float_dtype(compute_dtype, name="compute_dtype", allow_none=True)
    if decoder_cache_bytes is not None:
        decoder_cache_bytes = as_int(decoder_cache_bytes, "decoder_cache_bytes")
        if decoder_cache_bytes < 0:
            raise ValueError(f"decoder_cache_bytes must be >= 0 (or None), got {decoder_cache_bytes}.")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if workspace is None:
        workspace = Workspace()
    elif not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must be a tl_clt.Workspace (or None), got {type(workspace).__name__}.")
    sites = check_compatible(model, clt)
    # attribution needs autograd: it runs outside torch.inference_mode() (and copies the prompt's tokens,
    # which may be inference tensors) so that it works, and gives the same graph, inside one too
    with torch.inference_mode(False):
        tokens = tokens_after_sink(
            model,
            prompt,
            needed_for="attribution needs at least one real token after it (features and errors at "
            "position 0 are left out of graphs).",
        ).clone()
        clock = [time.perf_counter()]
        with workspace.in_use(), preserve(model) as guard:
            chosen = _choose_engine(engine, guard.user_hooks)
            state = clean_pass(model, clt, tokens, sites)
            if chosen == "transposed":
                lin = FrozenRows(
                    model, clt, state, batch_size, compute_dtype, decoder_cache_bytes,
                    n_targets=max_n_logits, max_feature_nodes=max_feature_nodes, workspace=workspace,
                )  # fmt: skip
            else:
                lin = LinearReplacement(model, clt, state, find_active_features(clt, state), batch_size)
                lin.run_forward()
            clock.append(time.perf_counter())
            graph = _build_graph(
                model,
                clt,
                lin,
                max_n_logits,
                desired_logit_prob,
                max_feature_nodes,
                update_interval,
                verbose,
                targets=targets,
                workspace=workspace,
            )
            fingerprints = dict(
                model_fingerprint=model_fingerprint(model), clt_fingerprint=clt_fingerprint(clt)
            )
    clock.append(time.perf_counter())
    graph.meta.update(
        n_active_features=len(lin.active.values),
        seconds_setup=clock[1] - clock[0],
        seconds_rows=clock[2] - clock[1],
        **lin.meta(),
        user_hooks=guard.user_hooks,
        user_backward_hooks=guard.user_backward_hooks,
        saes_routed_around=guard.saes,
        **fingerprints,
        prompt_offset=prompt_offset(model, prompt),  # 1: the sink was put in front
        prompt_type="text" if isinstance(prompt, str) else "token ids",
    )
    return graph


def _choose_engine(engine: str, user_hooks: list[str]) -> str:
    """The engine that runs: the transposed one unless the model has forward hooks of the user's, which
    only the autograd engine's passes through the model run."""
    if not user_hooks:
        return "autograd" if engine == "autograd" else "transposed"
    if engine == "transposed":
        raise ValueError(
            f"engine='transposed' cannot include your hooks at {user_hooks}: it computes the frozen model's "
            "backward from its weights and never runs the model's forward. Use engine='auto' or "
            "'autograd' (backward passes through the hooked model), or remove the hooks "
            "(model.reset_hooks())."
        )
    return "autograd"


class FrozenRows:
    """One prompt's frozen local replacement model as edge rows (`tl_clt.transpose`, no autograd).

    Reads the active features' decoder rows once (for the reconstruction and every row after it), builds
    the transposed model from W_V, W_O, ln1's weight and the clean pass's patterns and scales (all found
    through the model's `Sites`), and turns feature / logit targets into read-out vectors on the residual
    stream. Same interface as `LinearReplacement` for `_build_graph`.
    """

    def __init__(
        self,
        model,
        clt,
        state: PromptState,
        batch_size,
        compute_dtype,
        decoder_cache_bytes,
        n_targets: int = 0,
        max_feature_nodes: int | None = None,
        workspace: Workspace | None = None,
    ):
        device = state.mlp_in.device
        ws = Workspace() if workspace is None else workspace
        self.model, self.clt, self.state = model, clt, state
        self.dtype = compute_dtype or default_compute_dtype(state.mlp_in.dtype)
        self.n_layers, self.n_pos = clt.n_layers, len(state.tokens)
        self.batch_size = batch_size
        L, frozen, sites = self.n_layers, state.frozen, state.sites
        self.model_sites = sites
        acts = all_activations(clt, state.mlp_in)
        acts[:, SINK_POS] = 0  # the attention sink is not explained by features
        index = acts.nonzero()
        values = acts[index[:, 0], index[:, 1], index[:, 2]]
        budget = decoder_cache_bytes
        if budget is None:  # leave room for the graph's other buffers: rows of the targets and features
            n_features = len(values) if max_feature_nodes is None else min(len(values), max_feature_nodes)
            reserve = buffer_bytes(
                n_pos=self.n_pos, n_layers=L, d_model=clt.d_model,
                n_sources=n_source_columns(len(values), L, self.n_pos),
                n_rows=n_targets + n_features, batch_size=batch_size, dtype=self.dtype,
            )  # fmt: skip
            budget = default_decoder_cache_bytes(device, reserve, reusable_bytes=ws.bytes_on(device))
        lays = layouts(index, L)
        self.decoder = DecoderRows(clt, lays, 0, device)  # nothing cached unless the matrices do not fit
        # the matrices per target layer in the compute dtype, or else in the rows' (narrower) storage dtype
        by_target_dtype = next(
            (
                dt
                for dt in (self.dtype, self.decoder.storage_dtype)
                if DecoderByTarget.bytes_needed(lays, L, clt.d_model, dt) <= budget
            ),
            None,
        )
        if self.dtype in (torch.float32, torch.float64) and by_target_dtype is not None:  # rows once
            self.by_target = DecoderByTarget(
                lays, L, self.n_pos, clt.d_model, by_target_dtype, device, ws, compute_dtype=self.dtype
            )
            self.decoder.fill(self.by_target.add)
            recon = self.by_target.reconstruction(values, clt.b_dec).to(acts.dtype)
        else:  # the storage dtype's rows that fit the budget, the rest read per sweep
            self.decoder.budget_bytes = int(budget)
            self.by_target = None
            recon = reconstruction(clt, list(acts), self.decoder, self.n_pos, acts.dtype)
        del acts
        self.active = ActiveFeatures(index, values, recon)
        errors = state.mlp_out - recon
        errors[:, SINK_POS] = 0
        weights = [sites.kv_weights(model, j) for j in range(L)]
        transposed = TransposedModel.from_weights(
            [w[0] for w in weights],
            [w[1] for w in weights],
            [sites.weight(model, sites.ln1_weight, j) for j in range(L)],
            [frozen[sites.ln1_scale.format(layer=j)][0] for j in range(L)],
            [frozen[sites.pattern.format(layer=j)][0] for j in range(L)],
            self.dtype,
            ws,
        )
        self.edges = EdgeRows(
            transposed, self.decoder, values, errors, state.embed, batch_size, by_target=self.by_target,
            workspace=ws,
        )  # fmt: skip
        self.input = sites.clt_input(clt.feature_input_hook)
        if self.input.normalized:  # the CLT reads ln2's normalized value: resid_mid / scale2
            scale2 = torch.stack([frozen[sites.ln2_scale.format(layer=j)][0, :, 0] for j in range(L)])
            self.site_factor = 1 / scale2.to(self.dtype)
        else:  # the residual stream itself
            self.site_factor = None
        if self.input.times_ln2_weight:  # every layer's ln2 weight [n_layers, d_model]: the CLT reads x * it
            ln2 = [sites.weight(model, sites.ln2_weight, j) for j in range(L)]
            self.ln2_weights = torch.stack(ln2).to(self.dtype)
        else:
            self.ln2_weights = None

    @property
    def n_sources(self) -> int:
        return self.edges.n_sources

    @property
    def decoder_bytes_cached(self) -> int:
        """Memory the active features' decoder rows take for the graph (`DecoderByTarget` or the cache)."""
        return self.by_target.nbytes if self.by_target is not None else self.decoder.cached_bytes

    def feature_readout(self, layer: Tensor, pos: Tensor, feature: Tensor) -> Float[Tensor, "n d_model"]:
        """Resid-mid vectors whose dot product with the residual stream is the features' pre-activations
        (frozen ln2)."""
        W = self.clt.W_enc[layer, feature].to(self.dtype)
        if self.ln2_weights is not None:
            W = W * self.ln2_weights[layer.to(self.ln2_weights.device)]
        if self.site_factor is not None:
            W = W * self.site_factor[layer, pos, None]
        return W.detach()

    def logit_readout(self, directions: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        """Logit directions pulled back through the frozen final norm at the last position."""
        norm_weight = self.model_sites.weight(self.model, self.model_sites.final_norm_weight)
        w = norm_weight / self.state.final_scale[-1]
        return (directions * w).to(self.dtype).detach()

    def fill_rows(
        self,
        site_layers: Tensor,
        positions: Tensor,
        readouts: Tensor,
        out: Tensor,
        features: Tensor | None = None,
    ) -> None:
        """Edge rows of targets read at (site layer, position) by `readouts` (n_layers: the final residual),
        written into `out`; with `features` (active-feature indices) only those features' columns (the
        others stay zero)."""
        self.edges.rows(site_layers, positions, readouts, out=out, features=features)

    def all_features_order(self) -> Tensor:
        """Visiting order for every active feature (the engine sorts each sweep itself)."""
        return torch.arange(len(self.active.values))

    def meta(self) -> dict:
        stats = self.edges.stats
        return dict(
            engine="transposed",
            n_backward_passes=stats.n_backward,
            compute_dtype=str(self.dtype).removeprefix("torch."),
            row_flops=stats.flops_ideal,
            row_flops_decoder=stats.flops_decoder,
            seconds_gradients=stats.seconds["gradients"],
            seconds_contract=stats.seconds["contract"],
            decoder_bytes_cached=self.decoder_bytes_cached,
            decoder_bytes_read=self.decoder.bytes_read,
        )


def _build_graph(
    model,
    clt,
    lin: FrozenRows | LinearReplacement,
    max_n_logits,
    desired_logit_prob,
    max_feature_nodes,
    update_interval,
    verbose,
    *,
    targets=None,
    workspace: Workspace,
) -> AttributionGraph:
    state, active = lin.state, lin.active
    n_active, B, L = len(active.values), lin.batch_size, clt.n_layers
    W_U = lin.model_sites.weight(model, lin.model_sites.W_U).detach()
    if targets is None:
        logit_ids, logit_probs = logit_targets(state.logits[-1], max_n_logits, desired_logit_prob)
        directions = (W_U[:, logit_ids] - W_U.mean(1, keepdim=True)).T
        readouts = lin.logit_readout(directions)
        site_layers = torch.full((len(logit_ids),), L)
        positions = torch.full((len(logit_ids),), lin.n_pos - 1)
        labels = [model.tokenizer.decode([t]) for t in logit_ids.tolist()]
    else:
        site_layers, positions, readouts, logit_ids, labels = _target_rows(model, lin, targets, W_U)
        logit_probs = torch.full((len(logit_ids),), 1.0 / len(logit_ids))
    n_logits = len(logit_ids)
    n_wanted = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    device = state.mlp_in.device
    # target rows first, then feature rows in visiting order; one buffer, filled in place (uninitialised:
    # fill_rows zeroes each block it writes, and only blocks written are read)
    rows = workspace("rows", (n_logits + n_wanted, lin.n_sources), torch.float32, device)
    abs_sums = torch.zeros(n_logits + n_wanted, device=device)
    dev = readouts.device
    lin.fill_rows(site_layers.to(dev), positions.to(dev), readouts, out=rows[:n_logits])
    abs_sums[:n_logits] = rows[:n_logits].abs().sum(1)
    order = torch.empty(0, dtype=torch.long)
    visited = torch.zeros(n_active, dtype=torch.bool)
    probs = logit_probs.to(device)
    # keeps its work between refreshes (rows only grow): B [rows, rows] allocated once
    tracker = PartialInfluence(lin.n_sources, capacity=n_logits + n_wanted, workspace=workspace)
    seconds_influence = 0.0
    bar = tqdm(total=n_wanted, desc="feature rows", disable=not verbose, leave=False)
    while len(order) < n_wanted:
        if n_wanted == n_active:
            queue = lin.all_features_order()
        else:
            done = n_logits + len(order)
            row_nodes = torch.cat([torch.arange(n_logits) + lin.n_sources, order]).to(device)
            # target rows above every feature: a feature only reads features of lower layers
            row_layers = torch.cat([torch.full((n_logits,), L + 1), active.index[order, 0].cpu()])
            t0 = time.perf_counter()
            infl = tracker(rows[:done], probs, row_nodes, abs_sums[:done], row_layers).cpu()
            seconds_influence += time.perf_counter() - t0
            ranked = torch.argsort(infl[:n_active], descending=True)
            queue = ranked[~visited[ranked]][: update_interval * B]
        queue = queue[: n_wanted - len(order)]
        start = n_logits + len(order)
        block = rows[start : start + len(queue)]
        idx = active.index[queue]
        readout = lin.feature_readout(idx[:, 0], idx[:, 1], idx[:, 2])
        order = torch.cat([order, queue])
        if len(order) == n_wanted and n_wanted < n_active:
            # the last rows: no refresh reads them, the adjacency only their selected features' columns
            lin.fill_rows(idx[:, 0], idx[:, 1], readout, out=block, features=torch.sort(order).values)
        else:
            lin.fill_rows(idx[:, 0], idx[:, 1], readout, out=block)
            abs_sums[start : start + len(queue)] = block.abs().sum(1)
        visited[queue] = True
        bar.update(len(queue))
    bar.close()

    selected, perm = torch.sort(order)
    keep_cols = torch.cat([selected, torch.arange(n_active, lin.n_sources)]).to(device)
    n_sel = len(selected)
    n_nodes = n_sel + (L + 1) * lin.n_pos + n_logits
    adjacency = _adjacency(rows, n_logits, perm, keep_cols, n_nodes)
    del rows
    graph = AttributionGraph(
        tokens=state.tokens.cpu(),
        token_strs=[model.tokenizer.decode([t]) for t in state.tokens.tolist()],
        active_features=active.index.cpu(),
        activation_values=active.values.detach().cpu().float(),
        selected_features=selected,
        logit_tokens=logit_ids.cpu(),
        logit_probabilities=logit_probs.cpu(),
        logit_token_strs=labels,
        adjacency=adjacency,
        n_layers=L,
        model_name=model.cfg.model_name,
        clt_name=str(clt.path) if clt.path else None,
    )
    if targets is not None:
        graph.meta["targets"] = list(labels)
    # whether the refreshes solved influence layer by layer (None: every feature visited, no refresh)
    graph.meta["influence_by_layers"] = tracker.layered if tracker.calls else None
    graph.meta["seconds_influence"] = seconds_influence
    return graph


def _adjacency(
    rows: Float[Tensor, "rows n_sources"],
    n_logits: int,
    perm: Int[Tensor, " n_sel"],
    keep_cols: Int[Tensor, " k"],
    n_nodes: int,
    chunk: int = 1024,
) -> Float[Tensor, "n_nodes n_nodes"]:
    """The graph's adjacency (CPU) from the rows buffer: target rows first, then feature rows in visiting
    order; feature row n_logits + perm[j] goes to node j (the selected features sorted), the target rows
    last; columns `keep_cols` (selected features, errors, tokens) first. `chunk` rows at a time: a view of
    consecutive rows, their kept columns gathered once (no copy of whole feature rows)."""
    n_sel, k = len(perm), keep_cols.numel()
    adjacency = torch.zeros(n_nodes, n_nodes)
    dest = torch.empty_like(perm)
    dest[perm] = torch.arange(n_sel)  # feature row n_logits + i (visiting order) is node dest[i]
    for c in range(0, n_sel, chunk):
        e = min(c + chunk, n_sel)
        block = rows[n_logits + c : n_logits + e].index_select(1, keep_cols)
        adjacency[dest[c:e], :k] = block.cpu()
    adjacency[n_nodes - n_logits :, :k] = rows[:n_logits].index_select(1, keep_cols).cpu()
    return adjacency


def _target_rows(model, lin: FrozenRows | LinearReplacement, targets, W_U: Tensor):
    """(site layers, positions, read-out vectors, node token ids, labels) of user-given targets."""
    resolved = resolve_targets(model, targets, W_U=W_U, active_index=lin.active.index, n_layers=lin.n_layers)
    site_layers, positions, readouts = [], [], []
    for t in resolved:
        if t.kind == "feature":
            layer, pos, feature = (torch.tensor([v]) for v in t.key)
            readouts.append(lin.feature_readout(layer, pos, feature)[0])
            site_layers.append(int(layer))
            positions.append(int(pos))
        else:
            readouts.append(lin.logit_readout(t.direction[None])[0])
            site_layers.append(lin.n_layers)
            positions.append(lin.n_pos - 1)
    return (
        torch.tensor(site_layers),
        torch.tensor(positions),
        torch.stack(readouts),
        torch.tensor([t.token_id for t in resolved]),
        [t.label for t in resolved],
    )
