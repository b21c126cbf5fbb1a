"""CrossLayerTranscoder: circuit-tracer's split on-disk format, lazy decoder rows, encode/decode.

On disk (as BluelightAI publishes it): `config.yaml` (model_kind, model_name, feature_input_hook,
feature_output_hook) and, per layer l, `W_enc_{l}.safetensors` (`W_enc_{l}` [F, d_model], `b_enc_{l}` [F],
`b_dec_{l}` [d_model], optional `threshold_{l}` [F] for JumpReLU) and `W_dec_{l}.safetensors` (`W_dec_{l}`
[F, n_layers - l, d_model]). Encoders are kept in memory; decoder rows are read on demand from the
memory-mapped files when `lazy_decoder=True`, so a 40 GiB CLT fits a 24 GiB machine.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from torch import Tensor

from tl_clt.checks import all_finite, float_dtype
from tl_clt.paths import resolve_folder

INPUT_HOOKS = ("mlp.hook_in", "hook_resid_mid", "ln2.hook_normalized")
CAST_BLOCK_BYTES = 8 << 20  # rows of a stored matrix cast at a time (`cast_row_blocks`)
OUTPUT_HOOKS = ("mlp.hook_out", "hook_mlp_out")
_NP_DTYPES = {
    "BF16": (np.uint16, torch.bfloat16),
    "F16": (np.float16, torch.float16),
    "F32": (np.float32, torch.float32),
    "F64": (np.float64, torch.float64),
}
_ITEMSIZE = {  # bytes per element of every safetensors dtype (F8 and smaller: 1)
    **{k: 1 for k in ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4")},
    **{k: 2 for k in ("I16", "U16", "F16", "BF16")},
    **{k: 4 for k in ("I32", "U32", "F32")},
    **{k: 8 for k in ("I64", "U64", "F64", "C64")},
}


def cast_row_blocks(
    W: Float[Tensor, "n m"],
    dtype: torch.dtype,
    device=None,
    *,
    block_rows: int | None = None,
    buffer: Tensor | None = None,
):
    """Yield (first row, rows) of W in `dtype` (and on `device`), `block_rows` at a time (default
    `CAST_BLOCK_BYTES` of them): views of W where it is in that dtype and on that device already, else each
    block cast into one reused buffer (`buffer`, at least [min(block_rows, n), m], or a fresh one): a matrix
    stored in another dtype (bf16 beside float32 arithmetic) is used without a whole copy, whose fresh pages
    cost more than the cast (the buffer stays in cache). A cast block is overwritten by the next: use it
    before asking for the next one."""
    n, m = W.shape
    device = W.device if device is None else torch.device(device)
    item = torch.finfo(dtype).bits // 8
    step = block_rows or max(1, CAST_BLOCK_BYTES // max(1, m * item))
    if W.dtype == dtype and W.device == device:
        for r0 in range(0, n, step):
            yield r0, W[r0 : r0 + step]
        return
    buf = torch.empty(min(step, n), m, dtype=dtype, device=device) if buffer is None else buffer
    for r0 in range(0, n, step):
        block = buf[: min(step, n - r0)]
        block.copy_(W[r0 : r0 + len(block)])
        yield r0, block


class CLTFileChangedError(RuntimeError):
    """A lazily read CLT file changed on disk after the CLT was loaded: reload the CLT."""


# CLT.pre_activations on a CPU for at most SKINNY_ROWS rows: W_enc in blocks of ENCODER_BLOCK_ROWS features,
# each block times x^T. At the real 0.6B shape (16 tokens, 28 x [20480, 1024] float32) the encoders took
# 0.204 s against 0.445 s as x @ W^T (11.5 against 5.3 GB/s of W_enc read; 2048-row blocks were the best of
# 1024-8192); the gain falls to 1.05x at 256 rows.
SKINNY_ROWS = 256
ENCODER_BLOCK_ROWS = 2048

# Rows read by READ_THREADS threads at once (each a stretch of the runs) when a request has at least
# PARALLEL_MIN_RUNS runs of consecutive rows: a disk serves concurrent reads faster. At the 1.7B CLT's size
# (36 GB, more than this machine's page cache) a 1024-node graph's setup took 12-14 s against 19-24 s one
# read at a time; rows all in the page cache take ~0.07 s longer per real-shape graph (benchmarks/README.md).
READ_THREADS = 4
PARALLEL_MIN_RUNS = 16


class SafetensorsRows:
    """Row reader for one tensor of a safetensors file: reads only the requested rows from the file.

    Rows are read with plain file reads into a fresh buffer (runs of consecutive rows in one read; many
    runs by `READ_THREADS` threads at once, which end with the call), not through a long-lived memory
    map, so the pages read stay in the OS page cache and do not add to the process's resident memory.
    """

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        stat = path.stat()
        header, header_len = _read_header(path)
        if name not in header:
            raise KeyError(f"{path.name} has no tensor {name!r} (it has {sorted(header)[:5]}).")
        info = header[name]
        if info["dtype"] not in _NP_DTYPES:
            raise ValueError(
                f"{path.name}:{name} has dtype {info['dtype']}; CLT weights must be floating point "
                f"({', '.join(_NP_DTYPES)}). The file is not a CLT decoder, or is corrupt."
            )
        self.np_dtype, self.torch_dtype = _NP_DTYPES[info["dtype"]]
        self.shape = tuple(info["shape"])
        start, _ = info["data_offsets"]
        self.row_bytes = int(np.prod(self.shape[1:])) * np.dtype(self.np_dtype).itemsize
        self.offset = 8 + header_len + start
        self._stamp = _stamp(stat)
        with open(path, "rb") as f:
            self._header = f.read(8 + header_len)

    def _check_unchanged(self, f) -> None:
        """Refuse to read when the file is not the one loaded (replaced, rewritten, resized, new header)."""
        try:
            now = {_stamp(self.path.stat()), _stamp(os.fstat(f.fileno()))}
            same = now == {self._stamp} and f.read(len(self._header)) == self._header
        except OSError:
            same = False
        if not same:
            raise CLTFileChangedError(
                f"{self.path} changed on disk after the CLT was loaded (decoder rows are read from it on "
                "demand, and its data may now lie elsewhere). Reload the CLT with "
                "CrossLayerTranscoder.from_pretrained(...), or load it with lazy_decoder=False to keep the "
                "decoders in memory."
            )

    def __getitem__(self, rows: Tensor) -> Tensor:
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        index_shape, rows = rows.shape, rows.reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.np_dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range [0, {self.shape[0]}) in {self.path.name}.")
        buffer, size = memoryview(out.reshape(-1).view(np.uint8)), self.row_bytes
        with open(self.path, "rb", buffering=0) as f:
            self._check_unchanged(f)
            starts = rows.tolist()
            spans = consecutive_spans(rows)

            def read(span: tuple[int, int]) -> None:
                i, j = span
                _read_into(f, buffer[i * size : j * size], self.offset + starts[i] * size, self.path)

            if len(spans) >= PARALLEL_MIN_RUNS and hasattr(os, "preadv"):
                n = min(READ_THREADS, len(spans))
                step = -(-len(spans) // n)  # each thread a stretch of consecutive runs: one task each

                def read_all(k: int) -> None:
                    for span in spans[k : k + step]:
                        read(span)

                with ThreadPoolExecutor(n) as pool:  # gone when it returns
                    for _ in pool.map(read_all, range(0, len(spans), step)):
                        pass
            else:
                for span in spans:
                    read(span)
        data = torch.from_numpy(out).view(self.torch_dtype)
        _check_rows_finite(data, rows, self.path, self.name)
        return data.reshape(*index_shape, *self.shape[1:])  # a 0-d index gives one row, as tensors do


def _read_into(f, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill `buffer` from byte `offset` of the open file `f` (positional reads, so that threads can share
    `f`; a read may return less than asked, e.g. 2 GiB at most on Linux: it continues)."""
    done = 0
    while done < len(buffer):
        if hasattr(os, "preadv"):
            n = os.preadv(f.fileno(), [buffer[done:]], offset + done)
        else:  # no positional reads on this OS: one thread reads, so the file position is ours
            f.seek(offset + done)
            n = f.readinto(buffer[done:])
        if not n:
            raise ValueError(f"{path} is truncated (short read).")
        done += n


