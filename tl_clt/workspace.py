"""Work memory that attribution keeps from one graph to the next.

A graph's work buffers are GBs at Qwen3's sizes: the rows' gradients at the MLP outputs, the active
features' decoder rows laid out per target layer, the edge rows before they are pruned into the adjacency.
Fresh memory costs a page fault per 4 KiB on its first touch, which at these sizes is as slow as the
arithmetic (~2.1 GB of faults, ~2 s, in a 10 s graph of the Qwen3-0.6B shape at 1024 nodes). A
`Workspace` holds those buffers so that the next graph reuses them:

    ws = tl_clt.Workspace()
    graphs = [tl_clt.attribute(model, clt, p, workspace=ws) for p in prompts]
    ws   # Workspace(4 buffers, 2.1 GB); ws.clear() gives the memory back

Without one, every graph gets fresh buffers and frees them when it returns. Nothing in a returned graph
points into a workspace. One graph at a time may use a workspace: a second (another thread) gets
`WorkspaceBusyError` instead of overwriting the first's buffers.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch
from torch import Tensor


class WorkspaceBusyError(RuntimeError):
    """A workspace was handed to a graph while another graph was using it."""


class Workspace:
    """Named, uninitialised work buffers, grown as needed and kept until `clear()`."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
        """Buffer `name` viewed as `shape` (uninitialised: what the last user left). A buffer of another
        dtype or device, or too small, is replaced."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != torch.device(device):
            self._buffers.pop(name, None)  # freed before the new one is allocated
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)

    @contextmanager
    def in_use(self):
        """Held by one graph at a time; a second user gets `WorkspaceBusyError`."""
        if not self._lock.acquire(blocking=False):
            raise WorkspaceBusyError(
                "this Workspace is in use by another graph (another thread?): a workspace serves one graph "
                "at a time. Give each thread its own tl_clt.Workspace()."
            )
        try:
            yield self
        finally:
            self._lock.release()

    @property
    def nbytes(self) -> int:
        """Memory held now."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def bytes_on(self, device) -> int:
        """Memory held now on `device` (what a graph there can reuse)."""
        device = torch.device(device)
        return sum(b.numel() * b.element_size() for b in self._buffers.values() if b.device == device)

    def clear(self) -> None:
        """Give the memory back (the next graph allocates afresh)."""
        with self.in_use():
            self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)

    def __repr__(self) -> str:
        return f"Workspace({len(self._buffers)} buffers, {self.nbytes / 1e9:.2f} GB)"
