"""Every row of docs/errors.md: the bad input gives that exception with that message, nothing is changed.

The expected exception and message excerpt are read from the table in docs/errors.md, so the table and
the tests cannot drift apart. Each case is a function below named `case_<id>`; after each one the user's
model is checked unchanged and a broken CLT folder is checked byte-identical (a failed load writes nothing).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import math
import os
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import cases_models
import pytest
import torch
import yaml
from conftest import PROMPT
from model_state import assert_unchanged, snapshot
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tl_clt
from tl_clt import AttributionGraph, CrossLayerTranscoder, Intervention, synthetic
from tl_clt.clt import CLTFileChangedError
from tl_clt.hooks import ModelNameWarning
from tl_clt.loading import _read_hf_weights, qwen3_state_dict, qwen3_tl_config, read_hf_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
N_FEATURES = 16


def read_table() -> dict[str, tuple[str, str]]:
    """{id: (exception name, message excerpt)} from the table in docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            excerpt = cells[3].strip("`").replace("\\|", "|")
            rows[cells[0].strip("`")] = (cells[2], excerpt)
    return rows


TABLE = read_table()


# ------------------------------------------------------------------------ fixtures
def _env(model_dir, small_clt_dir, backend):
    model = tl_clt.load_qwen3(model_dir, backend=backend)
    clt = CrossLayerTranscoder.from_pretrained(small_clt_dir, dtype=torch.float32)
    graph = tl_clt.attribute(model, clt, PROMPT, max_n_logits=3, verbose=False)
    return SimpleNamespace(
        model=model, clt=clt, graph=graph, model_dir=model_dir, clt_src=small_clt_dir, backend=backend
    )


@pytest.fixture(scope="module")
def env(model_dir, small_clt_dir):
    return _env(model_dir, small_clt_dir, "hooked")


@pytest.fixture(scope="module")
def bridge_env(model_dir, small_clt_dir):
    return _env(model_dir, small_clt_dir, "bridge")


def _ctx(env, tmp_path):
    """The shared model/CLT/graph plus a fresh copy of the CLT folder (`ctx.dir`) to break."""
    shutil.copytree(env.clt_src, tmp_path / "clt")
    return SimpleNamespace(**vars(env), dir=tmp_path / "clt", tmp=tmp_path)


@pytest.fixture()
def ctx(env, tmp_path):
    return _ctx(env, tmp_path)


@pytest.fixture()
def bridge_ctx(bridge_env, tmp_path):
    return _ctx(bridge_env, tmp_path)


