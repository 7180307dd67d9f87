"""The CPU features that decide whether int8 kernels are fast, read from the machine.

int8 convolutions are only faster than float32 where the CPU has dot-product instructions for
8-bit integers: VNNI (``avx512_vnni``, or ``avx_vnni`` on AVX2-only cores) and AMX tiles
(``amx_int8``). With AVX2 alone, int8 can be *slower* than float (onnxruntime#17389). So every
latency records which of these the machine it was measured on has.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

#: the flags that matter for int8 speed, in the order they are printed
INT8_FEATURES = ("avx2", "avx_vnni", "avx512_vnni", "amx_int8", "amx_bf16", "amx_tile")


@functools.lru_cache(maxsize=1)
def _flags_and_model() -> tuple[frozenset[str] | None, str]:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags: set[str] = set()
        model = ""
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key == "model name" and not model:
                model = value.strip()
        return frozenset(flags), model or platform.processor() or "unknown CPU"
    if platform.system() == "Darwin":  # sysctl names features in upper case, without "_"
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.features",
                                  "machdep.cpu.leaf7_features", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        words = {w.lower() for line in out[:-1] for w in line.split()}
        flags = {f for f in INT8_FEATURES if f.replace("_", "") in words or f in words}
        return frozenset(flags), (out[-1].strip() if out else platform.processor())
    return None, platform.processor() or "unknown CPU"


def cpu_features() -> tuple[str, ...] | None:
    """The subset of :data:`INT8_FEATURES` this CPU has (``None`` where it cannot be read)."""
    flags, _ = _flags_and_model()
    if flags is None:
        return None
    return tuple(f for f in INT8_FEATURES if f in flags)


def cpu_model() -> str:
    """The CPU's model name, e.g. ``AMD EPYC``."""
    return _flags_and_model()[1]


def features_label(features: tuple[str, ...] | None = None) -> str:
    """``"cpu avx2 avx512_vnni"``, ``"cpu avx2 (no VNNI, no AMX)"`` or ``"cpu features
    unknown"``: what to print next to a latency. Defaults to this machine's features."""
    feats = cpu_features() if features is None else features
    if feats is None:
        return "cpu features unknown"
    missing = [name for name, keys in (("VNNI", ("avx_vnni", "avx512_vnni")),
                                       ("AMX", ("amx_int8",)))
               if not set(keys) & set(feats)]
    text = "cpu " + (" ".join(feats) if feats else "without avx2")
    return text + (f" (no {', no '.join(missing)})" if missing else "")
