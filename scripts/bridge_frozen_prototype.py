"""Prototype: attribution's frozen model on a TransformerBridge, checked against the HookedTransformer.

Standalone (does not change tl_clt). On a tiny random Qwen3 folder and a random CLT it
1. builds `tl_clt.attribute(ht, ...)` on the HookedTransformer from `tl_clt.load_qwen3` (TL 3.x only);
2. boots `TransformerBridge.boot_transformers(folder)` (raw HF weights, norms unfolded) and builds the
   frozen model there with the bridge's own hook names (see docs/bridge-notes.md):
   leaves at `hook_embed` and `blocks.{l}.hook_mlp_out`, frozen `blocks.{l}.ln1/ln2.hook_scale`,
   `blocks.{l}.attn.hook_pattern`, `ln_final.hook_scale`; CLT input read at `blocks.{l}.ln2.hook_normalized`
   times `ln2.w`; the final residual read at `blocks.{L-1}.hook_resid_post` (on the bridge
   `stop_at_layer=n_layers` returns logits, not the residual);
3. computes edges on the bridge two independent ways:
   a. gradient: inject the target's read-out vector at its site, contract the gradient at the MLP-output
      leaves with the source's decoder rows (what attribution does);
   b. intervention: in the frozen model, remove the source feature's decoder writes from the MLP outputs
      and measure how much the target's pre-activation (or de-meaned logit) moves;
   and compares them with the HookedTransformer graph's entries;
4. runs tl_clt's own row machinery (attribution.py's clean pass, LinearReplacement, _build_graph) on the
   bridge with the one change the bridge needs (the final-residual site), checks its entries against the
   intervention edges and, with TL 3.x, the whole adjacency against the HookedTransformer graph.

Run: `PYTHONPATH=$PWD python scripts/bridge_frozen_prototype.py [--toyworld]` (a few seconds after imports).
With transformer-lens 4.x (`.venv-tl4/bin/python scripts/bridge_frozen_prototype.py`, no HookedTransformer)
it runs everything but the HookedTransformer reference: the bridge path needs nothing from HookedTransformer.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")  # HookedTransformer deprecation; bridge "native path" edit warnings
torch.set_num_threads(1)

t0 = time.perf_counter()
import transformer_lens  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

IMPORT_S = time.perf_counter() - t0
try:
    from transformer_lens import HookedTransformer  # noqa: F401, E402

    HAVE_HT = True
except ImportError:  # transformer-lens 4.x
    HAVE_HT = False
    # tl_clt on main imports HookedTransformer at module level (loading.py, hooks.py, ...); stand-ins let
    # its CLT, synthetic and attribution modules import here. The follow-up makes those imports lazy.
    for _name in ("HookedTransformer", "HookedTransformerConfig"):
        setattr(transformer_lens, _name, type(_name, (), {}))
from importlib.metadata import version  # noqa: E402

TL_VERSION = version("transformer-lens")

from tl_clt import CrossLayerTranscoder, synthetic  # noqa: E402

PROMPT = "Fact: The president of the United States in 2010 was"

# --------------------------------------------------------------------------- the bridge's sites (Qwen3)
EMBED = "hook_embed"  # alias of embed.hook_out


def clt_in(layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_normalized"  # before ln2.w, as on HookedTransformer


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"  # alias of blocks.{layer}.mlp.hook_out


def final_resid(n_layers: int) -> str:
    return f"blocks.{n_layers - 1}.hook_resid_post"  # alias of blocks.{L-1}.hook_out


FROZEN_SUFFIXES = ("ln1.hook_scale", "ln2.hook_scale", "attn.hook_pattern")
FINAL_SCALE = "ln_final.hook_scale"


def sink_tokens(tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return torch.tensor([tokenizer.convert_tokens_to_ids("<|endoftext|>"), *ids])


class BridgeFrozen:
    """The frozen, linear replacement model of one prompt on a TransformerBridge."""

    def __init__(self, bridge, clt: CrossLayerTranscoder, tokens: torch.Tensor):
        self.b, self.clt, self.tokens, self.L = bridge, clt, tokens, clt.n_layers
        frozen, store = {}, {"in": [None] * self.L, "out": [None] * self.L}

        def save(t, *, hook):
            frozen[hook.name] = t.detach().clone()  # hook.name is the canonical name even for aliases

        def cap(kind, layer):
            def fn(t, *, hook):
                store[kind][layer] = t.detach().clone()

            return fn

        names = [n for n in bridge.hook_dict if n.endswith(FROZEN_SUFFIXES)] + [FINAL_SCALE]
        hooks = [(n, save) for n in names]
        for layer in range(self.L):
            hooks += [(clt_in(layer), cap("in", layer)), (mlp_out(layer), cap("out", layer))]
        with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
            self.logits = bridge(tokens[None])[0]
        self.frozen = frozen
        ln2_w = torch.stack([bridge.blocks[k].ln2.w.detach() for k in range(self.L)])
        self.ln2_w = ln2_w
        self.mlp_in = torch.cat(store["in"]) * ln2_w[:, None]  # [L, pos, d] true MLP input
        self.mlp_out = torch.cat(store["out"])  # [L, pos, d]
        self.acts = torch.stack([clt.encode(self.mlp_in[k], k) for k in range(self.L)])
        self.acts[:, 0] = 0  # sink position: no features

    def hooks(self, leaves: dict, sites: dict, mlp_values: torch.Tensor | None = None) -> list:
        """Freezing hooks + leaves (embedding, MLP outputs, optionally replaced by `mlp_values`) + sites."""

        def freeze(t, *, hook):
            return self.frozen[hook.name].to(t.dtype).expand_as(t).clone()  # a new object: edit path

        def embed(t, *, hook):
            leaves["embed"] = t.detach().requires_grad_(True)
            return leaves["embed"]

        def leaf(layer):
            def fn(t, *, hook):
                v = t if mlp_values is None else mlp_values[layer][None].to(t.dtype)
                leaves[layer] = v.detach().requires_grad_(True)
                return leaves[layer]

            return fn

        def site(key):
            def fn(t, *, hook):
                sites[key] = t
                return t

            return fn

        out = [(EMBED, embed)] + [(n, freeze) for n in self.frozen]
        for layer in range(self.L):
            out += [(mlp_out(layer), leaf(layer)), (clt_in(layer), site(layer))]
        out.append((final_resid(self.L), site(self.L)))
        return out

    def forward(self, mlp_values=None):
        leaves, sites = {}, {}
        with torch.enable_grad(), self.b.hooks(fwd_hooks=self.hooks(leaves, sites, mlp_values)):
            logits = self.b(self.tokens[None])
        return logits, leaves, sites

    # ------------------------------------------------------------------ read-outs
    def feature_readout(self, layer: int, feature: int) -> torch.Tensor:
        return self.clt.W_enc[layer, feature].float() * self.ln2_w[layer]

    def logit_readout(self, token: int) -> torch.Tensor:
        W_U = self.b.W_U.detach()
        direction = W_U[:, token] - W_U.mean(1)
        return direction * self.b.ln_final.w.detach() / self.frozen[FINAL_SCALE][0, -1]

    def target_value(self, sites, target) -> torch.Tensor:
        """Pre-activation (feature) or frozen-norm de-meaned logit (logit) of a target, from the sites."""
        if target[0] == "F":
            _, layer, pos, feature = target
            return sites[layer][0, pos] @ self.feature_readout(layer, feature)
        _, token = target
        return sites[self.L][0, -1] @ self.logit_readout(token)

    # ------------------------------------------------------------------ edges
    def edge_by_gradient(self, source, target) -> float:
        """Direct effect of feature `source=(layer, pos, feature)` on `target` by one backward pass."""
        _, leaves, sites = self.forward()
        value = self.target_value(sites, target)
        grads = torch.autograd.grad(value, [leaves[k] for k in range(self.L)], allow_unused=True)
        k, p, f = source
        rows = self.clt.decoder_rows(k, torch.tensor([f]))[0].float()  # [L - k, d]
        total = sum(float(grads[j][0, p] @ rows[j - k]) for j in range(k, self.L) if grads[j] is not None)
        return float(self.acts[k, p, f]) * total

    def edge_by_intervention(self, source, target) -> float:
        """Same edge measured: remove the source's decoder writes from the MLP outputs, rerun frozen."""
        k, p, f = source
        rows = self.clt.decoder_rows(k, torch.tensor([f]))[0].float()
        without = self.mlp_out.clone()
        without[k:, p] -= self.acts[k, p, f] * rows
        with torch.no_grad():
            _, _, base_sites = self.forward()
            _, _, cut_sites = self.forward(without)
            return float(self.target_value(base_sites, target) - self.target_value(cut_sites, target))