def folder_state(folder: Path) -> dict[str, bytes | str]:
    """Each entry's bytes (a symlink: where it points, so broken links can be compared too)."""
    if not folder.is_dir():
        return {}
    return {p.name: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------ helpers to break a CLT folder
def edit_file(folder: Path, name: str, fn) -> None:
    """Load `name` (a safetensors file), let `fn` change the dict of tensors, save it back."""
    tensors = load_file(str(folder / name))
    fn(tensors)
    save_file(tensors, str(folder / name))


def set_config(folder: Path, **changes) -> None:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg.update(changes)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


LOADED: dict[Path, dict[str, bytes]] = {}  # folder -> its bytes just before a case loaded it


def load(folder: Path, **kwargs) -> CrossLayerTranscoder:
    LOADED[folder] = folder_state(folder)
    return CrossLayerTranscoder.from_pretrained(folder, **kwargs)


def other_architecture(c, kind: str):
    """A small model of another architecture on the case's backend: "gpt2" (LayerNorm, plain MLP) or
    "gemma2" (RMSNorm and a gated MLP, like Qwen3, but not in the sites registry)."""
    if c.backend == "bridge":
        return _other_bridge(c, kind)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    shape = dict(
        n_layers=3, d_model=64, d_head=16, n_heads=4, d_mlp=128, d_vocab=c.model.cfg.d_vocab, n_ctx=64
    )
    if kind == "gpt2":
        cfg = HookedTransformerConfig(**shape, act_fn="gelu", normalization_type="LN")
    else:
        cfg = HookedTransformerConfig(
            **shape,
            act_fn="gelu_pytorch_tanh",
            normalization_type="RMS",
            gated_mlp=True,
            positional_embedding_type="rotary",
            original_architecture="Gemma2ForCausalLM",
        )
    return HookedTransformer(cfg, tokenizer=c.model.tokenizer)


def _other_bridge(c, kind: str):
    """A TransformerBridge booted from a small Hugging Face folder of that architecture (tokenizer: the
    tiny Qwen3's)."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    vocab = c.model.cfg.d_vocab
    if kind == "gpt2":
        hf = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=vocab)
        )
    else:
        cfg = transformers.Gemma2Config(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=vocab,
            max_position_embeddings=64,
        )
        hf = transformers.Gemma2ForCausalLM(cfg)
    folder = c.tmp / kind
    hf.save_pretrained(folder)
    for f in c.model_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)


def assert_graphs_close(a: AttributionGraph, b: AttributionGraph, rtol: float) -> None:
    assert torch.equal(a.active_features, b.active_features)
    assert torch.isfinite(a.adjacency).all() and torch.isfinite(b.adjacency).all()
    scale = float(b.adjacency.abs().max())
    assert scale > 0
    torch.testing.assert_close(a.adjacency, b.adjacency, atol=rtol * scale, rtol=rtol)


def an_inactive_feature(graph: AttributionGraph, pos: int = 1) -> tuple[int, int, int]:
    active = {tuple(k) for k in graph.active_features.tolist()}
    return next((0, pos, f) for f in range(N_FEATURES) if (0, pos, f) not in active)


# ------------------------------------------------------------------------ CLT vs model
def case_clt_d_model(c):
    other = synthetic.make_random_clt_folder(c.tmp / "wide", 3, 32, 8)
    tl_clt.attribute(c.model, load(other), PROMPT, verbose=False)


def case_clt_n_layers(c):
    other = synthetic.make_random_clt_folder(c.tmp / "short", 2, 64, 8)
    tl_clt.feature_activations(c.model, load(other), PROMPT)


def case_clt_other_model_name(c):
    set_config(c.dir, model_name="Qwen/Qwen3-8B")
    tl_clt.check_compatible(c.model, load(c.dir))


def case_clt_not_a_clt(c):
    tl_clt.feature_activations(c.model, {"W_enc": c.clt.W_enc}, PROMPT)


def case_clt_other_device(c):
    tl_clt.steer(c.model, load(c.dir).to("meta"), PROMPT, [])


def case_model_bf16_clt_f32(c):
    model = tl_clt.load_qwen3(c.model_dir, dtype=torch.bfloat16, backend=c.backend)
    clt16 = load(c.dir)  # bf16 on disk: the same values as c.clt, in bf16
    g32 = tl_clt.attribute(model, c.clt, PROMPT, max_n_logits=3, verbose=False)
    g16 = tl_clt.attribute(model, clt16, PROMPT, max_n_logits=3, verbose=False)
    assert_graphs_close(g32, g16, rtol=1e-5)
    _check_dtype_pairing(model, c.clt, atol=0.05)


def case_model_f32_clt_bf16(c):
    clt16 = load(c.dir)
    assert clt16.dtype == torch.bfloat16
    g16 = tl_clt.attribute(c.model, clt16, PROMPT, max_n_logits=3, verbose=False)
    assert_graphs_close(g16, c.graph, rtol=1e-5)  # c.graph: the float32 CLT of the same files
    _check_dtype_pairing(c.model, clt16, atol=1e-4)


def _check_dtype_pairing(model, clt, atol):
    """Replacement with error term reproduces the model; steering to the current activation is a no-op."""
    tokens = tl_clt.to_tokens(model, PROMPT)
    with torch.no_grad():
        clean = model(tokens[None])[0]
        with model.hooks(fwd_hooks=tl_clt.replacement_hooks(model, clt, use_error_term=True)):
            replaced = model(tokens[None])[0]
    torch.testing.assert_close(replaced.float(), clean.float(), atol=atol, rtol=0)
    acts = tl_clt.feature_activations(model, clt, PROMPT)
    ivs = tl_clt.scale(acts.indices().T[:5].tolist(), 1.0, acts)
    assert ivs
    steered = tl_clt.steer(model, clt, PROMPT, ivs, freeze_attention=False)
    torch.testing.assert_close(steered.float(), clean.float(), atol=atol, rtol=0)


def case_folded_model(c):
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401

    cfg = qwen3_tl_config(
        read_hf_config(c.model_dir), dtype=torch.float32, device="cpu", n_ctx=None, model_name="tiny-qwen3"
    )
    folded = HookedTransformer(cfg, tokenizer=c.model.tokenizer, move_to_device=False)
    folded.load_and_process_state_dict(qwen3_state_dict(_read_hf_weights(c.model_dir), cfg), fold_ln=True)
    tl_clt.attribute(folded, c.clt, PROMPT, verbose=False)


def case_gpt2_model(c):
    tl_clt.attribute(other_architecture(c, "gpt2"), c.clt, PROMPT, verbose=False)


def case_gemma2_model(c):
    tl_clt.attribute(other_architecture(c, "gemma2"), c.clt, PROMPT, verbose=False)


def case_processed_bridge(c):
    bridge = tl_clt.load_qwen3(c.model_dir, backend="bridge")
    bridge.enable_compatibility_mode()  # defaults: folds the norms, centres W_out / W_U
    tl_clt.attribute(bridge, c.clt, PROMPT, verbose=False)


def case_not_a_model(c):
    tl_clt.steer(torch.nn.Linear(64, 64), c.clt, PROMPT, [])


# ------------------------------------------------------------------------ loading a CLT
def case_missing_folder(c):
    load(c.tmp / "nowhere" / "clt")


def case_hub_unreachable(c):
    import huggingface_hub.constants as hub

    with mock.patch.object(hub, "HF_HUB_OFFLINE", True), mock.patch.object(hub, "HF_HUB_CACHE", str(c.tmp)):
        CrossLayerTranscoder.from_pretrained("nobody-here/no-such-clt")


def case_missing_config(c):
    (c.dir / "config.yaml").unlink()
    load(c.dir)


def case_config_not_yaml(c):
    (c.dir / "config.yaml").write_text("model_kind: [cross_layer_transcoder\n")
    load(c.dir)


def case_config_not_mapping(c):
    (c.dir / "config.yaml").write_text("- cross_layer_transcoder\n")
    load(c.dir)


def case_unknown_model_kind(c):
    set_config(c.dir, model_kind="transcoder_set")
    load(c.dir)


def case_unknown_input_hook(c):
    set_config(c.dir, feature_input_hook="blocks.hook_foo")
    load(c.dir)


def case_unknown_output_hook(c):
    set_config(c.dir, feature_output_hook="hook_attn_out")
    load(c.dir)


def case_missing_decoder_file(c):
    (c.dir / "W_dec_1.safetensors").unlink()
    load(c.dir)


def case_layer_gap(c):
    (c.dir / "W_enc_1.safetensors").unlink()
    (c.dir / "W_dec_1.safetensors").unlink()
    load(c.dir)


def case_extra_layer_file(c):
    shutil.copy(c.dir / "W_enc_2.safetensors", c.dir / "W_enc_5.safetensors")
    load(c.dir)


def case_no_layer_files(c):
    for p in c.dir.glob("*.safetensors"):
        p.unlink()
    load(c.dir)


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def case_truncated_encoder(c):
    _cut(c.dir / "W_enc_1.safetensors")
    load(c.dir)


def case_garbage_encoder(c):
    (c.dir / "W_enc_1.safetensors").write_bytes(b"\xff" * 300)
    load(c.dir)


def case_truncated_decoder(c):
    _cut(c.dir / "W_dec_1.safetensors")
    load(c.dir)


def case_garbage_decoder(c):
    (c.dir / "W_dec_1.safetensors").write_bytes(b"\xff" * 300)
    load(c.dir)


def case_empty_decoder(c):
    (c.dir / "W_dec_1.safetensors").write_bytes(b"")
    load(c.dir)


def case_bad_header_decoder(c):
    (c.dir / "W_dec_1.safetensors").write_bytes((10).to_bytes(8, "little") + b"{not json}")
    load(c.dir)


def case_encoder_tensor_name(c):
    edit_file(c.dir, "W_enc_1.safetensors", lambda t: t.update(W_encoder_1=t.pop("W_enc_1")))
    load(c.dir)


def case_decoder_tensor_name(c):
    edit_file(c.dir, "W_dec_1.safetensors", lambda t: t.update(W_dec_x=t.pop("W_dec_1")))
    load(c.dir)


def case_encoder_shape(c):
    edit_file(c.dir, "W_enc_1.safetensors", lambda t: t.update(W_enc_1=t["W_enc_1"][:10].clone()))
    load(c.dir)


def case_decoder_shape(c):
    edit_file(c.dir, "W_dec_1.safetensors", lambda t: t.update(W_dec_1=torch.zeros(N_FEATURES, 3, 64)))
    load(c.dir)


def _poison(key: str, index: tuple, value: float):
    def fn(tensors):
        tensors[key][index] = value

    return fn


def case_nan_encoder(c):
    edit_file(c.dir, "W_enc_1.safetensors", _poison("W_enc_1", (3, 4), math.nan))
    load(c.dir)


def case_inf_threshold(c):
    edit_file(c.dir, "W_enc_2.safetensors", _poison("threshold_2", (5,), math.inf))
    load(c.dir)


def case_overflow_dtype(c):
    edit_file(c.dir, "W_enc_0.safetensors", _poison("b_enc_0", (0,), 1e30))
    load(c.dir, dtype=torch.float16)


def case_nan_decoder_lazy(c):
    edit_file(c.dir, "W_dec_1.safetensors", _poison("W_dec_1", (3, 0, 7), math.nan))
    clt = load(c.dir)  # decoders stay on disk: the bad row fails where it is read
    clt.decoder_rows(1, torch.tensor([0, 2, 4]))  # healthy rows read fine
    tl_clt.feature_output_tokens(c.model, clt, layer=1, feature=3)


def case_inf_decoder_lazy(c):
    edit_file(c.dir, "W_dec_1.safetensors", _poison("W_dec_1", (3, 0, 7), math.inf))
    tl_clt.feature_output_tokens(c.model, load(c.dir), layer=1, feature=3)


def case_neg_inf_decoder_lazy(c):
    edit_file(c.dir, "W_dec_1.safetensors", _poison("W_dec_1", (3, 1, 2), -math.inf))
    tl_clt.feature_output_tokens(c.model, load(c.dir), layer=1, feature=3)


def case_nan_decoder_eager(c):
    edit_file(c.dir, "W_dec_1.safetensors", _poison("W_dec_1", (3, 0, 7), math.nan))
    load(c.dir, lazy_decoder=False)


# ------------------------------------------------------------------------ prompts
def case_empty_prompt(c):
    tl_clt.attribute(c.model, c.clt, "", verbose=False)


def case_empty_token_list(c):
    tl_clt.feature_activations(c.model, c.clt, [])


def case_prompt_too_long(c):
    tl_clt.steer(c.model, c.clt, [5] * (c.model.cfg.n_ctx + 1), [])


def case_token_out_of_vocab(c):
    tl_clt.attribute(c.model, c.clt, [5, c.model.cfg.d_vocab + 5], verbose=False)


def case_negative_token(c):
    tl_clt.feature_activations(c.model, c.clt, torch.tensor([5, -1]))


def case_sink_only_attribute(c):
    tl_clt.attribute(c.model, c.clt, "<|endoftext|>", verbose=False)


def case_sink_only_report(c):
    tl_clt.reconstruction_report(c.model, c.clt, [c.model.tokenizer.eos_token_id])


def case_float_tokens(c):
    tl_clt.attribute(c.model, c.clt, torch.tensor([1.0, 2.0]), verbose=False)


def case_bool_tokens(c):
    tl_clt.to_tokens(c.model, torch.tensor([True, False]))


def case_batch_2d(c):
    tl_clt.steer(c.model, c.clt, torch.ones(2, 5, dtype=torch.long), [])


def case_list_of_strings(c):
    tl_clt.feature_activations(c.model, c.clt, ["a", "b"])


def case_none_prompt(c):
    tl_clt.attribute(c.model, c.clt, None, verbose=False)


def case_no_tokenizer(c):
    bare = tl_clt.load_qwen3(c.model_dir, backend=c.backend)
    bare.tokenizer = None
    tl_clt.to_tokens(bare, [5, 6, 7])


# ------------------------------------------------------------------------ attribute arguments
def _attribute(c, **kwargs):
    tl_clt.attribute(c.model, c.clt, PROMPT, verbose=False, **kwargs)


ATTRIBUTE_ARGS = {
    "max_feature_nodes_0": dict(max_feature_nodes=0),
    "max_feature_nodes_negative": dict(max_feature_nodes=-3),
    "max_feature_nodes_float": dict(max_feature_nodes=2.5),
    "desired_logit_prob_0": dict(desired_logit_prob=0),
    "desired_logit_prob_above_1": dict(desired_logit_prob=1.5),
    "desired_logit_prob_nan": dict(desired_logit_prob=math.nan),
    "batch_size_0": dict(batch_size=0),
    "batch_size_float": dict(batch_size=2.5),
    "max_n_logits_0": dict(max_n_logits=0),
    "update_interval_0": dict(update_interval=0, max_feature_nodes=5),
    "engine_unknown": dict(engine="fast"),
    "decoder_cache_bytes_negative": dict(decoder_cache_bytes=-1),
    "compute_dtype_int": dict(compute_dtype=torch.int32),
    "workspace_not_one": dict(workspace={}),
}
for _name, _kwargs in ATTRIBUTE_ARGS.items():
    globals()[f"case_{_name}"] = lambda c, kw=_kwargs: _attribute(c, **kw)


def case_workspace_busy(c):
    ws = tl_clt.Workspace()
    with ws.in_use():  # as another thread's graph would hold it
        _attribute(c, workspace=ws)


# ------------------------------------------------------------------------ interventions
def _steer(c, iv, **kwargs):
    tl_clt.steer(c.model, c.clt, PROMPT, [iv], **kwargs)


INTERVENTIONS = {
    "iv_layer": Intervention(3, 1, 0, 1.0),
    "iv_negative_layer": Intervention(-1, 1, 0, 1.0),
    "iv_feature": Intervention(0, 1, N_FEATURES, 1.0),
    "iv_pos": Intervention(0, 40, 0, 1.0),
    "iv_nan": Intervention(0, 1, 0, math.nan),
    "iv_inf": Intervention(0, 1, 0, math.inf),
    "iv_float_layer": Intervention(0.5, 1, 0, 1.0),
    "iv_three_tuple": (0, 1, 0),
}
for _name, _iv in INTERVENTIONS.items():
    globals()[f"case_{_name}"] = lambda c, iv=_iv: _steer(c, iv)


def case_iv_pos_at_run(c):
    hooks = tl_clt.steering_hooks(c.model, c.clt, [Intervention(0, 40, 0, 1.0)], freeze_attention=False)
    with c.model.hooks(fwd_hooks=hooks):
        c.model(tl_clt.to_tokens(c.model, [5, 6, 7])[None])


def case_steering_hooks_other_length(c):
    tokens = tl_clt.to_tokens(c.model, PROMPT)
    hooks = tl_clt.steering_hooks(c.model, c.clt, [Intervention(0, 1, 0, 1.0)], tokens=tokens)
    with c.model.hooks(fwd_hooks=hooks):
        c.model(tokens[None, :5])


def case_freeze_without_tokens(c):
    tl_clt.steering_hooks(c.model, c.clt, [Intervention(0, 1, 0, 1.0)], freeze_attention=True)


def case_iv_pos_name(c):
    tl_clt.steer(c.model, c.clt, PROMPT, [Intervention(0, "last", 0, 1.0)])


def case_iv_pos_name_without_tokens(c):
    tl_clt.steering_hooks(c.model, c.clt, [Intervention(0, "generated", 0, 1.0)], freeze_attention=False)


def _tl_generate(model, hooks, tokens, use_past_kv_cache):
    with model.hooks(fwd_hooks=hooks):
        model.generate(
            tokens[None],
            max_new_tokens=2,
            do_sample=False,
            use_past_kv_cache=use_past_kv_cache,
            verbose=False,
        )


def case_frozen_hooks_in_tl_generate(c):
    tokens = tl_clt.to_tokens(c.model, PROMPT)
    hooks = tl_clt.steering_hooks(c.model, c.clt, [Intervention(0, -1, 0, 1.0)], tokens=tokens)
    _tl_generate(c.model, hooks, tokens, use_past_kv_cache=False)


def case_negative_pos_kv_cache_without_tokens(c):
    hooks = tl_clt.steering_hooks(c.model, c.clt, [Intervention(0, -1, 0, 1.0)], freeze_attention=False)
    _tl_generate(c.model, hooks, tl_clt.to_tokens(c.model, PROMPT), use_past_kv_cache=True)


def case_scale_inactive_feature(c):
    tl_clt.scale([an_inactive_feature(c.graph)], 2.0, c.graph)


def case_generate_float_max_new_tokens(c):
    tl_clt.generate(c.model, c.clt, PROMPT, [], max_new_tokens=2.5)


def case_generate_nan_temperature(c):
    tl_clt.generate(c.model, c.clt, PROMPT, [], max_new_tokens=2, temperature=math.nan)


def case_output_tokens_layer(c):
    tl_clt.feature_output_tokens(c.model, c.clt, layer=3, feature=0)


def case_output_tokens_feature(c):
    tl_clt.feature_output_tokens(c.model, c.clt, layer=0, feature=N_FEATURES)


def case_output_tokens_feature_beyond_int64(c):
    tl_clt.feature_output_tokens(c.model, c.clt, layer=0, feature=2**70)


def case_output_tokens_feature_float(c):
    tl_clt.feature_output_tokens(c.model, c.clt, layer=0, feature=1.0)


def case_output_tokens_k(c):
    tl_clt.feature_output_tokens(c.model, c.clt, layer=0, feature=0, k=-1)


def case_output_tokens_gpt2(c):
    tl_clt.feature_output_tokens(other_architecture(c, "gpt2"), c.clt, layer=0, feature=0)


def _logits(c):
    with torch.no_grad():
        return c.model(tl_clt.to_tokens(c.model, PROMPT)[None])


def case_prediction_table_k(c):
    tl_clt.prediction_table(c.model, _logits(c), _logits(c), k=0)


def case_prediction_table_pos(c):
    tl_clt.prediction_table(c.model, _logits(c), _logits(c), pos=99)


# ------------------------------------------------------------------------ graphs
def case_prune_node_threshold_negative(c):
    c.graph.prune(node_threshold=-0.1)


def case_prune_node_threshold_nan(c):
    c.graph.prune(node_threshold=math.nan)


def case_prune_edge_threshold_above_1(c):
    c.graph.prune(edge_threshold=2)


def case_load_other_version(c):
    save_file({"x": torch.zeros(1)}, str(c.tmp / "g.pt"), metadata={"format": "tl_clt.AttributionGraph/3"})
    AttributionGraph.load(c.tmp / "g.pt")


def case_load_junk(c):
    (c.tmp / "g.pt").write_bytes(b"not a torch file at all")
    AttributionGraph.load(c.tmp / "g.pt")


def case_load_truncated(c):
    c.graph.save(c.tmp / "g.pt")
    _cut(c.tmp / "g.pt")
    AttributionGraph.load(c.tmp / "g.pt")


def _edit_graph_file(path: Path, fn) -> None:
    """Let `fn` change the dict of fields (tensors + the JSON ones) of a saved graph, write it back."""
    with safe_open(str(path), framework="pt") as f:
        fields = {**json.loads(f.metadata()["graph"]), **{k: f.get_tensor(k) for k in f.keys()}}
    fn(fields)
    tensors = {k: v for k, v in fields.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in fields.items() if not isinstance(v, torch.Tensor)}
    meta = {"format": "tl_clt.AttributionGraph/2", "graph": json.dumps(plain)}
    save_file(tensors, str(path), metadata=meta)


def case_load_other_fields(c):
    c.graph.save(c.tmp / "g.pt")
    _edit_graph_file(c.tmp / "g.pt", lambda f: (f.update(edge_labels=[]), f.pop("adjacency")))
    AttributionGraph.load(c.tmp / "g.pt")


def case_load_missing(c):
    AttributionGraph.load(c.tmp / "absent.pt")


def case_save_missing_folder(c):
    try:
        c.graph.save(c.tmp / "no" / "such" / "g.pt")
    finally:
        assert not (c.tmp / "no").exists()


def case_save_fails_midway(c):
    path = c.tmp / "out" / "g.pt"
    path.parent.mkdir()
    path.write_bytes(b"the user's previous graph")

    def disk_full(fd):  # the bytes were written, flushing them to disk fails
        raise OSError(28, "No space left on device")

    with patched(tl_clt.files.os, "fsync", disk_full):
        try:
            c.graph.save(path)
        finally:
            assert path.read_bytes() == b"the user's previous graph"
            assert [p.name for p in path.parent.iterdir()] == ["g.pt"]


def case_group_unknown_node(c):
    c.graph.group({"x": ["F:0:1:9999"]})


def case_group_malformed_id(c):
    c.graph.group({"x": ["Q:1"]})


def case_group_node_twice(c):
    node = c.graph.node_id(0)
    c.graph.group({"a": [node], "b": [node]})


def case_top_inputs_unknown_node(c):
    tl_clt.top_inputs(c.graph, "F:0:1:9999")


# ------------------------------------------------------------------------ feature dashboards
def _dash(c, **kwargs):
    """A hand-made dashboards folder (3 layers, 16 features) in the case's temp folder, and its reader."""
    from dashboard_writer import write_folder

    write_folder(c.tmp / "features", n_layers=3, n_features=N_FEATURES, **kwargs)
    return tl_clt.FeatureDashboards.from_pretrained(c.tmp / "features")


def _write_index(c, entries) -> None:
    import gzip
    import json

    (c.tmp / "features" / "index.json.gz").write_bytes(gzip.compress(json.dumps(entries).encode()))


def _offsets(c, layer: int) -> list[int]:
    return tl_clt.FeatureDashboards.from_pretrained(c.tmp / "features").index[layer][1]


def case_dash_no_features(c):
    tl_clt.FeatureDashboards.from_pretrained(c.tmp)


def case_dash_no_such_path(c):
    tl_clt.FeatureDashboards.from_pretrained(c.tmp / "absent")


def case_dash_index_not_gzip(c):
    _dash(c)
    (c.tmp / "features" / "index.json.gz").write_bytes(b"junk")
    tl_clt.FeatureDashboards.from_pretrained(c.tmp / "features")[0, 0]


def case_dash_index_not_list(c):
    _dash(c)
    _write_index(c, {"a": 1})
    tl_clt.FeatureDashboards.from_pretrained(c.tmp / "features")[0, 0]


def case_dash_index_offsets(c):
    _dash(c)
    _write_index(c, [{"filename": "layer_0.bin", "offsets": [0, 50, 20]}])
    tl_clt.FeatureDashboards.from_pretrained(c.tmp / "features")[0, 0]


def case_dash_missing_layer_file(c):
    dash = _dash(c)
    (c.tmp / "features" / "layer_1.bin").unlink()
    dash[1, 0]


def case_dash_truncated_layer_file(c):
    dash = _dash(c)
    _cut(c.tmp / "features" / "layer_2.bin")
    dash[2, N_FEATURES - 1]


def _edit_record(c, layer: int, feature: int, fn) -> None:
    path = c.tmp / "features" / f"layer_{layer}.bin"
    start, end = _offsets(c, layer)[feature : feature + 2]
    data = bytearray(path.read_bytes())
    data[start:end] = fn(bytes(data[start:end]))
    path.write_bytes(bytes(data))


def case_dash_record_not_zlib(c):
    dash = _dash(c)
    _edit_record(c, 0, 3, lambda r: r[:4] + b"x" * (len(r) - 4))
    dash[0, 3]


def case_dash_record_length(c):
    dash = _dash(c)
    _edit_record(c, 0, 3, lambda r: (len(r) + 100).to_bytes(4, "little") + r[4:])
    dash[0, 3]


def case_dash_record_not_json(c):
    import zlib

    dash = _dash(c)
    body = zlib.compress(b"not json")  # shorter than the record: the rest is zero padding
    _edit_record(c, 0, 3, lambda r: (len(body).to_bytes(4, "little") + body).ljust(len(r), b"\0"))
    dash[0, 3]


def case_dash_layer_out_of_range(c):
    _dash(c)[3, 0]


def case_dash_feature_out_of_range(c):
    _dash(c)[0, N_FEATURES]


def case_dash_negative_feature(c):
    _dash(c)[0, -1]


def case_dash_float_feature(c):
    _dash(c)[0, 1.5]


def case_dash_token_node(c):
    _dash(c)["T:3"]


def case_feature_card_no_dashboards(c):
    c.graph.feature_card(c.graph.node_id(0))


def case_graph_folder_no_dashboards(c):
    tl_clt.write_graph_folder({"g": c.graph}, c.tmp / "site", dashboards=True)


def _build(c, texts, **kwargs):
    from tl_clt.dashboards import build_feature_dashboards

    kwargs.setdefault("context_len", 16)
    return build_feature_dashboards(c.model, c.clt, texts, c.tmp / "out", progress=False, **kwargs)


def case_build_empty_corpus(c):
    _build(c, [])


def case_build_not_strings(c):
    _build(c, [1, 2])


def case_build_dataset_column(c):
    import datasets

    _build(c, datasets.Dataset.from_dict({"body": ["hello world"]}))


def case_build_jsonl_field(c):
    (c.tmp / "c.jsonl").write_text('{"body": "hello world"}\n')
    _build(c, c.tmp / "c.jsonl")


def case_build_context_too_long(c):
    _build(c, ["hello world"], context_len=c.model.cfg.n_ctx + 1)


def case_build_bad_intervals(c):
    _build(c, ["hello world"], n_intervals=3)


def case_build_config_and_kwargs(c):
    from tl_clt.dashboards import DashboardConfig

    _build(c, ["hello world"], config=DashboardConfig(), n_top=5)


def case_build_max_docs_0(c):
    _build(c, ["hello world"], max_docs=0)


def case_build_resume_other_build(c):
    from tl_clt.dashboards import DashboardConfig, build_state

    ckpt = c.tmp / "state.safetensors"
    build_state(
        c.model, c.clt, ["hello world"], DashboardConfig(context_len=16), checkpoint=ckpt, progress=False
    )
    build_state(
        c.model, c.clt, ["hello world"], DashboardConfig(context_len=32), checkpoint=ckpt, progress=False
    )


def _states(c, config_b=None):
    from tl_clt.dashboards import DashboardConfig, build_state

    config = DashboardConfig(context_len=16)
    a = build_state(c.model, c.clt, ["hello world", "the cat"], config, progress=False)
    b = build_state(c.model, c.clt, ["hello world", "the cat"], config_b or config, start=1, progress=False)
    return a, b


def case_merge_overlapping(c):
    a, b = _states(c)
    a.merge(b)


def case_merge_other_settings(c):
    from tl_clt.dashboards import DashboardConfig

    a, b = _states(c, DashboardConfig(context_len=32))
    a.merge(b)


def case_write_other_clt(c):
    from tl_clt.dashboards import DashboardConfig, build_state, write_dashboards

    state = build_state(c.model, c.clt, ["hello world"], DashboardConfig(context_len=16), progress=False)
    other = CrossLayerTranscoder.from_pretrained(c.dir, dtype=torch.float32)
    other.b_enc[0, 0] += 1
    write_dashboards(state, c.model, other, ["hello world"], c.tmp / "out", progress=False)


def case_write_corpus_changed(c):
    from tl_clt.dashboards import DashboardConfig, build_state, write_dashboards

    texts = ["Fact: The president of the United States in 2010 was Barack Obama."] * 2
    state = build_state(c.model, c.clt, texts, DashboardConfig(context_len=32), progress=False)
    write_dashboards(state, c.model, c.clt, ["Fact"] * 2, c.tmp / "out", progress=False)


def case_state_junk(c):
    from tl_clt.dashboards import DashboardState

    (c.tmp / "s.safetensors").write_bytes(b"junk" * 20)
    DashboardState.load(c.tmp / "s.safetensors")


def case_build_out_is_file(c):
    (c.tmp / "out").write_text("a file")
    _build(c, _NotRead(["hello world"]))


class _NotRead(list):
    """A corpus that fails the case if it is read (the output folder is checked first)."""

    def __iter__(self):
        raise AssertionError("the corpus was read before the output folder was checked")

    def __len__(self):
        return 1


def case_state_save_into_folder(c):
    from tl_clt.dashboards import DashboardConfig, build_state

    state = build_state(c.model, c.clt, ["hello world"], DashboardConfig(context_len=16), progress=False)
    (c.tmp / "state").mkdir()
    state.save(c.tmp / "state")


# ------------------------------------------------------------------------ files from strangers (issue 15)
@contextlib.contextmanager
def patched(obj, name: str, value):
    """`obj.name = value` inside the block (the cases get no monkeypatch fixture)."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class _Payload:
    """Unpickling this creates the file `marker`: code run by a graph file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _refuses_payload(c, path: Path) -> None:
    marker = c.tmp / "PAYLOAD_RAN"
    try:
        AttributionGraph.load(path)
    finally:
        assert not marker.exists(), "loading a graph file ran code"


def case_load_pickle_payload(c):
    graph = {"format": "tl_clt.AttributionGraph/1", "graph": {"meta": _Payload(c.tmp / "PAYLOAD_RAN")}}
    torch.save(graph, c.tmp / "g.pt")  # the container tl_clt < 0.2 wrote
    _refuses_payload(c, c.tmp / "g.pt")


def case_load_raw_pickle(c):
    (c.tmp / "g.pt").write_bytes(pickle.dumps(_Payload(c.tmp / "PAYLOAD_RAN")))
    _refuses_payload(c, c.tmp / "g.pt")


def case_load_legacy_file(c):
    from dataclasses import fields

    blob = {f.name: getattr(c.graph, f.name) for f in fields(c.graph)}
    torch.save({"format": "tl_clt.AttributionGraph/1", "graph": blob}, c.tmp / "old.pt")
    old = AttributionGraph.load(c.tmp / "old.pt")
    assert torch.equal(old.adjacency, c.graph.adjacency) and old.token_strs == c.graph.token_strs
    old.save(c.tmp / "new.pt")  # converting: load, save
    assert AttributionGraph.load(c.tmp / "new.pt").meta == c.graph.meta


def case_load_adjacency_shape(c):
    c.graph.save(c.tmp / "g.pt")
    _edit_graph_file(c.tmp / "g.pt", lambda f: f.update(adjacency=f["adjacency"][:, 1:].clone()))
    AttributionGraph.load(c.tmp / "g.pt")


def case_load_tokens_string(c):
    c.graph.save(c.tmp / "g.pt")
    _edit_graph_file(c.tmp / "g.pt", lambda f: f.update(tokens="hello"))
    AttributionGraph.load(c.tmp / "g.pt")


def case_load_feature_past_prompt(c):
    c.graph.save(c.tmp / "g.pt")

    def move(f):
        f["active_features"][0, 1] = 99

    _edit_graph_file(c.tmp / "g.pt", move)
    AttributionGraph.load(c.tmp / "g.pt")


def case_save_meta_not_json(c):
    graph = copy.copy(c.graph)
    graph.meta = {"scores": torch.ones(3)}
    try:
        graph.save(c.tmp / "g.pt")
    finally:
        assert not list(c.tmp.glob("*g.pt*"))


def case_save_into_folder(c):
    (c.tmp / "g.pt").mkdir()
    c.graph.save(c.tmp / "g.pt")


def case_save_unwritable_folder(c):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(c.tmp / ".g.pt.x1y2.tmp"))

    with patched(tl_clt.files.tempfile, "mkstemp", denied):
        try:
            c.graph.save(c.tmp / "g.pt")
        except PermissionError as err:
            assert ".tmp" not in str(err) and str(c.tmp / "g.pt") in str(err)
            raise


