"""Scoring pass 1: what the pipeline learns about each document independently of the others.

A batch of raw texts is normalised, exact-hashed, run through the quality rules and (for those
that pass) MinHashed, in worker processes. The workers are the top-level ``_init_worker`` and
``_score_batch`` below, so a spawned process can import them.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import time
from collections.abc import Iterator

import numpy as np

from lmforge.data.curate.config import CurateConfig
from lmforge.data.curate.dedup import MinHasher, exact_key
from lmforge.data.curate.normalize import normalize_text
from lmforge.data.curate.quality import RULES, quality_failures

# This process's config and MinHasher: set by _init_worker in each worker (or in the parent
# when scoring runs in-process), then read by every _score_batch call.
_STATE: dict = {}


def _init_worker(cfg_data: dict) -> None:
    cfg = CurateConfig.model_validate(cfg_data)
    nd = cfg.near_dedup
    _STATE.update(cfg=cfg, hasher=MinHasher(nd.num_perm, nd.ngram, nd.seed))


def _score_batch(texts: list[str]) -> dict:
    """Everything about a batch of raw texts that does not depend on other batches."""
    cfg: CurateConfig = _STATE["cfg"]
    seconds = dict.fromkeys(("normalize", "exact_hash", "quality", "minhash"), 0.0)
    t = time.perf_counter()
    normed = [normalize_text(x, cfg.normalize) for x in texts]
    seconds["normalize"] = time.perf_counter() - t

    t = time.perf_counter()
    keys = [exact_key(x) for x in normed]
    seconds["exact_hash"] = time.perf_counter() - t

    t = time.perf_counter()
    failures = [quality_failures(x, cfg.quality) for x in normed]
    failing = np.array([[name in f for name in RULES] for f in failures], dtype=bool)
    first = [next(iter(f.items())) if f else None for f in failures]
    seconds["quality"] = time.perf_counter() - t

    t = time.perf_counter()
    sigs, has_shingles = None, np.zeros(len(texts), dtype=bool)
    passing = [k for k, f in enumerate(failures) if not f]
    if cfg.near_dedup.enabled and passing:
        sig, has = _STATE["hasher"].signatures([normed[k] for k in passing])
        sigs = sig[has]
        has_shingles[np.array(passing)[has]] = True
    seconds["minhash"] = time.perf_counter() - t
    return {
        "chars": [len(x) for x in normed],
        "changed": [a != b for a, b in zip(texts, normed)],
        "keys": keys,
        "failing": failing.reshape(len(texts), len(RULES)),  # (docs, rules)
        "first_failure": first,  # (rule, reason) or None
        "has_shingles": has_shingles,
        "signatures": sigs,  # (docs with has_shingles, num_perm)
        "seconds": seconds,
    }


def batched(docs: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def scored(batches: Iterator[list[tuple]], workers: int, cfg_data: dict):
    """(batch, score) in input order. A pool of processes only when there are two batches or
    more, and at most 2 batches per worker in flight (Pool.imap would read the whole input
    ahead into its queue)."""
    batches = iter(batches)
    head = [b for b in (next(batches, None), next(batches, None)) if b is not None]
    if workers == 1 or len(head) < 2:
        _init_worker(cfg_data)
        for batch in itertools.chain(head, batches):
            yield batch, _score_batch([d[1] for d in batch])
        return
    # spawn, not fork: the parent holds pyarrow's threads, which fork would not copy.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg_data,)) as pool:
        pending: collections.deque = collections.deque()
        for batch in itertools.chain(head, batches):
            pending.append((batch, pool.apply_async(_score_batch, ([d[1] for d in batch],))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
