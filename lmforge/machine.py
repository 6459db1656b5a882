"""This machine: its CPU flags, a key for what decides its kernels' speed, and a cache of the
one-off measurements made on it (precision, the int8 kernel), so a process measures nothing
that an earlier one on the same machine already did."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "lmforge" / "precision.json"


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it ("AMD EPYC ..."), else what platform knows."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    return model


def machine_key() -> str:
    """What decides a kernel's speed here: the CPU, its AVX-512/AMX/VNNI flags, oneDNN's ISA
    cap, torch and the threads."""
    parts = [
        cpu_model(),
        " ".join(sorted(f for f in cpu_flags() if any(k in f for k in ("avx512", "amx", "vnni")))),
        os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        torch.__version__,
        str(torch.get_num_threads()),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def measured_once(name: str, measure: Callable[[], Any], valid: Callable[[Any], bool]) -> Any:
    """The JSON value ``measure()`` gave on this machine, read from the cache when an earlier
    process stored one that is ``valid``, else measured now and stored (atomically; a damaged
    file or a read-only home only costs a new measurement)."""
    key, path = f"{name}:{machine_key()}", cache_path()
    cached: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(path.read_text())
    if not isinstance(cached, dict):
        cached = {}
    if key in cached and valid(cached[key]):
        return cached[key]
    value = measure()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**cached, key: value}, indent=1))
        os.replace(tmp, path)
    return value


def available_memory_mb() -> float | None:
    """Memory a new allocation can have now: the kernel's MemAvailable, capped by the cgroup's
    limit (a container's `--memory`, a Slurm job's allocation) less its usage. None where
    neither can be read (not Linux)."""
    figures = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
        figures.append(int(line.split()[1]) / 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            figures.append((int(limit) - used) / 2**20)
    return min(figures) if figures else None
