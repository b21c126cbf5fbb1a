"""Build attribution graphs with circuit-tracer 0.5.0 on a local Qwen3 folder and CLT folder.

Run with the circuit-tracer venv (`.ctvenv/bin/python benchmarks/ct_runner.py ...`, see
runner_common.py for the options); it imports only circuit-tracer, TransformerLens 2.x and transformers,
never tl_clt. The model is built with `TransformerLensReplacementModel.from_config` from a
HookedTransformerConfig made here (RMSNorm weights *not* folded, as the CLT reads the true MLP input),
then the folder's weights are loaded into it. Prints one `BENCH_RESULT {json}` line. `--steerings N`: times
N `feature_intervention` calls instead of building graphs (benchmarks/mediate.py).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch
import yaml
from runner_common import (
    DTYPES,
    current_rss_mib,
    emit,
    gpu_allocated_mib,
    parse_args,
    repeat_graphs,
    save_graph,
    timed,
    token_list,
)
from safetensors import safe_open

warnings.filterwarnings("ignore")
logging.getLogger("circuit_tracer").setLevel(logging.ERROR)

from circuit_tracer import attribute  # noqa: E402
from circuit_tracer.attribution.context_transformerlens import AttributionContext  # noqa: E402
from circuit_tracer.replacement_model.replacement_model_transformerlens import (  # noqa: E402
    TransformerLensReplacementModel,
)
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt  # noqa: E402
from transformer_lens import HookedTransformerConfig  # noqa: E402


def tl2_config(hf: dict, name: str, dtype: torch.dtype, device: str = "cpu") -> HookedTransformerConfig:
    """TransformerLens 2.x config for a Qwen3 config.json, norms unfolded, no weight init."""
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    n_kv = hf.get("num_key_value_heads") or n_heads
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 1e6)
    return HookedTransformerConfig(
        model_name=name,
        original_architecture="Qwen3ForCausalLM",
        d_model=hf["hidden_size"],
        d_head=head_dim,
        n_heads=n_heads,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_ctx=min(hf.get("max_position_embeddings", 2048), 2048),
        eps=hf.get("rms_norm_eps", 1e-6),
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_base=theta,
        rotary_adjacent_pairs=False,
        rotary_dim=head_dim,
        final_rms=True,
        gated_mlp=True,
        use_qk_norm=True,
        use_attn_scale=True,
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        init_weights=False,
        dtype=dtype,
        device=device,
    )


def _tl_weight(key: str, t: torch.Tensor, cfg: HookedTransformerConfig, tied: bool) -> dict:
    """One HF Qwen3 tensor -> {TransformerLens name: tensor} (empty for unknown names)."""
    d, h = cfg.d_head, cfg.n_heads
    kv = cfg.n_key_value_heads or h
    gqa = "_" if cfg.n_key_value_heads else ""
    if key == "embed_tokens.weight":
        return {"embed.W_E": t} | ({"unembed.W_U": t.T} if tied else {})
    if key == "norm.weight":
        return {"ln_final.w": t}
    if key == "lm_head.weight":
        return {"unembed.W_U": t.T}
    if not key.startswith("layers."):
        return {}
    _, layer, rest = key.split(".", 2)
    b = f"blocks.{layer}."
    table = {
        "input_layernorm.weight": lambda: {b + "ln1.w": t},
        "post_attention_layernorm.weight": lambda: {b + "ln2.w": t},
        "self_attn.q_proj.weight": lambda: {b + "attn.W_Q": t.reshape(h, d, -1).mT},
        "self_attn.k_proj.weight": lambda: {b + f"attn.{gqa}W_K": t.reshape(kv, d, -1).mT},
        "self_attn.v_proj.weight": lambda: {b + f"attn.{gqa}W_V": t.reshape(kv, d, -1).mT},
        "self_attn.o_proj.weight": lambda: {b + "attn.W_O": t.T.reshape(h, d, -1)},
        "self_attn.q_norm.weight": lambda: {b + "attn.q_norm.w": t},
        "self_attn.k_norm.weight": lambda: {b + "attn.k_norm.w": t},
        "mlp.gate_proj.weight": lambda: {b + "mlp.W_gate": t.T},
        "mlp.up_proj.weight": lambda: {b + "mlp.W_in": t.T},
        "mlp.down_proj.weight": lambda: {b + "mlp.W_out": t.T},
    }
    return table[rest]() if rest in table else {}


def _zero_biases(cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    kv = cfg.n_key_value_heads or cfg.n_heads
    gqa = "_" if cfg.n_key_value_heads else ""
    sd = {"unembed.b_U": torch.zeros(cfg.d_vocab)}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        sd[b + "attn.b_Q"] = torch.zeros(cfg.n_heads, cfg.d_head)
        sd[b + f"attn.{gqa}b_K"] = torch.zeros(kv, cfg.d_head)
        sd[b + f"attn.{gqa}b_V"] = torch.zeros(kv, cfg.d_head)
        sd[b + "attn.b_O"] = torch.zeros(cfg.d_model)
        sd[b + "mlp.b_in"] = torch.zeros(cfg.d_mlp)
        sd[b + "mlp.b_out"] = torch.zeros(cfg.d_model)
    return sd


def _wrapped_name(name: str, known: set[str]) -> str:
    """circuit-tracer wraps each MLP and the unembed: `mlp.W_in` -> `mlp.old_mlp.W_in`."""
    if name in known:
        return name
    for a, b in (("mlp.", "mlp.old_mlp."), ("unembed.", "unembed.old_unembed.")):
        if name.replace(a, b) in known:
            return name.replace(a, b)
    raise KeyError(f"{name} has no place in circuit-tracer's model")


def load_weights(model: TransformerLensReplacementModel, folder: Path) -> None:
    """Read the folder's safetensors tensor by tensor into the (wrapped) model, no folding."""
    cfg, files = model.cfg, sorted(folder.glob("*.safetensors"))
    tied = not any("lm_head.weight" in safe_open(str(p), "pt").keys() for p in files)
    known = set(model.state_dict())
    sd = {_wrapped_name(k, known): v.to(cfg.dtype) for k, v in _zero_biases(cfg).items()}
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                for name, t in _tl_weight(key.removeprefix("model."), f.get_tensor(key), cfg, tied).items():
                    sd[_wrapped_name(name, known)] = t.to(cfg.dtype).contiguous()
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    buffers = ("mask", "IGNORE", "rotary_sin", "rotary_cos")
    bad = [k for k in missing if not (k.endswith(buffers) or k.startswith("transcoders."))]
    if bad or unexpected:
        raise ValueError(f"weights do not fit: missing {bad}, unexpected {unexpected}")
    for p in model.parameters():
        p.requires_grad_(False)


