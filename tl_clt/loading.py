"""Load any Qwen3 checkpoint (local HF folder or hub id) with unfolded norms, as a HookedTransformer
(transformer-lens 3.x) or a TransformerBridge (transformer-lens 3.x and 4.x).

TransformerLens only knows the Qwen3 names in its own list, and its default `from_pretrained` folds the
RMSNorm weights into the next linear layer. The CLTs read the true MLP input (ln2 output *with* its
weight), so we build the config ourselves and load the weights without any folding or centring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import safe_open

from tl_clt.checks import all_finite, float_dtype
from tl_clt.paths import resolve_folder

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

QWEN3_ARCH = "Qwen3ForCausalLM"
_NON_WEIGHT_KEYS = ("IGNORE", "mask", "rotary_sin", "rotary_cos")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def read_hf_config(folder: Path) -> dict:
    """config.json of a Qwen3ForCausalLM checkpoint, checked for the architecture."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"No config.json in {folder}: not a Hugging Face model folder.")
    hf = json.loads(cfg_path.read_text())
    archs = hf.get("architectures") or []
    if QWEN3_ARCH not in archs and hf.get("model_type") != "qwen3":
        raise ValueError(
            f"{folder} holds a {archs or hf.get('model_type')} checkpoint; load_qwen3 loads only "
            f"{QWEN3_ARCH} (model_type 'qwen3'). For other models use HookedTransformer directly."
        )
    return hf


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in (None, "default"):
        raise NotImplementedError(f"RoPE scaling {rope_type!r} is not supported by load_qwen3.")
    return float(hf.get("rope_theta", params.get("rope_theta", 1_000_000.0)))


def qwen3_tl_config(
    hf: dict, *, dtype: torch.dtype, device: str | None, n_ctx: int | None, model_name: str
) -> HookedTransformerConfig:
    """HookedTransformerConfig for a Qwen3 config.json dict, norms unfolded (normalization 'RMS')."""
    HookedTransformerConfig = _hooked_transformer().HookedTransformerConfig
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    n_kv = hf.get("num_key_value_heads") or n_heads
    max_pos = hf.get("max_position_embeddings", 2048)
    return HookedTransformerConfig(
        model_name=model_name,
        original_architecture=QWEN3_ARCH,
        d_model=hf["hidden_size"],
        d_head=head_dim,
        n_heads=n_heads,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_ctx=n_ctx if n_ctx is not None else min(max_pos, 2048),
        eps=hf.get("rms_norm_eps", 1e-6),
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_base=_rope_theta(hf),
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


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No *.safetensors weights in {folder}.")
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                weights[key.removeprefix("model.")] = f.get_tensor(key)
    return weights


def qwen3_state_dict(
    hf_weights: dict[str, torch.Tensor], cfg: HookedTransformerConfig
) -> dict[str, torch.Tensor]:
    """Map Qwen3 HF weight names/layouts onto HookedTransformer's (no folding, no centring)."""
    w = hf_weights
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    kv = "_" if cfg.n_key_value_heads is not None else ""
    sd = {"embed.W_E": w["embed_tokens.weight"], "ln_final.w": w["norm.weight"]}
    lm_head = w.get("lm_head.weight", w["embed_tokens.weight"])
    sd["unembed.W_U"] = lm_head.T
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab)
    for layer in range(cfg.n_layers):
        p, b = f"layers.{layer}.", f"blocks.{layer}."
        attn = p + "self_attn."
        sd[b + "ln1.w"] = w[p + "input_layernorm.weight"]
        sd[b + "ln2.w"] = w[p + "post_attention_layernorm.weight"]
        sd[b + "attn.W_Q"] = w[attn + "q_proj.weight"].reshape(cfg.n_heads, cfg.d_head, -1).mT
        sd[b + f"attn.{kv}W_K"] = w[attn + "k_proj.weight"].reshape(n_kv, cfg.d_head, -1).mT
        sd[b + f"attn.{kv}W_V"] = w[attn + "v_proj.weight"].reshape(n_kv, cfg.d_head, -1).mT
        sd[b + "attn.W_O"] = w[attn + "o_proj.weight"].T.reshape(cfg.n_heads, cfg.d_head, -1)
        sd[b + "attn.q_norm.w"] = w[attn + "q_norm.weight"]
        sd[b + "attn.k_norm.w"] = w[attn + "k_norm.weight"]
        sd[b + "attn.b_Q"] = torch.zeros(cfg.n_heads, cfg.d_head)
        sd[b + f"attn.{kv}b_K"] = torch.zeros(n_kv, cfg.d_head)
        sd[b + f"attn.{kv}b_V"] = torch.zeros(n_kv, cfg.d_head)
        sd[b + "attn.b_O"] = torch.zeros(cfg.d_model)
        sd[b + "mlp.W_gate"] = w[p + "mlp.gate_proj.weight"].T
        sd[b + "mlp.W_in"] = w[p + "mlp.up_proj.weight"].T
        sd[b + "mlp.W_out"] = w[p + "mlp.down_proj.weight"].T
        sd[b + "mlp.b_in"] = torch.zeros(cfg.d_mlp)
        sd[b + "mlp.b_out"] = torch.zeros(cfg.d_model)
    # Weights keep the checkpoint's memory layout (W_U, the MLP's and W_Q/K/V/O are transposed views of
    # contiguous nn.Linear weights): TransformerLens 3 turns each back into that layout in every forward
    # (`W_U.T.contiguous()`, ...), which copies nothing then; a contiguous W_U alone cost a 622 MB copy
    # per forward at the 0.6B shape. safetensors returns views of the memory-mapped file: copy what would
    # still point into it (same strides), so the mapping (the whole checkpoint) is released once loading
    # is done instead of staying resident.
    mapped = {w.untyped_storage().data_ptr() for w in hf_weights.values()}
    out = {}
    for k, v in sd.items():
        t = v.to(cfg.dtype)
        out[k] = t.clone() if t.untyped_storage().data_ptr() in mapped else t
    return out


