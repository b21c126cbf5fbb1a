"""Synthetic Qwen3-shaped models and CLTs at the benchmark sizes, saved in the real on-disk formats.

The real size (Qwen3-0.6B shape, 20480 features per layer) makes a ~18 GB bf16 CLT: it is written
layer by layer and feature chunk by feature chunk (`stream_random_clt_folder`), so making it needs
well under 1 GiB of memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tl_clt import synthetic

SIZES = {
    # name: model config overrides, CLT features per layer, density, prompt
    "tiny": dict(
        model=dict(
            num_hidden_layers=4,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=512,
        ),
        features=96,
        density=0.05,
    ),
    "medium": dict(
        model=dict(
            num_hidden_layers=8,
            hidden_size=256,
            intermediate_size=768,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=32,
            vocab_size=2048,
        ),
        features=1024,
        density=0.01,
    ),
    "real": dict(
        model=dict(
            num_hidden_layers=28,
            hidden_size=1024,
            intermediate_size=3072,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        ),
        features=20480,
        density=0.002,
        stream=True,
    ),
    # Qwen3-1.7B shape with a BluelightAI-1.7B-sized CLT (~36 GB of bf16 on disk); the model is streamed
    # to disk too (never all in memory). density 0.0066 gives ~84k active features at 16 tokens, the
    # count measured for a random CLT of this size (issue 13).
    "1.7b": dict(
        model=dict(
            num_hidden_layers=28,
            hidden_size=2048,
            intermediate_size=6144,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        ),
        features=20480,
        density=0.0066,
        stream=True,
        stream_model=True,
    ),
}
PROMPT_28 = (
    "Fact: The president of the United States in 2010 was Barack Obama, and the capital of France "
    "is Paris, which"
)


def prompt_of_length(tokenizer, n: int) -> list[int]:
    """Exactly n token ids (sink token included), cycling through PROMPT_28's tokens."""
    ids = tokenizer(PROMPT_28, add_special_tokens=False)["input_ids"]
    body = (ids * (n // len(ids) + 1))[: n - 1]
    return [tokenizer.convert_tokens_to_ids("<|endoftext|>")] + body


def size_arguments(ap, batch_size: int) -> None:
    """--size, --nodes, --length, --batch-size, --root: one graph of one size (`loaded` reads them)."""
    ap.add_argument("--size", default="medium", choices=sorted(SIZES))
    ap.add_argument("--nodes", type=int, default=None, help="max_feature_nodes (default: all)")
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent / ".bench"))


def loaded(args, clt_dtype: torch.dtype | None = torch.float32):
    """(model, clt, tokens) of `size_arguments`' size, built under --root if missing: a float32 model, the
    CLT in `clt_dtype` (None: as stored), a prompt of --length tokens."""
    from transformers import AutoTokenizer

    import tl_clt

    mdir, cdir = build(args.size, Path(args.root))
    model = tl_clt.load_qwen3(str(mdir), device="cpu", dtype=torch.float32)
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(str(cdir), dtype=clt_dtype, device="cpu")
    tokens = torch.tensor(prompt_of_length(AutoTokenizer.from_pretrained(str(mdir)), args.length))
    return model, clt, tokens


