"""What every latency figure records: the runtime, and a fixed intra-op thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``n``, then restore it."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def threads_label(n: int) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return f"{n} thread{'s' if n != 1 else ''}"


def torch_label(kind: str, threads: int, dtype: torch.dtype = torch.float32,
                device: str = "cpu") -> str:
    """``"torch 2.14.1 eager, cpu, float32, 1 thread"`` (``kind``: eager or TorchScript)."""
    version = torch.__version__.split("+")[0]
    return (f"torch {version} {kind}, {device}, {str(dtype).removeprefix('torch.')}, "
            f"{threads_label(threads)}")
