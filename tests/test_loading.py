"""load_qwen3 gives the same logits as transformers, for every Qwen3 shape variant we support."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import PROMPT
from transformer_lens import HookedTransformer

import tl_clt
from tl_clt import synthetic
from tl_clt.loading import qwen3_state_dict, qwen3_tl_config, read_hf_config

VARIANTS = {
    "gqa": dict(),
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "head_dim_not_d_over_h": dict(head_dim=24, num_attention_heads=4, num_key_value_heads=1),
    "three_layers_wide": dict(
        num_hidden_layers=3,
        hidden_size=96,
        intermediate_size=80,
        head_dim=32,
        num_attention_heads=3,
        num_key_value_heads=3,
    ),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_equal_transformers(tmp_path, tokenizer, name):
    from transformers import AutoModelForCausalLM

    folder = synthetic.make_qwen3_folder(
        tmp_path / name, tokenizer=tokenizer, initializer_range=0.1, **VARIANTS[name]
    )
    model = tl_clt.load_qwen3(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = tl_clt.to_tokens(model, PROMPT)[None]
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert theirs.std() > 0.1, "the test model must produce non-trivial logits"
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert model.cfg.normalization_type == "RMS"  # norms unfolded
    hf_norm = hf.model.layers[0].post_attention_layernorm.weight
    torch.testing.assert_close(model.blocks[0].ln2.w, hf_norm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_keep_the_layout_transformer_lens_multiplies_in(model_dir, dtype):
    """TransformerLens 3 turns W_U, the MLP weights and W_Q/K/V/O back into nn.Linear's layout in every
    forward (`W.T.contiguous()`, einops rearranges): loaded in that layout, each of those is the same
    memory, not a copy (a contiguous W_U cost a 622 MB copy per forward at the 0.6B shape). float32
    casts the checkpoint; bf16 (the file's dtype) copies it out of the memory map."""
    import einops

    model = tl_clt.load_qwen3(model_dir, dtype=dtype)

    def same_memory(w, relaid):
        return relaid.data_ptr() == w.data_ptr() and relaid.is_contiguous()

    assert same_memory(model.W_U, model.W_U.T.contiguous())
    for block in model.blocks:
        for w in (block.mlp.W_gate, block.mlp.W_in, block.mlp.W_out):
            assert same_memory(w, w.T.contiguous())
        attn = block.attn
        assert same_memory(attn.W_O, einops.rearrange(attn.W_O, "h dh d -> d (h dh)").contiguous())
        for w in (attn.W_Q, attn._W_K, attn._W_V):
            assert same_memory(w, einops.rearrange(w, "h d dh -> (h dh) d"))
    # and no parameter is a view of the memory-mapped checkpoint (safetensors' mapped storages are the
    # non-resizable ones), so the mapping is released after loading
    assert [n for n, w in model.named_parameters() if not w.untyped_storage().resizable()] == []


def test_sharded_checkpoint_and_bf16(tmp_path, tokenizer):
    from transformers import Qwen3ForCausalLM

    folder = synthetic.make_qwen3_folder(tmp_path / "one", tokenizer=tokenizer, initializer_range=0.1)
    hf = Qwen3ForCausalLM.from_pretrained(folder)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    tokenizer.save_pretrained(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    a = tl_clt.load_qwen3(folder)
    b = tl_clt.load_qwen3(tmp_path / "sharded")
    tokens = tl_clt.to_tokens(a, PROMPT)[None]
    torch.testing.assert_close(a(tokens), b(tokens), atol=0, rtol=0)
    c = tl_clt.load_qwen3(folder, dtype=torch.bfloat16)
    assert c.W_E.dtype == torch.bfloat16
    torch.testing.assert_close(c(tokens).float(), a(tokens), atol=0.1, rtol=0.05)


def test_hub_id_from_offline_cache(tmp_path, model_dir, monkeypatch):
    """A hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1."""
    snap = tmp_path / "hub" / "models--Qwen--Qwen3-Tiny-Base" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    refs = tmp_path / "hub" / "models--Qwen--Qwen3-Tiny-Base" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = tl_clt.load_qwen3("Qwen/Qwen3-Tiny-Base")
    ref = tl_clt.load_qwen3(model_dir)
    tokens = tl_clt.to_tokens(ref, PROMPT)[None]
    torch.testing.assert_close(model(tokens), ref(tokens), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="hub") as info:
        tl_clt.load_qwen3("Qwen/Not-In-Cache")
    # short: no chained traceback from huggingface_hub; says how to use a folder and the toy world
    err = info.value
    assert err.__cause__ is None and err.__suppress_context__
    assert len(str(err)) < 600 and "config.json and the *.safetensors" in str(err)
    assert "tl_clt.toyworld.load_toyworld()" in str(err) and "tl-clt demo" in str(err)


def test_bad_folders_get_clear_errors(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        tl_clt.load_qwen3(tmp_path)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="Qwen3ForCausalLM"):
        tl_clt.load_qwen3(llama)
    with pytest.raises(FileNotFoundError, match="neither a local folder"):
        tl_clt.load_qwen3(os.path.join(str(tmp_path), "missing", "folder"))


def test_folded_model_is_refused_with_the_fix(model_dir, clt):
    hf = read_hf_config(model_dir)
    cfg = qwen3_tl_config(hf, dtype=torch.float32, device="cpu", n_ctx=None, model_name="tiny-qwen3")
    from tl_clt.loading import _read_hf_weights

    folded = HookedTransformer(cfg, move_to_device=False)
    folded.load_and_process_state_dict(qwen3_state_dict(_read_hf_weights(model_dir), cfg), fold_ln=True)
    assert folded.cfg.normalization_type == "RMSPre"
    with pytest.raises(ValueError, match="folded.*load_qwen3"):
        tl_clt.check_compatible(folded, clt)