def load_tokenizer(folder: Path):
    """The folder's tokenizer.json (written by transformers 5, whose tokenizer class 4.x lacks).

    `add_bos_token=True` only stops TransformerLens 2.x from reloading it by name; token ids are passed.
    """
    from transformers import PreTrainedTokenizerFast

    conf = json.loads((folder / "tokenizer_config.json").read_text())
    special = {k: conf[k] for k in ("eos_token", "pad_token", "bos_token", "unk_token") if conf.get(k)}
    return PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), name_or_path=str(folder), add_bos_token=True, **special
    )


def load(
    model_dir: Path, clt_dir: Path, dtype: torch.dtype, device: str = "cpu"
) -> TransformerLensReplacementModel:
    hf = json.loads((model_dir / "config.json").read_text())
    hooks = yaml.safe_load((clt_dir / "config.yaml").read_text())
    clt = load_clt(
        str(clt_dir),
        feature_input_hook=hooks["feature_input_hook"],
        feature_output_hook=hooks["feature_output_hook"],
        scan="tl_clt-benchmark",
        device=torch.device(device),
        dtype=dtype,
        lazy_decoder=True,
    )
    tokenizer = load_tokenizer(model_dir)
    model = TransformerLensReplacementModel.from_config(
        tl2_config(hf, str(model_dir), dtype, device), clt, tokenizer=tokenizer, move_to_device=False
    )
    load_weights(model, model_dir)
    return model.to(device).eval()


def count_backward_passes() -> list[int]:
    """Count `AttributionContext.compute_batch` calls (one backward pass each)."""
    counter = [0]
    original = AttributionContext.compute_batch

    def counted(self, *a, **kw):
        counter[0] += 1
        return original(self, *a, **kw)

    AttributionContext.compute_batch = counted
    return counter


def time_steerings(model: TransformerLensReplacementModel, tokens: torch.Tensor, n: int) -> list[float]:
    """Seconds of each of `n` calls of `feature_intervention` (attention frozen, no activations returned),
    each ablating one feature on the last position (features 0..n-1 of the middle layer)."""
    layer, last = model.cfg.n_layers // 2, len(tokens) - 1
    model.feature_intervention(tokens, [(layer, last, 0, 0.0)], return_activations=False)  # warm-up
    cuda = tokens.device.type == "cuda" or next(model.parameters()).device.type == "cuda"
    times = []
    for f in range(n):
        t0 = time.perf_counter()
        model.feature_intervention(tokens, [(layer, last, f, 0.0)], return_activations=False)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    args = parse_args(__doc__, options=[("--steerings", "0", "time this many steerings instead of graphs")])
    dtype = DTYPES[args.dtype]
    if args.clt_dtype not in ("same", args.dtype):
        raise SystemExit("circuit-tracer casts the CLT to the model's dtype: --clt-dtype must be 'same'")
    model, load_s = timed(load, args.model, args.clt, dtype, args.device)
    rss_loaded, gpu_loaded = current_rss_mib(), gpu_allocated_mib()
    tokens = torch.tensor(token_list(args))
    if int(args.steerings):
        times = time_steerings(model, tokens, int(args.steerings))
        emit(dict(engine="circuit-tracer", load_s=load_s, steering_times=times, n_pos=len(tokens)))
        return
    counter = count_backward_passes()

    def build():
        counter[0] = 0
        return attribute(
            tokens,
            model,
            max_n_logits=args.max_n_logits,
            desired_logit_prob=args.desired_logit_prob,
            batch_size=args.batch_size,
            max_feature_nodes=args.max_feature_nodes,
            verbose=False,
        )

    graph, times = repeat_graphs(args, build)
    logits = torch.tensor([t.vocab_idx for t in graph.logit_targets])
    if args.save_graph:
        save_graph(
            args.save_graph,
            adjacency=graph.adjacency_matrix,
            active_features=graph.active_features,
            activation_values=graph.activation_values,
            selected_features=graph.selected_features,
            logit_tokens=logits,
            logit_probabilities=graph.logit_probabilities,
        )
    emit(
        dict(
            engine="circuit-tracer",
            load_s=load_s,
            times=times,
            n_pos=len(tokens),
            n_active=int(graph.active_features.shape[0]),
            n_selected=int(graph.selected_features.numel()),
            n_logits=len(logits),
            n_backward=counter[0],
            rss_after_load_mib=rss_loaded,
            gpu_after_load_mib=gpu_loaded,
            cpu_times=args.cpu_times,
        )
    )


if __name__ == "__main__":
    main()
