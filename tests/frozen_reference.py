"""An independent, forward-only implementation of the local replacement model, for checking edges.

It shares no code with tl_clt.attribution: frozen values come from `run_with_cache`, the CLT's
reconstruction is summed feature by feature from the raw decoder tensors, and effects are measured by
running the model forward with a source changed.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file


class FrozenReference:
    def __init__(self, model, clt_dir, tokens, features, values, input_hook="mlp.hook_in"):
        """features: [n, 3] (layer, pos, feature) active features; values: their activations.

        input_hook: what the CLT reads ("mlp.hook_in", "ln2.hook_normalized" or "hook_resid_mid").
        """
        self.model, self.tokens, self.input_hook = model, tokens, input_hook
        n_layers = model.cfg.n_layers
        dt = model.cfg.dtype
        self.enc = [
            {n: t.to(dt) for n, t in load_file(str(clt_dir / f"W_enc_{k}.safetensors")).items()}
            for k in range(n_layers)
        ]
        self.dec = [
            load_file(str(clt_dir / f"W_dec_{k}.safetensors"))[f"W_dec_{k}"].to(dt) for k in range(n_layers)
        ]
        self.features, self.values = features, values.clone()
        _, cache = model.run_with_cache(tokens[None])
        self.frozen = {
            n: t
            for n, t in cache.items()
            if n.endswith(("ln1.hook_scale", "ln2.hook_scale", "hook_pattern")) or n == "ln_final.hook_scale"
        }
        self.clean_mlp_out = torch.stack([cache[f"blocks.{k}.hook_mlp_out"][0] for k in range(n_layers)])
        self.clean_logits = model(tokens[None])[0, -1]
        self.embed = cache["hook_embed"][0].clone()
        self.errors = self.clean_mlp_out - self.reconstruction(self.values)
        self.errors[:, 0] = 0

    def reconstruction(self, values):
        L, P, d = self.clean_mlp_out.shape
        out = torch.stack([self.enc[k][f"b_dec_{k}"].expand(P, d) for k in range(L)]).clone()
        for (k, p, f), a in zip(self.features.tolist(), values.tolist()):
            for target in range(k, L):
                out[target, p] += a * self.dec[k][f, target - k]
        return out

    def run(self, values=None, errors=None, embed=None):
        """Pre-activations of all `features` and the de-meaned last-position logits."""
        values = self.values if values is None else values
        errors = self.errors if errors is None else errors
        embed = self.embed if embed is None else embed
        mlp_out = self.reconstruction(values) + errors
        mlp_out[:, 0] = self.clean_mlp_out[:, 0]  # the sink position's MLP output is a constant
        mlp_in = {}

        def freeze(t, hook):
            return self.frozen[hook.name]

        def set_embed(t, hook):
            return embed[None]

        def read_in(t, hook):
            layer = int(hook.name.split(".")[1])
            w = self.model.blocks[layer].ln2.w if self.input_hook == "mlp.hook_in" else 1.0
            mlp_in[layer] = t[0] * w
            return t

        read_at = "hook_resid_mid" if self.input_hook == "hook_resid_mid" else "ln2.hook_normalized"

        def set_out(t, hook):
            return mlp_out[int(hook.name.split(".")[1])][None]

        hooks = [(n, freeze) for n in self.frozen] + [("hook_embed", set_embed)]
        for k in range(self.model.cfg.n_layers):
            hooks += [
                (f"blocks.{k}.{read_at}", read_in),
                (f"blocks.{k}.hook_mlp_out", set_out),
            ]
        with torch.no_grad():
            logits = self.model.run_with_hooks(self.tokens[None], fwd_hooks=hooks)[0, -1]
        pre = [
            mlp_in[k][p] @ self.enc[k][f"W_enc_{k}"][f] + self.enc[k][f"b_enc_{k}"][f]
            for k, p, f in self.features.tolist()
        ]
        pre = torch.stack(pre) if pre else logits.new_zeros(0)
        return pre, logits - logits.mean()

    def double_source(self, graph, kind, source):
        """Double one source of `graph` and measure every target row's change.

        kind: "feature" (source = feature node index), "error" (source = (layer, pos)) or "token"
        (source = pos). Returns (adjacency column of the source, measured changes in the order
        [feature rows..., logit rows...]); in the linear frozen model the changes equal the edges.
        """
        col, pre, logits = self.source_deltas(graph, kind, source)
        return col, torch.cat([pre[graph.selected_features], logits[graph.logit_tokens]])

    def source_deltas(self, graph, kind, source):
        """Double one source of `graph` (as in `double_source`); returns (adjacency column of the source,
        change of every selected feature's pre-activation, change of every de-meaned logit [d_vocab])."""
        pre0, logits0 = self.run()
        if kind == "feature":
            values = self.values.clone()
            values[graph.selected_features[source]] *= 2
            pre, logits = self.run(values=values)
            col = source
        elif kind == "error":
            errors = self.errors.clone()
            errors[source] *= 2
            pre, logits = self.run(errors=errors)
            col = graph.error_index(*source)
        else:
            embed = self.embed.clone()
            embed[source] *= 2
            pre, logits = self.run(embed=embed)
            col = graph.token_index(source)
        return col, pre - pre0, logits - logits0


def target_rows(graph):
    """Adjacency rows of every target: feature rows, then logit rows."""
    return list(range(graph.n_features)) + [graph.logit_index(i) for i in range(graph.n_logits)]