def _check_n_ctx(n_ctx) -> None:
    if n_ctx is None:
        return
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int):
        raise TypeError(f"n_ctx must be an int (the context length in tokens) or None, got {n_ctx!r}.")
    if n_ctx < 1:
        raise ValueError(
            f"n_ctx must be at least 1 (the context length in tokens), got {n_ctx}; "
            "None gives min(max_position_embeddings, 2048)."
        )


def _check_tokenizer_files(folder: Path) -> None:
    """FileNotFoundError naming the tokenizer files a Qwen3 folder lacks (else transformers quietly
    builds a tokenizer with one token)."""
    if (folder / "tokenizer.json").is_file():
        return
    missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no tokenizer: load_qwen3 reads tokenizer.json (or vocab.json + merges.txt) from "
            f"the checkpoint folder; missing: tokenizer.json, {', '.join(missing)}. Copy them from the "
            "original checkpoint (e.g. Qwen/Qwen3-1.7B-Base)."
        )


def _check_weights(
    weights: dict[str, torch.Tensor], folder: Path, *, dtype: torch.dtype | None = None
) -> None:
    """ValueError naming the first weight that is not floating point or holds NaN/inf (with `dtype`:
    after conversion to it, i.e. too large for it)."""
    for name, t in weights.items():
        if not t.is_floating_point():
            raise ValueError(
                f"{folder}: the checkpoint weight {name} has dtype {t.dtype}, not a float dtype."
            )
        if not all_finite(t):
            if dtype is not None:
                raise ValueError(
                    f"{folder}: {name} has values too large for dtype={dtype}; load the model in a wider "
                    "dtype (torch.float32 or torch.bfloat16)."
                )
            raise ValueError(
                f"{folder}: the checkpoint weight {name} contains NaN or inf; the checkpoint is corrupt "
                "(re-download it)."
            )