def _site_unchanged(c, fn):
    """Run fn; afterwards nothing was written anywhere in the case's temp folder but the CLT copy."""
    before = sorted(p for p in c.tmp.rglob("*") if "clt" not in p.parts)
    try:
        fn()
    finally:
        assert sorted(p for p in c.tmp.rglob("*") if "clt" not in p.parts) == before


def case_folder_slug_from_extra_metadata(c):
    site = c.tmp / "a" / "b" / "site"
    _site_unchanged(c, lambda: tl_clt.write_graph_folder([c.graph], site, extra_metadata={"slug": "../../x"}))


def _exported(c, **changes) -> Path:
    c.graph.to_json(c.tmp / "e.json")
    data = json.loads((c.tmp / "e.json").read_text())
    data["metadata"].update(changes)
    (c.tmp / "e.json").write_text(json.dumps(data))
    return c.tmp / "e.json"


def case_folder_slug_from_json(c):
    path = _exported(c, slug="../../x")
    _site_unchanged(c, lambda: tl_clt.write_graph_folder([path], c.tmp / "a" / "b" / "site"))


def case_folder_slug_is_listing(c):
    _site_unchanged(c, lambda: tl_clt.write_graph_folder({"graph-metadata": c.graph}, c.tmp / "site"))


def _site_with_listing(c, text: str) -> Path:
    site = c.tmp / "site"
    site.mkdir()
    (site / "graph-metadata.json").write_text(text)
    return site