def _check_rows_finite(data: Tensor, rows: Tensor, path: Path, name: str) -> None:
    """Rows read from disk are checked as they are read (a corrupt file fails where it is used).

    The check is one min/max pass (NaN and inf propagate to them): no temporary as large as the rows,
    and fast in bf16 (a float32 sum of bf16 rows took 18x as long: 0.65 s of a real-shape graph's setup)."""
    if data.numel() == 0:
        return
    low, high = torch.aminmax(data)
    if torch.isfinite(low) and torch.isfinite(high):
        return
    bad = sorted({r for r, row in zip(rows.tolist(), data, strict=True) if not torch.isfinite(row).all()})
    raise ValueError(
        f"{path}: {name} rows (features) {bad[:10]} contain NaN or inf; the file is corrupt. "
        "Re-download the CLT."
    )


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file: device, inode, size, modification time."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def consecutive_spans(rows: Int[Tensor, " n"]) -> list[tuple[int, int]]:
    """(i, j) spans of `rows` whose values are consecutive integers, covering all of it in order (none for
    an empty `rows`)."""
    if not len(rows):
        return []
    breaks = ((rows[1:] - rows[:-1]) != 1).nonzero().squeeze(-1) + 1
    edges = [0, *breaks.tolist(), len(rows)]
    return list(zip(edges[:-1], edges[1:]))


