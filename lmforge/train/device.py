"""Device and precision choices, and the measured matmul peak that MFU is reported against."""

from __future__ import annotations

import contextlib
import functools
import time

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; use device=cpu")
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16: the CPUs where bf16 matmuls beat fp32 (measured ~6x with AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware runs it fast, else 'fp32'."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("this GPU does not support bf16; use trainer.precision=fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def matmul_peak_flops(
    device_type: str = "cpu", dtype_name: str = "bfloat16", n: int = 2048
) -> float:
    """Measured dense matmul FLOP/s on this device: the denominator of MFU.

    Vendor peaks are rarely reached by any real kernel on a CPU; measuring what torch's
    own matmul achieves makes MFU answer "how much of the achievable matmul rate do we use".
    """
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device_type, dtype=dtype)
    b = torch.randn(n, n, device=device_type, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        if device_type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS after every step.

    glibc serves large blocks (> 32 MiB by default, adaptively) with mmap and unmaps them on
    free, so each training step page-faults its activations back in: measured here, 8-10%
    of a CPU step. Raising the mmap and trim thresholds turns those into reused heap
    memory. Same effect as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the
    environment or LD_PRELOAD=jemalloc; a no-op off glibc. Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return ok and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1
    except (OSError, AttributeError):
        return False


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