def data_bytes(size: str) -> tuple[int, int]:
    """Bytes on disk of `size`'s (model folder, CLT folder), weights only, from its shapes: the model in
    bf16 where streamed, else float32; the CLT in bf16 (W_enc [F, d] and W_dec [F, L - k, d] per layer k)."""
    spec = SIZES[size]
    m = spec["model"]
    L, d, V = m["num_hidden_layers"], m["hidden_size"], m["vocab_size"]
    H, Hkv, dh = m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"]
    per_layer = d * dh * (2 * H + 2 * Hkv) + 3 * d * m["intermediate_size"] + 2 * d + 2 * dh
    n_model = V * d * (1 if m.get("tie_word_embeddings") else 2) + L * per_layer + d
    clt = spec["features"] * d * (L + L * (L + 1) // 2) * 2
    return n_model * (2 if spec.get("stream_model") else 4), clt


def missing_bytes(size: str, mdir: Path, cdir: Path) -> int:
    """Bytes still to write for `size`'s folders: `data_bytes` of each unfinished one, less its weight files
    already there (a streamed CLT resumes from its finished layers)."""
    need = 0
    for folder, total, marker in zip((mdir, cdir), data_bytes(size), ("config.json", "config.yaml")):
        if not (folder / marker).exists():
            have = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
            need += max(0, total - have)
    return need


def check_disk(size: str, root: Path, mdir: Path, cdir: Path) -> None:
    """Refuse to start making `size`'s data where the disk under `root` cannot hold what is still missing
    (`missing_bytes`) plus 1 GiB: a disk filled half way leaves a broken folder and a machine whose other
    programs fail."""
    need = missing_bytes(size, mdir, cdir)
    existing = next(p for p in (root, *root.resolve().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need and need + (1 << 30) > free:
        raise SystemExit(
            f"making the {size} size's model and CLT needs ~{need / 1e9:.1f} GB more under {root.resolve()}, "
            f"but {free / 1e9:.1f} GB are free there: free some disk, or pass --root DIR on a larger disk "
            f"(or DIR where they are made already)"
        )


def build(size: str, root: Path, seed: int = 0, device: str = "cpu") -> tuple[Path, Path]:
    """(model_dir, clt_dir) for `size` under root, created once and reused; a streamed CLT's random
    numbers are drawn on `device` (a GPU draws the real size's ~9e9 in seconds, a CPU thread in minutes;
    the two devices' streams differ). Refused up front if the disk cannot hold them (`check_disk`)."""
    spec = SIZES[size]
    mdir, cdir = root / f"{size}-model", root / f"{size}-clt"
    check_disk(size, root, mdir, cdir)
    if not (mdir / "config.json").exists():
        tok = synthetic.make_tokenizer(spec["model"]["vocab_size"])
        make_model = stream_qwen3_folder if spec.get("stream_model") else synthetic.make_qwen3_folder
        make_model(mdir, seed=seed, tokenizer=tok, initializer_range=0.05, **spec["model"])
    if not (cdir / "config.yaml").exists():
        m = spec["model"]
        make = stream_random_clt_folder if spec.get("stream") else synthetic.make_random_clt_folder
        make(
            cdir,
            m["num_hidden_layers"],
            m["hidden_size"],
            spec["features"],
            seed=seed,
            density=spec["density"],
            model_name=str(mdir),
            **({"device": device} if spec.get("stream") else {}),
        )
    return mdir, cdir


def bf16_weights_copy(mdir: Path) -> Path:
    """A copy of a model folder with every weight rounded to bf16 (and stored so).

    Loaded as float64, float32 or bf16 it then has exactly the same weights, so comparing graphs across
    dtypes measures the arithmetic only, not the rounding of the weights.
    """
    out = mdir.with_name(mdir.name + "-bf16w")
    if not (out / "config.json").exists():
        out.mkdir(exist_ok=True)
        for f in mdir.iterdir():
            if f.suffix == ".safetensors":
                weights = load_file(str(f))
                save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(out / f.name))
        for f in mdir.iterdir():  # config.json last: it marks the copy complete
            if f.suffix != ".safetensors" and f.name != "config.json":
                (out / f.name).write_bytes(f.read_bytes())
        (out / "config.json").write_bytes((mdir / "config.json").read_bytes())
    return out


def stream_qwen3_folder(
    path: Path,
    seed: int = 0,
    tokenizer=None,
    initializer_range: float = 0.05,
    norm_noise: float = 0.3,
    **config,
) -> Path:
    """A random Qwen3ForCausalLM folder written tensor by tensor in bf16 (peak memory: one tensor).

    Same distributions as `synthetic.make_qwen3_folder` (linear and embedding weights N(0, range^2), norm
    weights 1 + noise * N(0, 1)), another random stream; config.json is written last.
    """
    cfg = synthetic.qwen3_config(initializer_range=initializer_range, torch_dtype="bfloat16", **config)
    path.mkdir(parents=True, exist_ok=True)
    d, h, kv, hd, m = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (h * hd, d),
            p + "self_attn.k_proj.weight": (kv * hd, d),
            p + "self_attn.v_proj.weight": (kv * hd, d),
            p + "self_attn.o_proj.weight": (d, h * hd),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (m, d),
            p + "mlp.up_proj.weight": (m, d),
            p + "mlp.down_proj.weight": (d, m),
        }
    gen = torch.Generator().manual_seed(seed)

    def tensor(name, shape):
        if name.endswith("norm.weight"):
            return 1 + norm_noise * torch.randn(shape, generator=gen)
        return torch.randn(shape, generator=gen) * initializer_range

    def chunks(name, shape, rows=8192):
        for i in range(0, shape[0], rows):
            yield tensor(name, (min(rows, shape[0] - i), *shape[1:]))

    _write_streamed_tensors(path / "model.safetensors", shapes, chunks)
    (tokenizer or synthetic.make_tokenizer(cfg.vocab_size)).save_pretrained(path)
    cfg.save_pretrained(path)
    return path


def _write_streamed_tensors(path: Path, shapes: dict[str, tuple[int, ...]], chunks) -> None:
    """A bf16 safetensors file of several tensors, each written from `chunks(name, shape)` (row chunks, on
    any device) in order; never all in memory. Written to a .partial file renamed into place."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n_bytes = 2 * int(torch.tensor(shape).prod())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        bar = tqdm(shapes.items(), desc=f"writing {path.parent.name}", disable=len(shapes) == 1)
        for name, shape in bar:
            for chunk in chunks(name, shape):
                chunk.to(torch.bfloat16).cpu().contiguous().view(torch.int16).numpy().tofile(f)
        if f.tell() != 8 + len(raw) + offset:
            raise RuntimeError(f"{path}: wrote {f.tell()} bytes, expected {8 + len(raw) + offset}")
    tmp.rename(path)


def _write_streamed_tensor(path: Path, name: str, shape: tuple[int, ...], chunks) -> None:
    """A one-tensor bf16 safetensors file written from an iterator of row chunks."""
    _write_streamed_tensors(path, {name: shape}, lambda _name, _shape: chunks)


def stream_random_clt_folder(
    path: Path,
    n_layers: int,
    d_model: int,
    n_features: int,
    seed: int = 0,
    density: float = 0.1,
    model_name: str = "synthetic",
    chunk: int = 2048,
    device: str = "cpu",
) -> Path:
    """The same random JumpReLU CLT as `synthetic.make_random_clt_folder`, streamed to disk in bf16.

    config.yaml is written last, so an interrupted run leaves a folder that `build` completes: a layer
    whose decoder file exists (written last, renamed into place when complete) is kept, the others are
    written again (each layer has its own random stream, so the result is the same).
    """
    path.mkdir(parents=True, exist_ok=True)
    scale = d_model**-0.5
    cut = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(1 - density)))
    for layer in tqdm(range(n_layers), desc=f"writing {path.name}"):
        if (path / f"W_dec_{layer}.safetensors").exists():
            continue
        gen = torch.Generator(device).manual_seed(seed * 10_000 + layer)
        enc = {
            f"W_enc_{layer}": torch.randn(n_features, d_model, generator=gen, device=device) * scale,
            f"b_enc_{layer}": torch.full((n_features,), -cut / 2),
            f"b_dec_{layer}": torch.randn(d_model, generator=gen, device=device) * 0.01,
            f"threshold_{layer}": torch.full((n_features,), cut / 2),
        }
        enc = {k: v.to(torch.bfloat16).cpu() for k, v in enc.items()}
        save_file(enc, str(path / f"W_enc_{layer}.safetensors"))
        out = n_layers - layer
        chunks = (
            torch.randn(rows, out, d_model, generator=gen, device=device) * (scale * 0.5)
            for rows in (min(chunk, n_features - i) for i in range(0, n_features, chunk))
        )
        _write_streamed_tensor(
            path / f"W_dec_{layer}.safetensors", f"W_dec_{layer}", (n_features, out, d_model), chunks
        )
    config = dict(
        model_kind="cross_layer_transcoder",
        model_name=model_name,
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
    )
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path