def case_folder_corrupt_listing(c):
    site = _site_with_listing(c, '{"graphs": [')
    _site_unchanged(c, lambda: tl_clt.write_graph_folder([c.graph], site))


def case_folder_list_listing(c):
    site = _site_with_listing(c, "[]")
    _site_unchanged(c, lambda: tl_clt.write_graph_folder([c.graph], site))


def case_folder_non_graph_json(c):
    (c.tmp / "other.json").write_text('{"name": "not a graph"}')
    _site_unchanged(c, lambda: tl_clt.write_graph_folder([c.graph, c.tmp / "other.json"], c.tmp / "site"))


def case_to_json_missing_folder(c):
    try:
        c.graph.to_json(c.tmp / "no" / "such" / "g.json")
    finally:
        assert not (c.tmp / "no").exists()


def case_to_json_into_folder(c):
    (c.tmp / "g.json").mkdir()
    c.graph.to_json(c.tmp / "g.json")


def case_plot_missing_folder(c):
    c.graph.plot(c.tmp / "no" / "g.png")


def case_plot_unknown_type(c):
    try:
        c.graph.plot(c.tmp / "g.xyz")
    finally:
        assert not list(c.tmp.glob("*g.xyz*"))


def case_to_json_threshold_after_prune(c):
    c.graph.prune(0.8).to_json(c.tmp / "g.json", node_threshold=0.1)