def load_qwen3(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    n_ctx: int | None = None,
    backend: Literal["hooked", "bridge"] | None = "hooked",
) -> HookedTransformer:
    """Any Qwen3ForCausalLM checkpoint (local folder or hub id) -> a TransformerLens model, norms unfolded.

    backend="hooked" (default): a HookedTransformer (needs transformer-lens 3.x). backend="bridge": a
    `TransformerBridge` booted by `TransformerBridge.boot_transformers` from the local folder (a hub id is
    fetched into the cache first, so booting itself is offline), with raw HF weights: no folding, no
    centring (transformer-lens 3.x and 4.x). backend=None: the installed TransformerLens's
    (`default_backend()`: "hooked" on 3.x, "bridge" on 4.x). The tokenizer comes from the same folder/id.
    `dtype` is a torch float dtype or its name ("float32", "bfloat16", ...); every weight is checked finite at
    load. `n_ctx` defaults to min(max_position_embeddings, 2048) for the HookedTransformer
    (TransformerLens keeps rotary tables of that length in every layer) and to max_position_embeddings
    for the bridge.
    """
    check_backend(backend)
    if backend is None:
        backend = default_backend()
    dtype = float_dtype(dtype)
    _check_n_ctx(n_ctx)
    folder = resolve_folder(name_or_path, _HUB_PATTERNS)
    hf = read_hf_config(folder)
    _check_tokenizer_files(folder)
    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "bridge":
        return _boot_bridge(folder, name=str(name_or_path), device=device, dtype=dtype, n_ctx=n_ctx)
    cfg = qwen3_tl_config(hf, dtype=dtype, device=device, n_ctx=n_ctx, model_name=str(name_or_path))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    hf_weights = _read_hf_weights(folder)
    _check_weights(hf_weights, folder)
    state_dict = qwen3_state_dict(hf_weights, cfg)
    if dtype == torch.float16:  # the one float dtype with a narrower range than the checkpoint's
        _check_weights(state_dict, folder, dtype=dtype)
    model = _hooked_transformer().HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if unexpected or any(not k.endswith(_NON_WEIGHT_KEYS) for k in missing):
        raise ValueError(f"Checkpoint does not match Qwen3: missing {missing}, unexpected {unexpected}")
    model.to(device)
    model.eval()
    return model


BACKEND_NAMES = ("hooked", "bridge")  # load_qwen3's backends: HookedTransformer, TransformerBridge


def check_backend(backend: str | None) -> None:
    """`backend` is one of `BACKEND_NAMES` or None (the installed transformer-lens's)."""
    if backend is not None and backend not in BACKEND_NAMES:
        raise ValueError(
            f"backend must be 'hooked', 'bridge' or None (a HookedTransformer, a TransformerBridge, or what "
            f"the installed TransformerLens has), got {backend!r}."
        )


def default_backend() -> Literal["hooked", "bridge"]:
    """The backend the installed TransformerLens offers: "hooked" on 3.x (it has `HookedTransformer`),
    "bridge" on 4.x (only `TransformerBridge`). What `load_qwen3(..., backend=None)`, `load_toyworld`,
    the batch workers and the CLI use unless told."""
    try:
        _hooked_transformer()
    except ImportError:
        return "bridge"
    return "hooked"


def _hooked_transformer():
    """transformer_lens with HookedTransformer (3.x); a clear error on 4.x, where it was removed."""
    import transformer_lens

    try:
        transformer_lens.HookedTransformer  # noqa: B018  (4.x raises ImportError here)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"load_qwen3(backend='hooked') builds a HookedTransformer, which needs transformer-lens 3.x "
            f"(installed: {_tl_version()}). Use load_qwen3(..., backend='bridge') for a TransformerBridge, "
            "or install 'transformer-lens>=3,<4'."
        ) from err
    return transformer_lens


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _boot_bridge(folder: Path, *, name: str, device: str, dtype: torch.dtype, n_ctx: int | None):
    """A TransformerBridge of the Qwen3 checkpoint in `folder`, raw HF weights (what tl_clt needs)."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype, n_ctx=n_ctx)
    bridge.cfg.model_name = name
    # under the checkpoint's own names (`model.layers.1.mlp.up_proj.weight`; the bridge wraps each module)
    weights = {n.replace("_original_component.", ""): p for n, p in bridge.original_model.named_parameters()}
    _check_weights(weights, folder, dtype=dtype if dtype == torch.float16 else None)
    bridge.eval()
    return bridge