class CrossLayerTranscoder(torch.nn.Module):
    """A CLT: `f_l = act(W_enc_l x_l + b_enc_l)`, `y_l = sum_{k<=l} W_dec_{k->l} f_k + b_dec_l`.

    Attributes: n_layers, d_model, n_features, W_enc [n_layers, F, d_model], b_enc [n_layers, F],
    b_dec [n_layers, d_model], threshold [n_layers, F] or None (ReLU), feature_input_hook,
    feature_output_hook, model_name, path.
    """

    def __init__(
        self,
        W_enc: Float[Tensor, "n_layers n_features d_model"],
        b_enc: Float[Tensor, "n_layers n_features"],
        b_dec: Float[Tensor, "n_layers d_model"],
        W_dec: list[Tensor] | list[SafetensorsRows],
        *,
        threshold: Float[Tensor, "n_layers n_features"] | None = None,
        feature_input_hook: str = "mlp.hook_in",
        feature_output_hook: str = "mlp.hook_out",
        model_name: str | None = None,
        path: Path | None = None,
    ):
        super().__init__()
        if feature_input_hook not in INPUT_HOOKS:
            raise ValueError(f"Unknown feature_input_hook {feature_input_hook!r}; known: {INPUT_HOOKS}")
        if feature_output_hook not in OUTPUT_HOOKS:
            raise ValueError(f"Unknown feature_output_hook {feature_output_hook!r}; known: {OUTPUT_HOOKS}")
        self.n_layers, self.n_features, self.d_model = W_enc.shape
        self.register_buffer("W_enc", W_enc)
        self.register_buffer("b_enc", b_enc)
        self.register_buffer("b_dec", b_dec)
        self.register_buffer("threshold", threshold)
        self._W_dec = W_dec
        self.lazy_decoder = isinstance(W_dec[0], SafetensorsRows)
        self.feature_input_hook = feature_input_hook
        self.feature_output_hook = feature_output_hook
        self.model_name = model_name
        self.path = path
        self.dashboards = None  # FeatureDashboards when the folder / hub repo has features/ (from_pretrained)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        lazy_decoder: bool = True,
    ) -> CrossLayerTranscoder:
        """Load a CLT folder or hub id in circuit-tracer's split format (BluelightAI's CLTs).

        `dtype=None` keeps the on-disk dtype (a torch float dtype or its name, e.g. "bfloat16"). With
        `lazy_decoder` decoder rows stay on disk, and a decoder file changed after loading is refused
        (CLTFileChangedError) rather than read.
        """
        dtype = float_dtype(dtype, allow_none=True)
        folder = resolve_folder(name_or_path, ["config.yaml", "*.safetensors"])
        config = _read_config(folder)
        n_layers = _count_layers(folder)
        enc = _read_encoders(folder, n_layers, dtype)
        W_enc, b_enc, b_dec, threshold = (enc.get(k) for k in ("W_enc", "b_enc", "b_dec", "threshold"))
        dtype = W_enc.dtype
        W_dec = _open_decoders(folder, n_layers, W_enc.shape[1], W_enc.shape[2], lazy_decoder)
        if not lazy_decoder:
            W_dec = [w.to(dtype) for w in W_dec]
        clt = cls(
            W_enc,
            b_enc,
            b_dec,
            W_dec,
            threshold=threshold,
            feature_input_hook=config["feature_input_hook"],
            feature_output_hook=config["feature_output_hook"],
            model_name=config.get("model_name"),
            path=folder,
        )
        from tl_clt.dashboards.reader import dashboards_for

        clt.dashboards = dashboards_for(name_or_path, folder)
        return clt.to(device) if device is not None else clt

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if not self.lazy_decoder:
            self._W_dec = [fn(w) for w in self._W_dec]
        return self

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    # ---------------------------------------------------------------- compute
    def check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not hasattr(layer, "__index__"):
            raise TypeError(f"layer must be an int, got {layer!r} ({type(layer).__name__}).")
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range for a CLT with {self.n_layers} layers.")

    def pre_activations(self, x: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... n_features"]:
        """`W_enc_l x + b_enc_l`, computed in x's dtype. On a CPU, for a prompt's worth of rows (at most
        `SKINNY_ROWS`), W_enc is streamed in blocks of `ENCODER_BLOCK_ROWS` features, each `W_block @ x^T`:
        ~2x the rate of `x @ W^T` at 16 rows (benchmarks/README.md). An encoder stored in another dtype (bf16
        beside a float32 model) is cast a block of rows at a time into one reused buffer, not as a fresh
        [F, d_model] copy per call (page faults: 3x slower at Qwen3-0.6B's size)."""
        W = self.W_enc[layer]
        flat = x.reshape(-1, W.shape[1])
        if (
            x.device.type != "cpu"
            or (torch.is_grad_enabled() and x.requires_grad)
            or (W.dtype == x.dtype and len(flat) > SKINNY_ROWS)
        ):
            pre = x @ W.to(x.dtype).T
        else:
            # views of W in ENCODER_BLOCK_ROWS blocks, or CAST_BLOCK_BYTES cast at a time
            blocks = cast_row_blocks(
                W, x.dtype, x.device, block_rows=ENCODER_BLOCK_ROWS if W.dtype == x.dtype else None
            )
            if len(flat) <= SKINNY_ROWS:  # [F, rows], transposed once at the end
                pre_T = x.new_empty(W.shape[0], flat.shape[0])
                for f0, w in blocks:
                    torch.mm(w, flat.T, out=pre_T[f0 : f0 + len(w)])
                pre = pre_T.T.contiguous()
            else:
                pre = x.new_empty(flat.shape[0], W.shape[0])
                for f0, w in blocks:
                    pre[:, f0 : f0 + len(w)] = flat @ w.T
            pre = pre.view(*x.shape[:-1], W.shape[0])
        return pre.add_(self.b_enc[layer].to(x.dtype))  # in place: the same values, one [..., F] tensor less

    def activation_fn(self, pre: Tensor, layer: int, features: Tensor | None = None) -> Tensor:
        """JumpReLU (`pre * (pre > threshold)`) when thresholds exist, else ReLU. `features`: `pre` holds
        only those features' columns (their thresholds are used)."""
        if self.threshold is None:
            return torch.relu(pre)
        threshold = self.threshold[layer] if features is None else self.threshold[layer][features]
        return pre * (pre > threshold.to(pre.dtype))

    def encode(self, x: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... n_features"]:
        """Feature activations of layer `layer` for MLP inputs x."""
        return self.activation_fn(self.pre_activations(x, layer), layer)

    def encode_features(
        self, x: Float[Tensor, "... d_model"], layer: int, features: Int[Tensor, " m"]
    ) -> Float[Tensor, "... m"]:
        """`encode(x, layer)[..., features]`, computing only those features (steering reads a few)."""
        self.check_layer(layer)
        features = _feature_indices(features, self.n_features, layer).to(self.W_enc[layer].device)
        pre = x @ self.W_enc[layer][features].to(x.dtype).T + self.b_enc[layer][features].to(x.dtype)
        return self.activation_fn(pre, layer, features)

    def decoder_rows(
        self, layer: int, features: Int[Tensor, " n"], *, compact: bool = False
    ) -> Float[Tensor, "n n_out_layers d_model"]:
        """Decoder rows `W_dec_layer[features]`: what each feature writes to layers layer..n_layers-1.

        `compact=True`: the same values in the narrower of the on-disk dtype and the CLT's dtype (a bf16
        file under a float32 CLT stays bf16: half the memory, exact once cast up)."""
        self.check_layer(layer)
        features = _feature_indices(features, self.n_features, layer)
        if self.lazy_decoder:
            rows = self._W_dec[layer][features]
            keep = compact and rows.element_size() < torch.finfo(self.dtype).bits // 8
            return rows.to(self.device, rows.dtype if keep else self.dtype)
        return self._W_dec[layer][features.to(self.device)]

    def decode(self, acts: Float[Tensor, "n_layers ... n_features"]) -> Float[Tensor, "n_layers ... d_model"]:
        """Reconstruction of every layer's MLP output from all layers' (sparse) feature activations."""
        out = self.b_dec.to(acts.dtype).view(self.n_layers, *[1] * (acts.ndim - 2), -1)
        out = out.expand(*acts.shape[:-1], self.d_model).clone()
        for k in range(self.n_layers):
            a = acts[k]
            active = a.reshape(-1, self.n_features).abs().sum(0).nonzero().squeeze(-1)
            if active.numel() == 0:
                continue
            rows = self.decoder_rows(k, active).to(acts.dtype)  # [n, L-k, d]
            out[k:] += torch.einsum("...n,nld->l...d", a[..., active], rows)
        return out

    # ---------------------------------------------------------------- display
    def __repr__(self) -> str:
        from tl_clt.display import clt_repr

        return clt_repr(self)

    def _repr_html_(self) -> str:
        from tl_clt.display import clt_html

        return clt_html(self)


def _feature_indices(features, n_features: int, layer: int) -> Tensor:
    """Feature indices as a long tensor, checked in [0, n_features) (also Python ints past int64)."""
    out_of_range = IndexError(f"feature index out of range [0, {n_features}) at layer {layer}.")
    if not isinstance(features, Tensor):
        flat = features if isinstance(features, list | tuple) else [features]
        if any(isinstance(f, int) and not 0 <= f < n_features for f in flat):  # before int64 overflows
            raise out_of_range
        features = torch.as_tensor(features)
    if features.is_floating_point() or features.is_complex() or features.dtype == torch.bool:
        raise TypeError(f"feature indices must be integers, got dtype {features.dtype}.")
    features = features.long()
    if features.numel() and (features.min() < 0 or features.max() >= n_features):
        raise out_of_range
    return features


def _check_link(path: Path) -> None:
    """FileNotFoundError naming a symlink whose target is gone (a hub cache whose blobs were deleted)."""
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(
            f"{path} is a broken symlink (it points to {os.readlink(path)}, which does not exist); "
            "re-download the CLT."
        )


_CONFIG_STRINGS = ("model_kind", "model_name", "feature_input_hook", "feature_output_hook")


def _read_config(folder: Path) -> dict:
    path = folder / "config.yaml"
    _check_link(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No config.yaml in {folder}. A CLT folder holds config.yaml plus W_enc_{{l}} and "
            "W_dec_{l} .safetensors files per layer (circuit-tracer's split format)."
        )
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid YAML ({err}); re-download the CLT.") from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds a {type(config).__name__}, not a mapping with model_kind, model_name, "
            "feature_input_hook and feature_output_hook; re-download the CLT."
        )
    kind = config.get("model_kind", "cross_layer_transcoder")
    if kind != "cross_layer_transcoder":
        raise ValueError(
            f"{path}: model_kind {kind!r} is not supported; tl_clt loads 'cross_layer_transcoder'."
        )
    config.setdefault("feature_input_hook", "mlp.hook_in")
    config.setdefault("feature_output_hook", "mlp.hook_out")
    wrong = {k: v for k, v in config.items() if k in _CONFIG_STRINGS and not isinstance(v, str | None)}
    if wrong:
        raise ValueError(f"{path}: {wrong} should be strings; re-download the CLT.")
    return config


def _count_layers(folder: Path) -> int:
    layers = {}
    for kind in ("enc", "dec"):
        paths = [p for p in folder.iterdir() if re.fullmatch(rf"W_{kind}_\d+\.safetensors", p.name)]
        padded = [p.name for p in paths if re.fullmatch(rf"W_{kind}_0\d+\.safetensors", p.name)]
        if padded:
            raise ValueError(
                f"{folder}: layer files are named W_{kind}_0, W_{kind}_1, ... without leading zeros; found "
                f"{sorted(padded)}. Rename them (e.g. W_{kind}_00 -> W_{kind}_0)."
            )
        for p in paths:
            _check_link(p)
        layers[kind] = sorted(int(p.name.split("_")[2].split(".")[0]) for p in paths)
    n = max(layers["enc"] + layers["dec"], default=-1) + 1
    for kind, got in layers.items():
        missing = sorted(set(range(n)) - set(got))
        if missing or n == 0:
            raise FileNotFoundError(
                f"{folder}: W_{kind}_{{l}}.safetensors missing for layers {missing or 'all'} (found "
                f"W_enc for layers {layers['enc']}, W_dec for {layers['dec']}; a CLT of n layers has "
                "W_enc_0..W_enc_{n-1} and W_dec_0..W_dec_{n-1}). Re-download the CLT, or remove stray "
                "layer files."
            )
    return n


def _read_encoder_layer(folder: Path, layer: int) -> dict[str, Tensor]:
    path = folder / f"W_enc_{layer}.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            need = [f"W_enc_{layer}", f"b_enc_{layer}", f"b_dec_{layer}"]
            if missing := [k for k in need if k not in keys]:
                raise ValueError(f"{path.name} lacks tensors {missing} (has {sorted(keys)}).")
            out = {k.rsplit("_", 1)[0]: f.get_tensor(k) for k in need}
            if f"threshold_{layer}" in keys:
                out["threshold"] = f.get_tensor(f"threshold_{layer}")
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); re-download the CLT.") from err
    for name, t in out.items():
        if not t.is_floating_point():
            raise ValueError(
                f"{path}: {name}_{layer} has dtype {t.dtype}; CLT weights must be floating point. The "
                "file is not a CLT encoder, or is corrupt."
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: {name}_{layer} contains NaN or inf values; the file is corrupt.")
    return out


def _check_layer_shapes(e: dict[str, Tensor], layer: int, F: int, d: int, folder: Path) -> None:
    shapes = {k: tuple(v.shape) for k, v in e.items()}
    want = {"W_enc": (F, d), "b_enc": (F,), "b_dec": (d,), "threshold": (F,)}
    bad = {k: s for k, s in shapes.items() if s != want[k]}
    if bad:
        raise ValueError(f"{folder}: layer {layer} tensors have shapes {bad}, expected {want}.")


def _check_first_layer(e: dict[str, Tensor], folder: Path) -> None:
    """Layer 0 sets the shapes every layer must have: W_enc [n_features >= 1, d_model >= 1]."""
    W = e["W_enc"]
    if W.ndim != 2 or 0 in W.shape:
        what = f"{W.shape[0]} features" if W.ndim == 2 and W.shape[0] == 0 else f"shape {tuple(W.shape)}"
        raise ValueError(
            f"{folder}: W_enc_0 has {what}; a CLT's W_enc_l is [n_features, d_model] with at least one "
            "feature. The folder is not a usable CLT."
        )


def _read_encoders(folder: Path, n_layers: int, dtype: torch.dtype | None) -> dict[str, Tensor]:
    """Every layer's encoder tensors stacked in `dtype` (None: as on disk), checked layer by layer.

    Each layer is copied into the preallocated stacks as it is read, so loading needs the CLT's
    encoders plus one layer of memory (not the 3-4x of stacking, casting and checking them at once).
    """
    out: dict[str, Tensor] = {}
    for layer in range(n_layers):
        e = _read_encoder_layer(folder, layer)
        if layer == 0:
            _check_first_layer(e, folder)
            dtype = dtype or e["W_enc"].dtype
            out = {k: torch.empty(n_layers, *t.shape, dtype=dtype) for k, t in e.items()}
        elif ("threshold" in e) != ("threshold" in out):
            raise ValueError(f"{folder}: threshold_l is present for some layers only.")
        _check_layer_shapes(e, layer, *out["W_enc"].shape[1:], folder)
        for name, t in e.items():
            out[name][layer] = t
            if not all_finite(out[name][layer]):  # finite on disk (checked on read): an overflow
                raise ValueError(
                    f"{folder}: {name} has values too large for dtype={dtype} (NaN or inf after "
                    "conversion); load it in a wider dtype (dtype=None keeps the on-disk one)."
                )
    return out


def _open_decoders(folder: Path, n_layers: int, F: int, d: int, lazy: bool) -> list:
    decoders = []
    for layer in range(n_layers):
        path = folder / f"W_dec_{layer}.safetensors"
        rows = SafetensorsRows(path, f"W_dec_{layer}")
        if rows.shape != (F, n_layers - layer, d):
            raise ValueError(
                f"{path.name}: W_dec_{layer} has shape {rows.shape}, expected "
                f"{(F, n_layers - layer, d)} = [n_features, n_layers - layer, d_model]."
            )
        decoders.append(rows if lazy else rows[torch.arange(F)])
    return decoders


def _read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and its length, or ValueError for a truncated/corrupt file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if size < 8 or header_len > size - 8:
            raise ValueError(f"{path} is truncated or corrupt (its header does not fit the file).")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is truncated or corrupt (unreadable header: {err}).") from err
    if not isinstance(header, dict) or not all(
        isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= set(v)
        for k, v in header.items()
        if k != "__metadata__"
    ):
        raise ValueError(f"{path} is truncated or corrupt (its header is not a safetensors header).")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    problem = _offsets_problem(tensors, size - 8 - header_len)
    if problem:
        raise ValueError(f"{path} is truncated or corrupt ({problem}); re-download the CLT.")
    return header, header_len


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _offsets_problem(tensors: dict[str, dict], n_data: int) -> str | None:
    """What is wrong with a safetensors header's tensor entries for a data section of `n_data` bytes:
    each tensor's bytes must match its dtype and shape, and together they must tile the data section
    exactly (no overlap, no gap, nothing past the end of the file)."""
    spans = []
    for name, info in tensors.items():
        shape, offsets, dtype = info["shape"], info["data_offsets"], info["dtype"]
        if dtype not in _ITEMSIZE or not isinstance(shape, list) or not all(map(_is_int, shape)):
            return f"tensor {name} has dtype {dtype!r} and shape {shape!r}"
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            return f"tensor {name} has data_offsets {offsets!r}"
        start, end = offsets
        if end - start != int(np.prod(shape, dtype=object)) * _ITEMSIZE[dtype]:
            return f"tensor {name} spans {end - start} bytes, not the {dtype} {shape} it declares"
        spans.append((start, end, name))
    at = 0
    for start, end, name in sorted(spans):
        if start != at:
            return f"tensor {name} starts at byte {start} of the data, expected {at} (a gap or an overlap)"
        at = end
    if at != n_data:
        where = "past the end of the file" if at > n_data else f"short of the end of the file ({n_data})"
        return f"the tensors end at byte {at} of the data, {where}"
    return None