def case_to_json_threshold_5_pruned(c):
    c.graph.prune(0.8).to_json(c.tmp / "g.json", node_threshold=5.0)


def case_to_json_threshold_nan_pruned(c):
    c.graph.prune(0.8).to_json(c.tmp / "g.json", edge_threshold=math.nan)


def case_to_json_threshold_string(c):
    c.graph.to_json(c.tmp / "g.json", node_threshold="0.5")


def case_to_json_threshold_scalars(c):
    import numpy as np

    for value in (torch.tensor(0.5), np.float32(0.5), np.int64(1)):
        data = tl_clt.graph_to_dict(c.graph, "g", node_threshold=value)
        assert data["metadata"]["pruning_settings"]["node_threshold"] == float(value)
        assert type(data["metadata"]["pruning_settings"]["node_threshold"]) is float
    ref = tl_clt.graph_to_dict(c.graph, "g", node_threshold=0.5)
    assert tl_clt.graph_to_dict(c.graph, "g", node_threshold=torch.tensor(0.5))["nodes"] == ref["nodes"]


# ---- lazy decoder files that change after loading
def _lazy(c) -> CrossLayerTranscoder:
    """A lazily loaded CLT (not via `load`: these cases change the folder after loading on purpose)."""
    clt = CrossLayerTranscoder.from_pretrained(c.dir)
    clt.decoder_rows(1, torch.arange(4))  # reads fine before the change
    return clt


