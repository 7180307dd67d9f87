"""TorchScript artifacts: the integer-weight model traced, saved without debug records."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


def _clear_caches(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule) and hasattr(m, "cache"):
            m.cache = None


def torchscript_bytes(model: nn.Module, example: Tensor) -> bytes:
    """The ``model.torchscript.pt`` of ``model`` (from
    :func:`~searchcomp.deploy.integer.integer_model` with ``cache=True``), serialized in
    memory: traced on ``example`` and saved without the float weights the trace run cached,
    nor debug records."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice, tracer warnings
        traced = torch.jit.trace(model, (example,), check_trace=False)
        _clear_caches(traced)
        _clear_caches(model)
        torch.jit.save(traced, buf)
    return _strip_debug_info(buf.getvalue())


def save_torchscript(model: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> None:
    """Write :func:`torchscript_bytes` to ``path``."""
    Path(path).write_bytes(torchscript_bytes(model, example))


def _strip_debug_info(data: bytes) -> bytes:
    """Drop the ``*.debug_pkl`` records (source ranges for TorchScript error messages) from a
    saved module: about 1 KiB per layer, which for a small model is several percent of the
    file. ``torch.jit.load`` reads the archive without them."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith(".debug_pkl"):
                zout.writestr(item, zin.read(item.filename), compress_type=item.compress_type)
    return out.getvalue()


def load_torchscript(path: str | os.PathLike[str]) -> nn.Module:
    """A saved TorchScript module, on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


