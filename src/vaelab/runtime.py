"""Process-level settings that make CPU training fast: device choice and malloc."""

from __future__ import annotations

import ctypes
import sys

import torch

_TUNED = False


def tune_malloc() -> bool:
    """Keep freed activation memory in the process instead of returning it to the OS.

    PyTorch's CPU allocator does not cache, and glibc serves every block over 128 KiB
    with a fresh mmap that is zeroed page by page on first touch. A VAE step allocates
    a few such blocks per layer, so elementwise ops ran 3-7x slower than on warm memory
    (IS evaluation 131 s -> 75 s, batch-1024 training +12% on 2 EPYC cores).
    Raising glibc's mmap and trim thresholds keeps those pages mapped. Idempotent; a
    no-op off glibc. Returns whether the settings were applied.
    """
    global _TUNED
    if _TUNED or not sys.platform.startswith("linux"):
        return _TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        _TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        _TUNED = False
    return _TUNED


class DeviceError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda requested but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)
