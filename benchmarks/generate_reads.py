"""How often `tl_clt.generate` reads decoder rows from a lazy CLT, and how long 20 tokens take.

A lazy CLT (`lazy_decoder=True`, the default) reads decoder rows from its files on demand; each read
is one `SafetensorsRows.__getitem__` call. Interventions at several layers are steered while 20 tokens
are generated (greedy), on a tiny synthetic Qwen3 (4 layers, d_model 64) and a 256-feature CLT.
Prints one markdown table row per setting. Run from a checkout: `PYTHONPATH=. python
benchmarks/generate_reads.py` (works on older checkouts too: it only uses the public API).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import tl_clt
from tl_clt import synthetic
from tl_clt.clt import SafetensorsRows

N_NEW = 20


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tl_clt_gen_"))
    model_dir = synthetic.make_qwen3_folder(
        root / "model", tokenizer=synthetic.make_tokenizer(), num_hidden_layers=4, initializer_range=0.1
    )
    clt_dir = synthetic.make_random_clt_folder(root / "clt", 4, 64, 256, density=0.1)
    model = tl_clt.load_qwen3(model_dir, device="cpu")
    clt = tl_clt.CrossLayerTranscoder.from_pretrained(clt_dir)
    assert clt.lazy_decoder
    ivs = [
        tl_clt.Intervention(layer, slice(1, None), feature, 2.0)
        for layer, feature in [(0, 3), (1, 5), (2, 7)]
    ]
    reads = [0]
    original = SafetensorsRows.__getitem__

    def counting(self, rows):
        reads[0] += 1
        return original(self, rows)

    SafetensorsRows.__getitem__ = counting
    print(f"| freeze_attention | new tokens | decoder reads | CPU seconds ({N_NEW} tokens, best of 3) |")
    print("|---|---|---|---|")
    try:
        for freeze in (False, True):
            times = []
            for _ in range(3):
                reads[0] = 0
                start = time.process_time()  # CPU time: the machine is shared, wall time is noise
                out = tl_clt.generate(
                    model,
                    clt,
                    "Fact: the",
                    ivs,
                    max_new_tokens=N_NEW,
                    stop_at_eos=False,
                    freeze_attention=freeze,
                )
                times.append(time.process_time() - start)
            assert isinstance(out, str)
            print(f"| {freeze} | {N_NEW} | {reads[0]} | {min(times):.3f} |")
    finally:
        SafetensorsRows.__getitem__ = original


if __name__ == "__main__":
    main()
