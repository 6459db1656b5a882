"""One speed protocol for every classifier, so ratios between runs mean something.

- Tokenization (or vectorization) is timed apart from the model: ``prepare`` turns texts into
  model inputs, ``run`` is the model alone.
- Latency: batch 1, ``n_latency`` real examples in a fixed order, after ``warmup`` untimed
  calls; median and 95th percentile in milliseconds.
- Throughput: batches of ``batch_size`` (default 32) over the same examples, examples/second of
  ``run`` alone.
- Peak memory: max RSS of the process on the CPU (it includes everything loaded so far, so
  compare runs measured in fresh processes), max allocated on CUDA.
- Size on disk: the files that hold the model (``dir_size_mb``).

Threads are whatever torch is set to (``torch.get_num_threads()``, reported).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lmforge.train.device import peak_memory_mb


def _percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1e3, q))


def measure_speed(
    prepare: Callable[[list[str]], object],
    run: Callable[[object], object],
    texts: Sequence[str],
    n_latency: int = 100,
    warmup: int = 10,
    batch_size: int = 32,
    throughput_batches: int = 8,
    device: str = "cpu",
) -> dict:
    texts = list(texts)
    if not texts:
        return {}
    pool = (texts * (1 + (n_latency + warmup) // len(texts)))[: n_latency + warmup]
    # Tokenization alone, per example.
    tok_times = []
    for t in pool[warmup:]:
        t0 = time.perf_counter()
        prepare([t])
        tok_times.append(time.perf_counter() - t0)
    singles = [prepare([t]) for t in pool]
    with torch.inference_mode():
        for x in singles[:warmup]:
            run(x)
        lat = []
        for x in singles[warmup:]:
            _sync(device)
            t0 = time.perf_counter()
            run(x)
            _sync(device)
            lat.append(time.perf_counter() - t0)
        n_tp = batch_size * throughput_batches
        tp_texts = (texts * (1 + n_tp // len(texts)))[:n_tp]
        batches = [prepare(tp_texts[i : i + batch_size]) for i in range(0, n_tp, batch_size)]
        run(batches[0])
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            run(b)
        _sync(device)
        tp = n_tp / (time.perf_counter() - t0)
    return {
        "latency_ms_p50": _percentile_ms(lat, 50),
        "latency_ms_p95": _percentile_ms(lat, 95),
        "tokenize_ms_p50": _percentile_ms(tok_times, 50),
        "throughput_per_s": float(tp),
        "throughput_batch_size": batch_size,
        "peak_memory_mb": peak_memory_mb(torch.device(device)),
        "threads": torch.get_num_threads(),
        "latency_examples": n_latency,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dir_size_mb(
    path: str | os.PathLike, patterns: Sequence[str] = ("*.safetensors", "*.json")
) -> float:
    """Size on disk of the files that hold a model (weights and their configs)."""
    p = Path(path)
    files = {f for pat in patterns for f in p.glob(pat)}
    return sum(f.stat().st_size for f in files) / 2**20