def main() -> int:
    if "--toyworld" in sys.argv:  # the shipped toy world (4 layers, d_model 128, trained CLT)
        from tl_clt.toyworld import toyworld_paths

        folder, clt_dir = toyworld_paths()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bridge-proto-"))
        tok = synthetic.make_tokenizer()
        folder = synthetic.make_qwen3_folder(
            tmp / "tiny-qwen3", tokenizer=tok, num_hidden_layers=3, initializer_range=0.1
        )
        clt_dir = synthetic.make_random_clt_folder(
            tmp / "clt", 3, 64, 96, density=0.1, model_name="tiny-qwen3"
        )
    clt = CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)

    t = time.perf_counter()
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
    boot_s = time.perf_counter() - t
    tokens = sink_tokens(bridge.tokenizer, PROMPT)
    fm = BridgeFrozen(bridge, clt, tokens)
    print(f"transformer-lens {TL_VERSION}: import {IMPORT_S:.1f} s, bridge boot {boot_s:.2f} s")

    # The frozen model must reproduce the clean logits and be linear in its leaves.
    logits, leaves, _ = fm.forward()
    print(f"frozen-model logits vs clean: max |diff| {(logits[0] - fm.logits).abs().max():.2e}")

    graph = None
    if HAVE_HT:
        from tl_clt import attribute, load_qwen3

        ht = load_qwen3(folder, device="cpu")
        graph = attribute(ht, clt, PROMPT, verbose=False)
        assert torch.equal(graph.tokens, tokens), "token mismatch"
        with torch.no_grad():
            print(
                f"HT vs bridge clean logits: max |diff| {(ht(tokens[None])[0] - fm.logits).abs().max():.2e}"
            )
        active_ht = graph.active_features
        active_br = fm.acts.nonzero()
        same = torch.equal(active_ht, active_br)
        print(f"active features: HT {len(active_ht)}, bridge {len(active_br)}, same: {same}")
    else:
        print("no HookedTransformer in this transformer-lens: no reference graph, bridge-only checks")
    bridge_graph = full_graph_on_bridge(bridge, clt, tokens)

    # A few feature->feature and feature->logit edges.
    active = fm.acts.nonzero().tolist()
    pairs = []
    for s in active:
        for tgt in active:
            if tgt[0] > s[0] and tgt[1] >= s[1]:
                pairs.append((tuple(s), ("F", *tgt)))
    logit_token = int(fm.logits[-1].argmax())
    pairs = sorted(pairs, key=lambda st: (-st[1][1], st[0]))[:4]
    pairs += [(tuple(s), ("L", logit_token)) for s in active[-2:]]
    worst = {
        "gradient vs intervention": 0.0,
        "bridge graph vs intervention": 0.0,
        "HT graph vs intervention": 0.0,
    }
    scale = 0.0
    for source, target in pairs:
        g = fm.edge_by_gradient(source, target)
        m = fm.edge_by_intervention(source, target)
        b = edge_in(bridge_graph, source, target)
        line = f"edge {source} -> {target}: gradient {g:+.6f}  intervention {m:+.6f}  bridge graph {b:+.6f}"
        worst["gradient vs intervention"] = max(worst["gradient vs intervention"], abs(g - m))
        worst["bridge graph vs intervention"] = max(worst["bridge graph vs intervention"], abs(b - m))
        scale = max(scale, abs(m))
        if graph is not None:
            ref = edge_in(graph, source, target)
            worst["HT graph vs intervention"] = max(worst["HT graph vs intervention"], abs(ref - m))
            line += f"  HT graph {ref:+.6f}"
        print(line)
    for name, value in worst.items():
        if graph is not None or not name.startswith("HT"):
            print(f"max |{name}| {value:.2e} (largest of these edges {scale:.3f})")
    if graph is not None:
        same_nodes = torch.equal(bridge_graph.active_features, graph.active_features) and torch.equal(
            bridge_graph.logit_tokens, graph.logit_tokens
        )
        diff = (bridge_graph.adjacency - graph.adjacency).abs().max()
        rel = diff / graph.adjacency.abs().max()
        print(
            f"whole graph, bridge vs HookedTransformer: same nodes {same_nodes}, max |edge diff| {diff:.2e}"
            f" = {rel:.2e} of the largest edge"
        )
    return 0


