"""Device and precision choices, and the measured matmul peak that MFU is reported against."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import time
from dataclasses import asdict, dataclass, fields

import torch

from lmforge.machine import cpu_flags, measured_once

# bf16 must beat fp32 by this much on a matmul before autocast pays: autocast also casts every
# weight and activation around the matmuls, and the non-matmul work (norms, softmax, the
# optimizer) is no faster in bf16 on a CPU. Measured on 2048² (DESIGN.md): AMX 2,862 vs fp32
# ~400 GFLOP/s (7x: bf16); AVX-512-bf16 without AMX 231 (0.6x: fp32); AVX2 < 10 (fp32).
BF16_MIN_SPEEDUP = 1.5


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; use device=cpu")
    return torch.device(name)


def cpu_bf16_instructions() -> bool:
    """AMX or AVX-512 BF16 listed by the CPU. Necessary for fast bf16, not sufficient: without
    AMX (or with oneDNN capped below it by ONEDNN_MAX_CPU_ISA) bf16 matmuls lose to fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "bf16" or "fp32"
    reason: str  # one line for the run's log and summary
    fp32_gflops: float | None = None  # the measurement behind it, when one was made
    bf16_gflops: float | None = None


def choose_precision(precision: str, device: torch.device) -> PrecisionChoice:
    """What a run computes in: the configured precision, or for 'auto' what this machine runs
    fastest (a GPU's bf16 support; on a CPU, a short fp32-vs-bf16 matmul measurement)."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("this GPU does not support bf16; use trainer.precision=fp32")
        return PrecisionChoice(precision, f"trainer.precision={precision} (set in the config)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: this GPU supports bf16")
        return PrecisionChoice("fp32", "auto: this GPU has no bf16")
    return cpu_precision()


def resolve_precision(precision: str, device: torch.device) -> str:
    return choose_precision(precision, device).precision


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """Best-of-`repeats` rate of an n x n matmul on this CPU, in GFLOP/s."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: oneDNN builds its kernel on first use
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


@functools.cache
def cpu_precision() -> PrecisionChoice:
    """'auto' on a CPU. Without bf16 instructions bf16 is emulated (under 10 GFLOP/s): fp32, no
    measurement needed. With them, measure once per machine (about 0.1 s; cached in
    ~/.cache/lmforge/precision.json by CPU, oneDNN ISA cap, torch and threads) and take bf16
    only where its matmuls beat fp32's by BF16_MIN_SPEEDUP."""
    if not cpu_bf16_instructions():
        return PrecisionChoice(
            "fp32", "auto: this CPU has no bf16 instructions (AMX, AVX-512 BF16)"
        )

    def measure() -> dict:
        fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
        pick = "bf16" if bf16 >= BF16_MIN_SPEEDUP * fp32 else "fp32"
        reason = (
            f"auto: measured 1024² matmul bf16 {bf16:,.0f} vs fp32 {fp32:,.0f} GFLOP/s "
            f"(bf16 needs {BF16_MIN_SPEEDUP}x)"
        )
        return asdict(PrecisionChoice(pick, reason, round(fp32, 1), round(bf16, 1)))

    def valid(raw) -> bool:
        return isinstance(raw, dict) and set(raw) == {f.name for f in fields(PrecisionChoice)}

    return PrecisionChoice(**measured_once("precision", measure, valid))


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
    if device_type == "cpu" and n > 512:
        # An emulated dtype (bf16 on an AVX2 CPU) runs a 2048^3 matmul for a minute: its rate
        # at 512 is the answer there, and a fast one is measured at full size.
        small = matmul_peak_flops(device_type, dtype_name, 512)
        if small < 20e9:
            return small
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
    import resource  # Unix only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
