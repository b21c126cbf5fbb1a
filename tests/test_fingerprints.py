"""Fingerprints of the model and CLT a graph was made with: cheap, and the same values as their definition."""

from __future__ import annotations

import torch

from tl_clt.fingerprints import N_SAMPLE, _sample


def _by_definition(t: torch.Tensor, seed: int) -> list[float]:
    """The documented sample: entries at row-major flat positions drawn from `seed` (a flattened copy)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, t.numel(), (N_SAMPLE,), generator=gen)
    return t.reshape(-1)[idx].float().tolist()


def test_the_sample_reads_the_documented_entries_of_any_layout():
    base = torch.randn(300, 70, dtype=torch.float64)
    for t in (base, base.T, base[::2, 5:], torch.randn(4, 5, 6).permute(2, 0, 1), torch.randn(11)):
        for seed in (0, 1):
            assert _sample(t, seed) == _by_definition(t, seed)


def test_the_sample_does_not_copy_a_view():
    """A view whose flattened copy would need 4 TB (TransformerLens' W_U over nn.Linear's layout is a
    transposed view: flattening it copied the whole unembedding for every graph)."""
    column = torch.arange(1000.0)
    huge = column[:, None].expand(1000, 10**9)
    assert _sample(huge, 0) == [float(column[int(i) // 10**9]) for i in _flat_positions(huge, 0)]


def _flat_positions(t: torch.Tensor, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, t.numel(), (N_SAMPLE,), generator=gen).tolist()