def edge_in(graph, source, target) -> float:
    col = graph.feature_index(*source)
    if target[0] == "F":
        row = graph.feature_index(*target[1:])
    else:
        row = graph.logit_index(graph.logit_tokens.tolist().index(target[1]))
    return float(graph.adjacency[row, col])


def full_graph_on_bridge(bridge, clt, tokens):
    """tl_clt's own row machinery (main's attribution.py) on the bridge, only the final site changed."""
    from tl_clt import attribution as A

    class BridgeLinearReplacement(A.LinearReplacement):
        def run_forward(self) -> None:
            final = {}

            def grab(t, *, hook):
                final["resid"] = t
                return t

            hooks = self._hooks() + [(final_resid(self.n_layers), grab)]
            with torch.enable_grad(), self.model.hooks(fwd_hooks=hooks):
                self.model(self.state.tokens[None])
            self.sites[self.n_layers] = final["resid"]

    t = time.perf_counter()
    state = A.clean_pass(bridge, clt, tokens)
    active = A.find_active_features(clt, state)
    lin = BridgeLinearReplacement(bridge, clt, state, active, batch_size=64)
    lin.run_forward()
    graph = A._build_graph(bridge, clt, lin, 10, 0.95, None, 4, False)
    print(f"whole graph on the bridge: {time.perf_counter() - t:.2f} s, {lin.n_backward} backward passes")
    return graph


if __name__ == "__main__":
    sys.exit(main())
