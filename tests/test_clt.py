"""The CLT loads from BluelightAI's split layout; lazy and eager agree with a direct computation."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tl_clt import CrossLayerTranscoder, synthetic


def _raw(folder, n_layers):
    enc = [load_file(str(folder / f"W_enc_{k}.safetensors")) for k in range(n_layers)]
    dec = [load_file(str(folder / f"W_dec_{k}.safetensors"))[f"W_dec_{k}"] for k in range(n_layers)]
    return enc, dec


def test_layout_and_dtype(clt_dir):
    files = sorted(p.name for p in clt_dir.iterdir())
    assert files == [
        "W_dec_0.safetensors",
        "W_dec_1.safetensors",
        "W_dec_2.safetensors",
        "W_enc_0.safetensors",
        "W_enc_1.safetensors",
        "W_enc_2.safetensors",
        "config.yaml",
    ]
    enc, dec = _raw(clt_dir, 3)
    assert set(enc[1]) == {"W_enc_1", "b_enc_1", "b_dec_1", "threshold_1"}
    assert dec[1].shape == (96, 2, 64) and dec[1].dtype == torch.bfloat16
    clt = CrossLayerTranscoder.from_pretrained(clt_dir)
    assert clt.dtype == torch.bfloat16 and clt.lazy_decoder
    assert (clt.n_layers, clt.n_features, clt.d_model) == (3, 96, 64)


def test_lazy_and_eager_match_direct_computation(clt_dir):
    enc, dec = _raw(clt_dir, 3)
    lazy = CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32)
    eager = CrossLayerTranscoder.from_pretrained(clt_dir, dtype=torch.float32, lazy_decoder=False)
    assert lazy.lazy_decoder and not eager.lazy_decoder
    x = torch.randn(3, 5, 64) * 1.5
    acts = []
    for k in range(3):
        pre = x[k] @ enc[k][f"W_enc_{k}"].float().T + enc[k][f"b_enc_{k}"].float()
        direct = pre * (pre > enc[k][f"threshold_{k}"].float())
        torch.testing.assert_close(lazy.encode(x[k], k), direct)
        torch.testing.assert_close(eager.encode(x[k], k), direct)
        acts.append(direct)
    acts = torch.stack(acts)
    assert 0 < (acts > 0).float().mean() < 0.5
    expected = torch.stack([enc[k][f"b_dec_{k}"].float().expand(5, 64) for k in range(3)]).clone()
    for k, p, f in (acts > 0).nonzero().tolist():
        for target in range(k, 3):
            expected[target, p] += acts[k, p, f] * dec[k][f, target - k].float()
    torch.testing.assert_close(lazy.decode(acts), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager.decode(acts), expected, atol=1e-5, rtol=1e-5)
    rows = torch.tensor([5, 0, 95, 5])
    torch.testing.assert_close(lazy.decoder_rows(1, rows), dec[1][rows].float())
    torch.testing.assert_close(eager.decoder_rows(1, rows), dec[1][rows].float())


def test_relu_when_no_threshold(tmp_path):
    folder = synthetic.make_random_clt_folder(tmp_path / "relu", 2, 16, 8, jumprelu=False)
    clt = CrossLayerTranscoder.from_pretrained(folder, dtype=torch.float32)
    assert clt.threshold is None
    x = torch.randn(4, 16)
    torch.testing.assert_close(clt.encode(x, 0), torch.relu(clt.pre_activations(x, 0)))


@pytest.mark.parametrize("jumprelu", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_features_computes_only_the_chosen_columns(tmp_path, jumprelu, dtype):
    """`encode_features(x, layer, f)` equals the float64 JumpReLU / ReLU of the chosen features, for any
    leading shape, repeated and unsorted indices; an index out of range is refused."""
    folder = synthetic.make_random_clt_folder(tmp_path / "c", 2, 16, 40, jumprelu=jumprelu)
    clt = CrossLayerTranscoder.from_pretrained(folder, dtype=dtype)
    x = torch.randn(3, 5, 16) * 2
    features = torch.tensor([7, 0, 39, 7])
    for layer in range(2):
        pre = x.double() @ clt.W_enc[layer].double().T + clt.b_enc[layer].double()
        thr = clt.threshold[layer].double() if jumprelu else torch.zeros(40, dtype=torch.float64)
        want = (pre * (pre > thr))[..., features]
        got = clt.encode_features(x, layer, features)
        assert got.shape == (3, 5, 4) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert (want > 0).any() and (want == 0).any()
    with pytest.raises(IndexError, match="out of range"):
        clt.encode_features(x, 0, torch.tensor([40]))


@pytest.mark.parametrize("block_bytes", [3 * 16 * 4, 1 << 30])
def test_pre_activations_of_a_bf16_encoder_cast_in_blocks(tmp_path, monkeypatch, block_bytes):
    """A bf16 encoder with a float32 input: the pre-activations (cast a block of rows at a time, blocks of
    3 rows that do not divide the 40 features, or one block) equal the product with the whole encoder cast
    at once, for any leading shape; with an input that requires grad, the gradient flows as before."""
    from tl_clt import clt as clt_module

    monkeypatch.setattr(clt_module, "CAST_BLOCK_BYTES", block_bytes)
    folder = synthetic.make_random_clt_folder(tmp_path / "bf16", 2, 16, 40)
    clt = CrossLayerTranscoder.from_pretrained(folder, dtype=torch.bfloat16)
    assert clt.W_enc.dtype == torch.bfloat16
    x = torch.randn(2, 5, 16)
    for layer in range(2):
        want = x @ clt.W_enc[layer].float().T + clt.b_enc[layer].float()
        got = clt.pre_activations(x, layer)
        assert got.shape == (2, 5, 40) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    xg = x.clone().requires_grad_(True)
    clt.pre_activations(xg, 1).sum().backward()
    torch.testing.assert_close(xg.grad, clt.W_enc[1].float().sum(0).expand(2, 5, 16))


@pytest.mark.parametrize("n_rows", [1, 10, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pre_activations_in_encoder_blocks_equal_the_whole_product(tmp_path, monkeypatch, n_rows, dtype):
    """A prompt's worth of rows on a CPU (W_enc streamed in blocks of 7 features that do not divide the 40,
    each times x^T), and more rows than that path takes: the pre-activations equal x @ W_enc^T + b_enc
    computed in float64, for a float32 and a bf16 encoder, any leading shape."""
    from tl_clt import clt as clt_module

    monkeypatch.setattr(clt_module, "ENCODER_BLOCK_ROWS", 7)
    monkeypatch.setattr(clt_module, "CAST_BLOCK_BYTES", 7 * 16 * 4)
    monkeypatch.setattr(clt_module, "SKINNY_ROWS", 256)
    folder = synthetic.make_random_clt_folder(tmp_path / "enc", 2, 16, 40)
    clt = CrossLayerTranscoder.from_pretrained(folder, dtype=dtype)
    x = torch.randn(n_rows, 1, 16)
    for layer in range(2):
        want = x.double() @ clt.W_enc[layer].double().T + clt.b_enc[layer].double()
        got = clt.pre_activations(x, layer)
        assert got.shape == (n_rows, 1, 40) and got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.fixture()
def broken(tmp_path):
    return synthetic.make_random_clt_folder(tmp_path / "c", 2, 16, 8)


def test_missing_config(broken):
    (broken / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        CrossLayerTranscoder.from_pretrained(broken)


def test_missing_layer_file(broken):
    (broken / "W_dec_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"W_dec_\{l\}.*\[1\]"):
        CrossLayerTranscoder.from_pretrained(broken)


def test_wrong_decoder_shape(broken):
    save_file(
        {"W_dec_1": torch.zeros(8, 2, 16, dtype=torch.bfloat16)},
        str(broken / "W_dec_1.safetensors"),
    )
    with pytest.raises(ValueError, match=r"W_dec_1 has shape \(8, 2, 16\), expected \(8, 1, 16\)"):
        CrossLayerTranscoder.from_pretrained(broken)


def test_truncated_file(broken):
    data = (broken / "W_dec_0.safetensors").read_bytes()
    (broken / "W_dec_0.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        CrossLayerTranscoder.from_pretrained(broken)


def test_nan_weights(broken):
    t = load_file(str(broken / "W_enc_0.safetensors"))
    t["W_enc_0"][3, 4] = float("nan")
    save_file(t, str(broken / "W_enc_0.safetensors"))
    with pytest.raises(ValueError, match="NaN"):
        CrossLayerTranscoder.from_pretrained(broken)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model_kind", "transcoder_set", "model_kind"),
        ("feature_input_hook", "blocks.hook_foo", "Unknown feature_input_hook"),
        ("feature_output_hook", "hook_attn_out", "Unknown feature_output_hook"),
    ],
)
def test_bad_config_values(broken, key, value, match):
    cfg = yaml.safe_load((broken / "config.yaml").read_text())
    cfg[key] = value
    (broken / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=match):
        CrossLayerTranscoder.from_pretrained(broken)


def test_out_of_range_feature(clt):
    with pytest.raises(IndexError, match="feature index out of range"):
        clt.decoder_rows(0, torch.tensor([96]))
    with pytest.raises(IndexError, match="layer 3 is out of range"):
        clt.decoder_rows(3, torch.tensor([0]))


def test_wrong_d_model_is_refused(model, tmp_path):
    folder = synthetic.make_random_clt_folder(tmp_path / "wide", 3, 32, 8)
    with pytest.raises(ValueError, match="d_model 32 != model d_model 64"):
        import tl_clt

        tl_clt.attribute(model, CrossLayerTranscoder.from_pretrained(folder), "hello")


def _row_requests(n_features: int) -> list[torch.Tensor]:
    """Row indices with one run, a few, many (>= PARALLEL_MIN_RUNS, read by threads), repeats and disorder."""
    gen = torch.Generator().manual_seed(0)
    return [
        torch.arange(10, 30),
        torch.tensor([3, 4, 5, 40, 41, 90]),
        torch.sort(torch.randperm(n_features, generator=gen)[:60]).values,
        torch.randperm(n_features, generator=gen)[:50],
        torch.tensor([7, 7, 8, 2, 95, 0]),
        torch.tensor([], dtype=torch.long),
    ]


@pytest.mark.parametrize("how", ["threads", "one thread", "no preadv", "partial reads"])
def test_lazy_rows_read_every_way_equal_the_file(clt_dir, monkeypatch, how):
    """Rows read on demand (by threads when there are many runs, one at a time, without positional reads,
    or with reads that return a few bytes at a time) are the file's rows, and no thread is left behind."""
    import os
    import threading

    from tl_clt import clt as clt_module

    if how == "one thread":
        monkeypatch.setattr(clt_module, "PARALLEL_MIN_RUNS", 10**9)
    elif how == "no preadv":
        monkeypatch.delattr(os, "preadv")
    elif how == "partial reads":
        preadv = os.preadv
        monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: preadv(fd, [bufs[0][:7]], off))
    threads = threading.active_count()
    _, dec = _raw(clt_dir, 3)
    lazy = CrossLayerTranscoder.from_pretrained(clt_dir)
    for layer in range(3):
        for rows in _row_requests(lazy.n_features):
            got = lazy.decoder_rows(layer, rows)
            assert got.dtype == dec[layer].dtype and torch.equal(got, dec[layer][rows])
    assert threading.active_count() == threads


def test_a_read_that_ends_early_names_the_file(clt_dir, monkeypatch):
    import os

    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: 0)  # the file ends where rows should be
    lazy = CrossLayerTranscoder.from_pretrained(clt_dir)
    for rows in (torch.arange(3), _row_requests(lazy.n_features)[2]):  # one thread, then threads
        with pytest.raises(ValueError, match=r"W_dec_1.safetensors is truncated \(short read\)"):
            lazy.decoder_rows(1, rows)