def case_decoder_resaved_longer_header(c):
    clt = _lazy(c)
    tensors = load_file(str(c.dir / "W_dec_1.safetensors"))  # the same weights ...
    save_file(tensors, str(c.dir / "W_dec_1.safetensors"), metadata={"note": "x" * 100})  # ... shifted
    clt.decoder_rows(1, torch.arange(4))


def case_decoder_replaced(c):
    clt = _lazy(c)
    path = c.dir / "W_dec_1.safetensors"
    shutil.copy(path, c.tmp / "copy")
    os.replace(c.tmp / "copy", path)  # identical bytes, another file
    clt.decoder_rows(1, torch.arange(4))


def _write_raw_safetensors(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _decoder_entry(c, offsets) -> tuple[dict, bytes]:
    t = load_file(str(c.dir / "W_dec_1.safetensors"))["W_dec_1"]
    data = t.view(torch.uint16).numpy().tobytes()
    return {"dtype": "BF16", "shape": list(t.shape), "data_offsets": offsets(len(data))}, data


def case_decoder_offsets_into_header(c):
    entry, data = _decoder_entry(c, lambda n: [-16, n - 16])
    _write_raw_safetensors(c.dir / "W_dec_1.safetensors", {"W_dec_1": entry}, data)
    load(c.dir)


def case_decoder_offsets_gap(c):
    entry, data = _decoder_entry(c, lambda n: [64, n + 64])
    _write_raw_safetensors(c.dir / "W_dec_1.safetensors", {"W_dec_1": entry}, b"\0" * 64 + data)
    load(c.dir)


def case_decoder_offsets_overlap(c):
    entry, data = _decoder_entry(c, lambda n: [0, n])
    other = {"dtype": "BF16", "shape": [8], "data_offsets": [0, 16]}
    _write_raw_safetensors(c.dir / "W_dec_1.safetensors", {"W_dec_1": entry, "extra": other}, data)
    load(c.dir)


# ---- dtypes
def case_clt_int_dtype(c):
    load(c.dir, dtype=torch.int32)


def case_clt_bad_dtype_name(c):
    load(c.dir, dtype="float33")


def case_clt_dtype_name(c):
    clt = load(c.dir, dtype="float32")
    assert clt.dtype == torch.float32
    assert torch.equal(clt.W_enc, c.clt.W_enc) and torch.equal(
        clt.decoder_rows(1, [3]), c.clt.decoder_rows(1, [3])
    )


def case_clt_int_encoder_on_disk(c):
    edit_file(c.dir, "W_enc_0.safetensors", lambda t: t.update(W_enc_0=t["W_enc_0"].to(torch.int32)))
    load(c.dir)


def case_clt_int_decoder_on_disk(c):
    edit_file(c.dir, "W_dec_1.safetensors", lambda t: t.update(W_dec_1=t["W_dec_1"].to(torch.int32)))
    load(c.dir)


def case_model_int_dtype(c):
    tl_clt.load_qwen3(c.model_dir, dtype=int, backend=c.backend)


def case_model_dtype_name(c):
    model = tl_clt.load_qwen3(c.model_dir, dtype="bfloat16", backend=c.backend)
    assert model.cfg.dtype == torch.bfloat16 and model.W_E.dtype == torch.bfloat16
    torch.testing.assert_close(model.W_E.float(), c.model.W_E.bfloat16().float(), rtol=0, atol=0)


# ---- CLT folder oddities
def case_clt_broken_symlink(c):
    (c.dir / "W_dec_1.safetensors").unlink()
    (c.dir / "W_dec_1.safetensors").symlink_to(c.tmp / "blobs" / "deleted")
    load(c.dir)


def case_clt_zero_padded_names(c):
    (c.dir / "W_enc_0.safetensors").rename(c.dir / "W_enc_00.safetensors")
    load(c.dir)


def case_clt_zero_features(c):
    empty = synthetic.make_random_clt_folder(c.tmp / "empty", 3, 64, 0)
    load(empty)


def case_clt_feature_beyond_int64(c):
    c.clt.decoder_rows(0, [2**70])


# ---- model folders
def _model_copy(c) -> Path:
    dest = c.tmp / "model"
    shutil.copytree(c.model_dir, dest)
    return dest


def case_model_no_tokenizer(c):
    folder = _model_copy(c)
    (folder / "tokenizer.json").unlink()
    tl_clt.load_qwen3(folder, backend=c.backend)


def case_model_n_ctx_0(c):
    tl_clt.load_qwen3(c.model_dir, n_ctx=0, backend=c.backend)


def case_model_n_ctx_negative(c):
    tl_clt.load_qwen3(c.model_dir, n_ctx=-5, backend=c.backend)


def case_model_nan_weight(c):
    folder = _model_copy(c)
    edit_file(folder, "model.safetensors", _poison("model.layers.1.mlp.up_proj.weight", (2, 3), math.nan))
    tl_clt.load_qwen3(folder, backend=c.backend)


# ------------------------------------------------------------------------ batch runs
def _many(c, prompts, out="run", **kwargs):
    return tl_clt.attribute_many(
        c.model, c.clt, prompts, c.tmp / out, max_n_logits=2, verbose=False, **kwargs
    )


def case_batch_ray_missing(c):
    saved = sys.modules.get("ray")
    sys.modules["ray"] = None  # `import ray` raises ImportError
    try:
        tl_clt.attribute_many(str(c.model_dir), str(c.clt_src), ["a"], c.tmp / "run", engine="ray")
    finally:
        sys.modules.pop("ray")
        if saved is not None:
            sys.modules["ray"] = saved


def case_batch_loaded_model_on_ray(c):
    tl_clt.attribute_many(c.model, str(c.clt_src), ["a"], c.tmp / "run", engine="ray")


def case_batch_local_workers(c):
    _many(c, ["a"], workers=2)


def case_batch_unknown_engine(c):
    _many(c, ["a"], engine="dask")


def case_batch_prompts_missing(c):
    _many(c, c.tmp / "no-such-prompts.txt")


def case_dash_engine_one_shot_corpus(c):
    from tl_clt.dashboards import build_feature_dashboards

    out = c.tmp / "features"
    try:
        build_feature_dashboards(
            str(c.model_dir), str(c.clt_src), iter(["a"]), out, engine="ray", progress=False
        )
    finally:
        assert not out.exists()  # refused before anything is written


def _jsonl(c, text: str):
    path = c.tmp / "prompts.jsonl"
    path.write_text(text)
    return path


def case_batch_jsonl_not_json(c):
    _many(c, _jsonl(c, '{"prompt": "a"}\n{prompt: b}\n'))


def case_batch_jsonl_no_prompt(c):
    _many(c, _jsonl(c, '{"id": "a", "text": "a"}\n'))


def case_batch_reserved_field(c):
    _many(c, _jsonl(c, '{"id": "a", "prompt": "a", "status": "new"}\n'))


def case_batch_duplicate_ids(c):
    _many(c, _jsonl(c, '{"id": "a", "prompt": "a"}\n{"id": "a", "prompt": "b"}\n'))


def case_batch_dataset_no_column(c):
    import datasets

    _many(c, datasets.Dataset.from_dict({"text": ["a"]}))


def case_batch_other_options(c):
    _many(c, [PROMPT])
    tl_clt.attribute_many(c.model, c.clt, [PROMPT], c.tmp / "run", max_n_logits=3, verbose=False)


def case_batch_prompt_changed(c):
    _many(c, [PROMPT, "The capital of France is"])
    _many(c, ["The capital of France is"])


def case_batch_folder_in_use(c):
    from tl_clt.batch.layout import RunDir

    run = RunDir(c.tmp / "run")
    run.create()
    with run.lock():
        _many(c, [PROMPT])


def case_batch_bad_prompt(c):
    tables = _many(c, [PROMPT, "", "The capital of France is"])
    status = dict(zip(tables.manifest["id"], tables.manifest["status"]))
    assert status == {"000000": "done", "000001": "failed", "000002": "done"}
    error = tables.manifest.set_index("id").loc["000001", "error"]
    assert error == "ValueError: The prompt is empty: pass some text or token ids."


# ------------------------------------------------------------------------ attribution targets
def case_target_several_tokens(c):
    tl_clt.attribute(c.model, c.clt, PROMPT, targets=["Fact: The president"], verbose=False)


def case_target_inactive_feature(c):
    tl_clt.attribute(c.model, c.clt, PROMPT, targets=["F:1:1:15"], verbose=False)


def case_target_empty(c):
    tl_clt.attribute(c.model, c.clt, PROMPT, targets=[], verbose=False)


def case_target_direction_shape(c):
    tl_clt.attribute(c.model, c.clt, PROMPT, targets=[tl_clt.Direction("d", torch.ones(3))], verbose=False)


# ------------------------------------------------------------------------ the tests
CASES = {name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")}
CASES |= cases_models.CASES  # docs/errors.md, section "Models, threads and hooks"
EXCEPTIONS = {
    "ModelNameWarning": ModelNameWarning,
    "CLTFileChangedError": CLTFileChangedError,
    "TargetError": tl_clt.TargetError,
    "WorkspaceBusyError": tl_clt.WorkspaceBusyError,
} | cases_models.EXCEPTIONS


def test_every_table_row_has_a_case_and_back():
    assert len(TABLE) > 80
    assert sorted(TABLE) == sorted(CASES)


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


# Rows that cannot apply to a TransformerBridge, and why; every other row runs on both backends.
HOOKED_ONLY = {
    "folded_model": "fold_ln is a HookedTransformer loading option; a bridge's folded weights are "
    "the processed_bridge row",
    "negative_pos_kv_cache_without_tokens": "the bridge's generate does not pass a KV cache with "
    "transformers 5 (docs/tl_generate.md)",
    "sae_without_error_term": "SAELens attaches SAEs to a HookedSAETransformer, a HookedTransformer "
    "(and SAELens needs transformer-lens < 4)",
}
BRIDGE_CASES = [case for case in TABLE if case in CASES and case not in HOOKED_ONLY]


@pytest.mark.hooked
@pytest.mark.parametrize("case", list(TABLE))
def test_bad_input(ctx, case):
    check_bad_input(ctx, case)


@pytest.mark.bridge
@pytest.mark.parametrize("case", BRIDGE_CASES)
def test_bad_input_on_bridge(bridge_ctx, case):
    check_bad_input(bridge_ctx, case)


def test_bridge_runs_every_row_but_the_hooked_only_ones():
    assert set(HOOKED_ONLY) <= set(TABLE) and all(HOOKED_ONLY.values())
    assert sorted(BRIDGE_CASES) == sorted(set(TABLE) - set(HOOKED_ONLY))


def check_bad_input(ctx, case):
    exc_name, excerpt = TABLE[case]
    model = ctx.model
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    with torch.no_grad():
        logits = model(tokens)
    before = snapshot(model)
    LOADED.clear()
    if exc_name == "works":
        CASES[case](ctx)
    elif exc_name in EXCEPTIONS and issubclass(EXCEPTIONS[exc_name], Warning):
        with pytest.warns(EXCEPTIONS[exc_name]) as record:
            CASES[case](ctx)
        assert any(excerpt in str(w.message) for w in record), [str(w.message) for w in record]
    else:
        exc_type = EXCEPTIONS.get(exc_name) or getattr(builtins, exc_name)
        with pytest.raises(exc_type) as info:
            CASES[case](ctx)
        assert excerpt in _message(info.value), _message(info.value)
    for folder, state in LOADED.items():  # loading wrote nothing into the folder it read
        assert folder_state(folder) == state, folder
    assert_unchanged(model, before, tokens, logits)


# ------------------------------------------------------------------------ the name policy, both ways
@pytest.mark.parametrize(
    "clt_name,model_name",
    [
        ("Qwen/Qwen3-1.7B-Base", "/data/models/Qwen3-1.7B-Base"),
        ("Qwen/Qwen3-1.7B-Base", "qwen/qwen3-1.7b-base/"),
        (
            "Qwen/Qwen3-1.7B-Base",
            "/root/.cache/huggingface/hub/models--Qwen--Qwen3-1.7B-Base/snapshots/0a1b2c",
        ),
        ("tiny-qwen3", "/tmp/x/tiny-qwen3"),
    ],
)
def test_same_model_under_another_name_does_not_warn(ctx, clt_name, model_name):
    clt = load(ctx.dir)
    clt.model_name = clt_name
    model = copy.copy(ctx.model)  # shallow: a cfg of our own to rename, the weights shared
    model.cfg = copy.copy(ctx.model.cfg)
    model.cfg.model_name = model_name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tl_clt.check_compatible(model, clt)


@pytest.mark.parametrize(
    "clt_name,model_name",
    [("Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-1.7B"), ("Qwen/Qwen3-1.7B-Base", "/data/Qwen3-8B-Base")],
)
def test_other_model_warns(ctx, clt_name, model_name):
    clt = load(ctx.dir)
    clt.model_name = clt_name
    model = copy.copy(ctx.model)
    model.cfg = copy.copy(ctx.model.cfg)
    model.cfg.model_name = model_name
    with pytest.warns(ModelNameWarning, match="load the CLT made for this model"):
        tl_clt.check_compatible(model, clt)


@pytest.mark.parametrize("lazy", [True, False])
def test_decoder_rows_of_no_features_and_a_single_feature(ctx, lazy):
    """The NaN check on decoder rows handles empty and 0-d index tensors (layers with nothing active)."""
    clt = load(ctx.dir, lazy_decoder=lazy)
    assert clt.decoder_rows(1, torch.tensor([], dtype=torch.long)).shape == (0, 2, 64)
    rows = clt.decoder_rows(0, torch.tensor(3))
    assert rows.shape == (3, 64) and torch.isfinite(rows).all()
