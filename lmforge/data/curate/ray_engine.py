"""The curation pipeline on Ray Data: ``lmforge data curate --engine ray``.

The same steps as the local engine (``run``), calling the same functions per document and per
batch -- ``read.read_file``, ``score._score_batch`` (normalisation, exact hash, quality rules,
MinHash) -- with what crosses documents done by Ray's shuffles instead of one process's memory:

1. **read + score** (``map_batches``): one task reads a file; batches of ``batch_docs``
   documents are scored where they are. A document's id is its file's index << 40 | its row,
   so input order survives any number of workers and any block size. The text stays behind;
   what travels on is a few numbers, the 8-byte exact key and the signature.
2. **exact dedup** (a hash shuffle on the key): in each key the lowest id not skipped for
   length is the first copy; the others are duplicates.
3. **near dedup**: every candidate's b bands become b bucket rows (band number + the band's
   values, no signature); a shuffle on the bucket brings candidates together; a bucket makes
   pairs (all pairs up to 64 members, else each with its first); a hash aggregate makes them
   unique; two hash joins bring each pair its two signatures, and the pair is kept if its
   estimated Jaccard reaches the threshold. The connected components of the kept pairs come
   from alternating large-star and small-star rounds (Kiveris et al., "Connected Components in
   MapReduce and Beyond", SoCC 2014), each a shuffle on a node, until the graph is a forest of
   stars. Nodes are ordered longest first, then by id, so each star's centre is the document
   the local engine keeps: no all-pairs, and nothing per document on the driver.
4. **write** (a shuffle on the file): each file's task reads it again and writes its kept
   documents, normalised, to ``corpus-FFFFF-PPP.parquet`` (file F, part P of ``shard_docs``):
   the output's name order is the input order.

The driver holds only what is small: the file list, a per-(source, status, rules) table for
the report, the counts of cluster sizes and the handful of examples. ``--address`` reaches a
running cluster (``ray start --head``); without it a local Ray with ``workers`` CPUs runs here.
On a cluster, every node needs lmforge installed and the input and output on a file system
they all see (NFS, a mounted bucket).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from pathlib import Path

import numpy as np

from lmforge.data.curate import score as scoring
from lmforge.data.curate.config import CurateConfig, InputConfig
from lmforge.data.curate.dedup import estimated_jaccard, optimal_bands
from lmforge.data.curate.normalize import normalize_text
from lmforge.data.curate.output import CorpusWriter, write_stats
from lmforge.data.curate.quality import RULES, quality_failures
from lmforge.data.curate.read import read_file
from lmforge.data.curate.report import EXACT, KEPT, NEAR, QUALITY, STEPS, TOO_LONG, truncate
from lmforge.data.ray_session import ray_session
from lmforge.data.sources import list_files
from lmforge.errors import DataError
from lmforge.utils import staging_dir

ROW_BITS = 40  # doc_id = file << 40 | row: 2^40 rows per file, 2^23 files
ERROR_ROW = (1 << ROW_BITS) - 1  # the row that carries a file's read error, if any
SECONDS = ("normalize", "exact_hash", "quality", "minhash")
MAX_ROUNDS = 64  # large/small-star converges in O(log^2 n) rounds; 64 means a bug


def curate(inputs: Path, out: Path, cfg: CurateConfig, workers: int, address, progress: bool):
    """``run.curate`` on Ray Data: (summarize's keyword arguments, the removed examples)."""
    with ray_session(address, workers, progress) as ray:
        return _pipeline(ray, inputs, out, cfg, workers)


# --- the pipeline ------------------------------------------------------------------------


def _pipeline(ray, inputs: Path, out: Path, cfg: CurateConfig, workers: int):
    nd = cfg.near_dedup
    files = [str(f) for f in list_files(inputs)]
    cfg_data = cfg.model_dump(mode="json")
    t0 = time.perf_counter()

    # 1. read + score: one block per file to start with; Ray splits large outputs itself.
    listing = ray.data.from_items(
        [{"file": k, "path": p} for k, p in enumerate(files)], override_num_blocks=len(files)
    )
    docs = listing.map_batches(
        _read_files, batch_size=1, fn_kwargs={"cfg_input": cfg_data["input"]}
    )
    scored = docs.map_batches(
        _score,
        batch_size=cfg.batch_docs,
        fn_kwargs={"cfg_data": cfg_data},
        compute=ray.data.TaskPoolStrategy(size=workers),
    ).materialize()
    errors = _where(scored, "note", ["error"]).take_all()
    skipped_files = [json.loads(r["error"]) for r in sorted(errors, key=lambda r: r["doc_id"])]
    scored = _where(scored, "note", ["", "truncated", "skipped"])
    n_docs = scored.count()
    if n_docs == 0:
        where = f"; unreadable files skipped: {skipped_files}" if skipped_files else ""
        raise DataError(f"{inputs} holds no documents{where}")
    cpus = int(ray.cluster_resources().get("CPU", 1))

    # 2. exact dedup: a shuffle on the key.
    if cfg.exact_dedup.enabled:
        parts = _partitions(n_docs * (4 * nd.num_perm + 150), cpus)
        statused = _by_partition(scored, "key", parts, _exact_status)
    else:
        statused = scored.map_batches(_status_without_exact, batch_format="numpy")
    statused = statused.materialize()
    table = _report_table(statused)
    seconds = {"score": time.perf_counter() - t0}

    # 3. near dedup over the documents still kept that have shingles.
    t_near = time.perf_counter()
    bands, rows = optimal_bands(
        nd.threshold, nd.num_perm, nd.false_positive_weight, nd.false_negative_weight
    )
    near = {"bands": bands, "rows": rows, "candidates": 0, "candidate_pairs": 0}
    near["verified_pairs"], near["cluster_sizes"] = 0, {}
    stars, first_clusters = None, []
    candidates = _where(statused, "status", [KEPT]).map_batches(_with_signature)
    n_cand = candidates.count() if nd.enabled else 0
    if n_cand > 1:
        band_rows = candidates.map_batches(_band_rows, fn_kwargs={"bands": bands, "rows": rows})
        parts = _partitions(n_cand * bands * (4 * rows + 30), cpus)
        pairs = (
            _by_partition(band_rows, "bucket_hash", parts, _bucket_pairs)
            .groupby(["i", "ci", "j", "cj"])
            .count()  # unique pairs: a pair that shares several bands is one pair
            .select_columns(["i", "ci", "j", "cj"])
            .materialize()
        )
        n_pairs = pairs.count()
        edges = pairs
        if nd.verify and n_pairs:
            sigs = candidates.map_batches(_signature_rows, batch_format="numpy")
            parts = _partitions(n_cand * (4 * nd.num_perm + 60) + n_pairs * 600, cpus)
            edges = _verify(sigs, pairs, parts, nd.threshold).materialize()
        n_edges = edges.count() if nd.verify else n_pairs
        near.update(candidates=n_cand, candidate_pairs=n_pairs)
        near["verified_pairs"] = n_edges if nd.verify else None
        if n_edges:
            edges = edges.map_batches(_as_edges, batch_format="numpy")
            stars = _components(edges, _partitions(n_edges * 64, cpus))
            sizes = stars.groupby("v").count().map_batches(_cluster_size, batch_format="numpy")
            counts = sizes.groupby("size").count().take_all()
            near["cluster_sizes"] = {
                int(r["size"]): int(r["count()"]) for r in sorted(counts, key=lambda r: r["size"])
            }
            # The examples: the first clusters by their first removed document.
            first = stars.groupby("v").aggregate(ray.data.aggregate.Min("u", alias_name="u"))
            first_clusters = [(r["v"], r["u"]) for r in first.sort("u").take(cfg.examples)]
    seconds["near_dedup"] = time.perf_counter() - t_near

    # 4. write: the kept documents of each file, by the file's own task.
    t_write = time.perf_counter()
    kept_stats, near_removed = _write(statused, stars, inputs, files, out, cfg)
    seconds["write"] = time.perf_counter() - t_write

    examples = _examples(listing, statused, cfg, first_clusters)
    parts = _summary_arrays(table, near_removed)
    parts.update(
        near=near,
        skipped_files=skipped_files,
        seconds=seconds,
        kept_stats=kept_stats,
    )
    return parts, examples


def _partitions(total_bytes: int, cpus: int) -> int:
    """How many partitions a shuffle makes: 2 per CPU at least, and none above 64 MB."""
    return max(2 * cpus, -(-int(total_bytes) // (64 << 20)))


def _by_partition(ds, column: str, parts: int, fn, fn_kwargs: dict | None = None):
    """A hash shuffle on ``column`` (an int64), then ``fn`` on each partition whole: every row
    with one value of ``column`` is in the same call, and ``fn`` works on arrays, not on one
    group at a time (Ray's map_groups on the key itself calls Python once per key: minutes
    for a few hundred thousand documents)."""
    hashed = ds.map_batches(
        _add_partition, batch_format="numpy", fn_kwargs={"column": column, "parts": parts}
    )
    return hashed.groupby("partition").map_groups(fn, batch_format="numpy", fn_kwargs=fn_kwargs)


def _add_partition(batch: dict, column: str, parts: int) -> dict:
    mixed = batch[column].astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return {**batch, "partition": ((mixed >> np.uint64(33)) % np.uint64(parts)).astype(np.int64)}


def _where(ds, column: str, values: list):
    """The rows whose ``column`` is one of ``values`` (vectorised, no Python per row)."""
    return ds.map_batches(_keep_rows, fn_kwargs={"column": column, "values": values})


def _with_signature(batch: dict) -> dict:
    keep = np.array([len(x) > 0 for x in batch["sig"]], dtype=bool)
    return {k: v[keep] for k, v in batch.items()}


def _keep_rows(batch: dict, column: str, values: list) -> dict:
    keep = np.isin(batch[column], values)
    return {k: v[keep] for k, v in batch.items()}


# --- 1. read and score -------------------------------------------------------------------


def _read_files(batch: dict, cfg_input: dict):
    """Every document of the listed files, in row order, in chunks (Ray splits blocks by size
    between operators; chunks keep one task's memory bounded)."""
    _maybe_die()
    cfg = InputConfig.model_validate(cfg_input)
    for file, path in zip(batch["file"], batch["path"]):
        skipped: list[dict] = []
        chunk: dict[str, list] = collections.defaultdict(list)
        row = -1
        for row, (source, text, total, note) in enumerate(read_file(Path(path), cfg, skipped)):
            chunk["doc_id"].append((int(file) << ROW_BITS) | row)
            chunk["source"].append(source)
            chunk["text"].append(text)
            chunk["chars_in"].append(total)
            chunk["note"].append(note)
            chunk["error"].append("")
            if len(chunk["doc_id"]) == 4096:
                yield _columns(chunk)
                chunk.clear()
        for s in skipped:  # an unreadable file (input.on_error=skip): one row says why
            for key, value in (("doc_id", (int(file) << ROW_BITS) | ERROR_ROW), ("source", ""),
                               ("text", ""), ("chars_in", 0), ("note", "error"),
                               ("error", json.dumps(s))):  # fmt: skip
                chunk[key].append(value)
        if chunk:
            yield _columns(chunk)


def _columns(chunk: dict) -> dict:
    return {
        "doc_id": np.array(chunk["doc_id"], dtype=np.int64),
        "source": np.array(chunk["source"], dtype=object),
        "text": np.array(chunk["text"], dtype=object),
        "chars_in": np.array(chunk["chars_in"], dtype=np.int64),
        "note": np.array(chunk["note"], dtype=object),
        "error": np.array(chunk["error"], dtype=object),
    }


def _maybe_die() -> None:
    """Fault injection for tests/test_curate_ray.py: when LMFORGE_RAY_FAULT_DIR (set before
    Ray starts, so every worker has it) holds a file ``kill-once``, the first task to take it
    kills its own worker process, as an OOM killer or a lost node would."""
    folder = os.environ.get("LMFORGE_RAY_FAULT_DIR")
    if folder:
        try:
            os.unlink(os.path.join(folder, "kill-once"))
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _score(batch: dict, cfg_data: dict) -> dict:
    """``score._score_batch`` on a batch, as columns; a file's error row passes through."""
    if scoring._STATE.get("cfg_data") != cfg_data:  # once per worker process
        scoring._init_worker(cfg_data)
        scoring._STATE["cfg_data"] = cfg_data
    n = len(batch["doc_id"])
    ok = np.flatnonzero(batch["note"] != "error")
    out = {k: batch[k] for k in ("doc_id", "source", "chars_in", "note", "error")}
    out.update(
        chars_norm=np.zeros(n, np.int64),
        key=np.zeros(n, np.int64),
        first_failure=np.full(n, -1, np.int8),
        failing=np.zeros(n, np.int64),
        changed=np.zeros(n, np.int64),
        truncated=(batch["note"] == "truncated").astype(np.int64),
        sig=np.array([b""] * n, dtype=object),
    )
    for name in SECONDS:
        out[f"seconds_{name}"] = np.zeros(n)
    if not len(ok):
        return out
    s = scoring._score_batch(list(batch["text"][ok]))
    out["chars_norm"][ok] = s["chars"]
    out["key"][ok] = np.array(s["keys"], dtype=np.uint64).view(np.int64)
    out["first_failure"][ok] = [
        -1 if f is None else list(RULES).index(f[0]) for f in s["first_failure"]
    ]
    out["failing"][ok] = s["failing"].astype(np.int64) @ (
        1 << np.arange(len(RULES), dtype=np.int64)
    )
    out["changed"][ok] = s["changed"]
    has = ok[s["has_shingles"]]
    for k, row in zip(has, s["signatures"] if s["signatures"] is not None else ()):
        out["sig"][k] = row.tobytes()
    for name in SECONDS:  # the batch's seconds, on its first row
        out[f"seconds_{name}"][ok[0]] = s["seconds"][name]
    return out


# --- 2. exact dedup and status -----------------------------------------------------------


def _status(batch: dict, duplicate: np.ndarray) -> dict:
    """The step that removed each document (or KEPT), in pipeline order."""
    status = np.full(len(batch["doc_id"]), KEPT, dtype=np.int8)
    status[batch["first_failure"] >= 0] = QUALITY
    status[duplicate] = EXACT
    status[batch["note"] == "skipped"] = TOO_LONG
    return {**batch, "status": status}


def _exact_status(part: dict) -> dict:
    """A partition of the key shuffle: in each key, the first id not skipped for length is the
    original, the later ones duplicates."""
    batch = {k: v for k, v in part.items() if k != "partition"}
    ids, keys = batch["doc_id"], batch["key"]
    live = np.flatnonzero(batch["note"] != "skipped")
    order = live[np.lexsort((ids[live], keys[live]))]
    unique_keys, first = np.unique(keys[order], return_index=True)
    duplicate = np.zeros(len(ids), dtype=bool)
    duplicate[live] = ids[live] != ids[order][first][np.searchsorted(unique_keys, keys[live])]
    return _status(batch, duplicate)


def _status_without_exact(batch: dict) -> dict:
    return _status(batch, np.zeros(len(batch["doc_id"]), dtype=bool))


def _report_table(statused):
    """Documents, characters and the batch seconds per (source, status, rules): the report's
    numbers, a small table whatever the corpus size."""
    from ray.data.aggregate import Count, Min, Sum

    sums = ["chars_in", "chars_norm", "changed", "truncated"] + [f"seconds_{s}" for s in SECONDS]
    keys = ["source", "status", "first_failure", "failing"]
    aggs = [Count(alias_name="documents"), Min("doc_id", alias_name="first_doc")]
    aggs += [Sum(c, alias_name=c) for c in sums]
    return statused.groupby(keys).aggregate(*aggs).take_all()


# --- 3. near dedup -----------------------------------------------------------------------


def _band_rows(batch: dict, bands: int, rows: int) -> dict:
    """One row per (document, band): the bucket is the band's number and its bytes, compared
    exactly (no hash collisions), as the local engine compares them. No signature: the few
    pairs found fetch theirs afterwards (9 bands x 512 bytes per document would be most of
    the shuffle)."""
    sig = np.frombuffer(b"".join(batch["sig"]), dtype=np.uint32).reshape(len(batch["sig"]), -1)
    n = len(sig)
    # (bands * n, 1 + rows) uint32: the band's number, then its values (a tensor column)
    values = sig[:, : bands * rows].reshape(n, bands, rows).transpose(1, 0, 2)
    number = np.broadcast_to(np.arange(bands, dtype=np.uint32)[:, None, None], (bands, n, 1))
    buckets = np.concatenate([number, values], axis=2).reshape(bands * n, rows + 1)
    # Which partition a bucket goes to: its band number and first value (uniform: a MinHash).
    first_values = sig[:, 0 : bands * rows : rows].T.astype(np.int64)  # (bands, n)
    bucket_hash = (first_values + (np.arange(bands, dtype=np.int64)[:, None] << 32)).ravel()
    return {
        "bucket": buckets,
        "bucket_hash": bucket_hash,
        "doc_id": np.tile(batch["doc_id"], bands),
        "chars": np.tile(batch["chars_norm"], bands),
    }


def _bucket_pairs(part: dict) -> dict:
    """A partition of the bucket shuffle: each bucket's candidate pairs, i < j by id; all pairs
    up to 64 members, else each with the first, as ``dedup.candidate_pairs``."""
    from lmforge.data.curate.dedup import _ALL_PAIRS_UP_TO

    ids, chars = part["doc_id"], part["chars"]
    buckets = np.ascontiguousarray(part["bucket"], dtype=np.uint32)
    keys = buckets.view(np.dtype((np.void, 4 * buckets.shape[1]))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    members = np.flatnonzero(counts[inverse] > 1)  # most buckets hold one document
    members = members[np.lexsort((ids[members], inverse[members]))]
    found = []
    for group in np.split(members, np.flatnonzero(np.diff(inverse[members])) + 1):
        k = len(group)
        if k < 2:
            continue
        if k <= _ALL_PAIRS_UP_TO:
            a, b = np.triu_indices(k, 1)
        else:
            a, b = np.zeros(k - 1, dtype=np.int64), np.arange(1, k)
        found.append(np.stack([group[a], group[b]]))
    a, b = np.concatenate(found, axis=1) if found else np.zeros((2, 0), dtype=np.int64)
    return {"i": ids[a], "ci": chars[a], "j": ids[b], "cj": chars[b]}


def _signature_rows(batch: dict) -> dict:
    n = len(batch["doc_id"])
    empty = np.array([b""] * n, dtype=object)
    return {"key": batch["doc_id"], "i": np.full(n, -1), "ci": np.zeros(n, np.int64),
            "j": np.full(n, -1), "cj": np.zeros(n, np.int64), "sig": batch["sig"],
            "sig_i": empty}  # fmt: skip


def _verify(sigs, pairs, parts: int, threshold: float):
    """The pairs whose estimated Jaccard reaches the threshold: a hash join on i brings each
    pair its first signature, a second on j its other, and the second partition compares."""

    def keyed(column):
        def rows(batch: dict) -> dict:
            n = len(batch["i"])
            sig_i = batch.get("sig_i", np.array([b""] * n, dtype=object))
            return {"key": batch[column], "i": batch["i"], "ci": batch["ci"], "j": batch["j"],
                    "cj": batch["cj"], "sig": np.array([b""] * n, dtype=object), "sig_i": sig_i}  # fmt: skip

        return rows

    with_i = _by_partition(
        sigs.union(pairs.map_batches(keyed("i"), batch_format="numpy")), "key", parts, _attach
    )
    both = sigs.union(with_i.map_batches(keyed("j"), batch_format="numpy"))
    return _by_partition(both, "key", parts, _attach, {"threshold": threshold})


def _attach(part: dict, threshold: float | None = None) -> dict:
    """A partition of a join: its signature rows and its pair rows, keyed by one end of each
    pair. Without a threshold, each pair takes that end's signature (as sig_i); with one, it
    is compared with the other end's, and the pair kept if the estimate reaches it."""
    is_sig = part["i"] < 0
    keys, sigs = part["key"][is_sig], part["sig"][is_sig]
    order = np.argsort(keys)
    pair = np.flatnonzero(~is_sig)
    mine = sigs[order][np.searchsorted(keys[order], part["key"][pair])]
    out = {k: part[k][pair] for k in ("i", "ci", "j", "cj")}
    if threshold is None:
        return {**out, "sig_i": mine}
    if not len(pair):
        return out
    a = np.frombuffer(b"".join(part["sig_i"][pair]), dtype=np.uint32).reshape(len(pair), -1)
    b = np.frombuffer(b"".join(mine), dtype=np.uint32).reshape(len(pair), -1)
    keep = estimated_jaccard(a, b) >= threshold - 1e-9
    return {k: v[keep] for k, v in out.items()}


def _as_edges(batch: dict) -> dict:
    return {"u": batch["i"], "cu": batch["ci"], "v": batch["j"], "cv": batch["cj"]}


def _before(c1, id1, c2, id2):
    """Node 1 ranks before node 2: longer, then the lower id (the one a cluster keeps)."""
    return (c1 > c2) | ((c1 == c2) & (id1 < id2))


def _components(edges, parts: int):
    """Connected components by alternating large-star and small-star until every component is
    a star whose centre ranks first in it; returns its edges (u, cu) -> (v, cv): each removed
    document u with the one kept in its cluster, v."""
    for _ in range(MAX_ROUNDS):
        both = edges.map_batches(_both_ways, batch_format="numpy")
        large = _by_partition(both, "u", parts, _large_star)
        oriented = large.map_batches(_larger_first, batch_format="numpy")
        edges = _by_partition(oriented, "u", parts, _small_star).materialize()
        roles = edges.map_batches(_roles, batch_format="numpy")
        if _by_partition(roles, "node", parts, _not_a_star).count() == 0:
            return edges
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")


def _both_ways(batch: dict) -> dict:
    return {
        "u": np.concatenate([batch["u"], batch["v"]]),
        "cu": np.concatenate([batch["cu"], batch["cv"]]),
        "v": np.concatenate([batch["v"], batch["u"]]),
        "cv": np.concatenate([batch["cv"], batch["cu"]]),
    }


def _neighbourhoods(part: dict):
    """The partition's edges without repeats, sorted by u then by rank of v (best first); the
    nodes u, and for each its first row (its best neighbour) and each row's u's position."""
    u, cu, v, cv = (part[k] for k in ("u", "cu", "v", "cv"))
    order = np.lexsort((v, -cv, u))
    u, cu, v, cv = u[order], cu[order], v[order], cv[order]
    fresh = np.ones(len(u), dtype=bool)
    fresh[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1])
    u, cu, v, cv = u[fresh], cu[fresh], v[fresh], cv[fresh]
    nodes, first = np.unique(u, return_index=True)
    return u, cu, v, cv, nodes, first, np.searchsorted(nodes, u)


def _large_star(part: dict) -> dict:
    """Each node u links every neighbour ranked after it to the first of its neighbourhood,
    u included."""
    u, cu, v, cv, nodes, first, at = _neighbourhoods(part)
    self_first = _before(cu[first], nodes, cv[first], v[first])
    m = np.where(self_first, nodes, v[first])[at]
    cm = np.where(self_first, cu[first], cv[first])[at]
    after = _before(cu, u, cv, v)
    return {"u": v[after], "cu": cv[after], "v": m[after], "cv": cm[after]}


def _larger_first(batch: dict) -> dict:
    """Orient each edge from the node ranked after to the node ranked before."""
    swap = _before(batch["cu"], batch["u"], batch["cv"], batch["v"])
    out = {}
    for a, b in (("u", "v"), ("cu", "cv")):
        out[a] = np.where(swap, batch[b], batch[a])
        out[b] = np.where(swap, batch[a], batch[b])
    return out


def _small_star(part: dict) -> dict:
    """Each node u (its edges lead to nodes ranked before it) and those neighbours all link to
    the first of the neighbours."""
    u, cu, v, cv, nodes, first, at = _neighbourhoods(part)
    m, cm = v[first][at], cv[first][at]
    rest = v != m
    return {
        "u": np.concatenate([v[rest], nodes]),
        "cu": np.concatenate([cv[rest], cu[first]]),
        "v": np.concatenate([m[rest], v[first]]),
        "cv": np.concatenate([cm[rest], cv[first]]),
    }


def _roles(batch: dict) -> dict:
    n = len(batch["u"])
    return {
        "node": np.concatenate([batch["u"], batch["v"]]),
        "leaf_of": np.concatenate([batch["v"], np.full(n, -1)]),
    }


def _not_a_star(part: dict) -> dict:
    """The nodes that are both a leaf and a centre, or a leaf of two centres."""
    pairs = np.unique(np.stack([part["node"], part["leaf_of"]], axis=1), axis=0)
    nodes, at = np.unique(pairs[:, 0], return_inverse=True)
    at = at.ravel()
    centres = np.bincount(at, weights=pairs[:, 1] >= 0, minlength=len(nodes))
    is_centre = np.bincount(at, weights=pairs[:, 1] < 0, minlength=len(nodes)) > 0
    return {"node": nodes[(centres > 1) | ((centres > 0) & is_centre)]}


def _cluster_size(batch: dict) -> dict:
    return {"size": batch["count()"] + 1}


# --- 4. write ----------------------------------------------------------------------------


def _write(statused, stars, inputs: Path, files: list[str], out: Path, cfg: CurateConfig):
    """Each file's kept documents, by a task per file, into a staging directory renamed over
    ``out`` at the end. Returns the output's per-source stats and, per source, the documents
    near dedup removed (count, characters in, characters after normalisation)."""
    kept = statused.map_batches(_kept_rows, batch_format="numpy")
    if stars is not None:  # a cluster's removed members, marked
        kept = kept.union(stars.map_batches(_near_rows, batch_format="numpy"))
    per_source: dict[str, dict] = {}
    near_removed: dict[str, np.ndarray] = collections.defaultdict(lambda: np.zeros(3, np.int64))
    with staging_dir(out) as tmp:
        written = (
            kept.groupby("file")
            .map_groups(
                _write_file,
                batch_format="numpy",
                fn_kwargs={
                    "files": files,
                    "out": str(tmp),
                    "cfg_data": cfg.model_dump(mode="json"),
                },
            )
            .take_all()
        )
        n_shards = 0
        for r in sorted(written, key=lambda r: r["file"]):
            n_shards += int(r["shards"])
            for source, s in json.loads(r["kept"]).items():
                mine = per_source.setdefault(source, {"documents": 0, "characters": 0, "words": 0})
                for key in mine:
                    mine[key] += s[key]
            for source, counts in json.loads(r["near"]).items():
                near_removed[source] += counts
        write_stats(tmp, per_source, n_shards, inputs, cfg)
    return per_source, dict(near_removed)


def _kept_rows(batch: dict) -> dict:
    keep = batch["status"] == KEPT
    return {
        "file": batch["doc_id"][keep] >> ROW_BITS,
        "doc_id": batch["doc_id"][keep],
        "source": batch["source"][keep],
        "chars_in": batch["chars_in"][keep],
        "chars_norm": batch["chars_norm"][keep],
        "near": np.zeros(keep.sum(), dtype=bool),
    }


def _near_rows(batch: dict) -> dict:
    n = len(batch["u"])
    return {
        "file": batch["u"] >> ROW_BITS,
        "doc_id": batch["u"],
        "source": np.array([""] * n, dtype=object),
        "chars_in": np.zeros(n, np.int64),
        "chars_norm": np.zeros(n, np.int64),
        "near": np.ones(n, dtype=bool),
    }


def _write_file(group: dict, files: list[str], out: str, cfg_data: dict) -> dict:
    """Read one file again and write its kept documents, normalised, in row order."""
    cfg = CurateConfig.model_validate(cfg_data)
    file = int(group["file"][0])
    removed = set(group["doc_id"][group["near"]].tolist())
    survivors = ~group["near"]
    near: dict[str, np.ndarray] = {}
    for k in np.flatnonzero(survivors):
        if int(group["doc_id"][k]) in removed:
            counts = near.setdefault(group["source"][k], np.zeros(3, np.int64))
            counts += (1, group["chars_in"][k], group["chars_norm"][k])
    keep_rows = {
        int(d) & ERROR_ROW for d in group["doc_id"][survivors].tolist() if int(d) not in removed
    }
    name = f"corpus-{file:05d}-{{:03d}}.parquet".format
    writer = CorpusWriter(Path(out), cfg.shard_docs, name)
    for row, (source, text, _, _) in enumerate(read_file(Path(files[file]), cfg.input)):
        if row in keep_rows:
            writer.add(normalize_text(text, cfg.normalize), source)
    writer.flush()
    near_json = {s: c.tolist() for s, c in near.items()}
    return {
        "file": np.array([file]),
        "shards": np.array([writer.shards]),
        "kept": np.array([json.dumps(writer.per_source)], dtype=object),
        "near": np.array([json.dumps(near_json)], dtype=object),
    }


# --- the report --------------------------------------------------------------------------


def _summary_arrays(table: list[dict], near_removed: dict) -> dict:
    """summarize's arrays from the per-(source, status, rules) table, one row per group, with
    near dedup's removals moved from each source's kept row to a row of their own."""
    table = sorted(table, key=lambda r: r["first_doc"])
    source_ids: dict[str, int] = {}
    for r in table:
        source_ids.setdefault(r["source"], len(source_ids))
    rows = [dict(r) for r in sorted(table, key=lambda r: r["first_doc"])]
    for source, (docs, chars_in, chars_norm) in near_removed.items():
        kept = next(r for r in rows if r["source"] == source and r["status"] == KEPT)
        kept.update(
            documents=kept["documents"] - docs,
            chars_in=kept["chars_in"] - chars_in,
            chars_norm=kept["chars_norm"] - chars_norm,
        )
        rows.append(
            {
                **kept,
                "status": NEAR,
                "documents": docs,
                "chars_in": chars_in,
                "chars_norm": chars_norm,
            }
        )
    bits = 1 << np.arange(len(RULES), dtype=np.int64)
    return dict(
        status=np.array([r["status"] for r in rows], dtype=np.int8),
        source_of=np.array([source_ids[r["source"]] for r in rows]),
        source_ids=source_ids,
        chars_in=np.array([r["chars_in"] for r in rows], dtype=np.int64),
        chars_norm=np.array([r["chars_norm"] for r in rows], dtype=np.int64),
        first_failure=np.array([r["first_failure"] for r in rows]),
        failing=(np.array([r["failing"] for r in rows], dtype=np.int64)[:, None] & bits) > 0,
        documents=np.array([r["documents"] for r in rows], dtype=np.int64),
        truncated=sum(int(r["truncated"]) for r in table),
        normalized_changed=sum(int(r["changed"]) for r in table),
        cpu_seconds={s: sum(float(r[f"seconds_{s}"]) for r in table) for s in SECONDS},
    )


def _examples(listing, statused, cfg: CurateConfig, first_clusters: list) -> dict:
    """The report's removed examples, as the local engine picks them: the first k documents
    each step (each quality rule) removed, and the first k near-duplicate clusters."""
    k = cfg.examples
    removed = statused.map_batches(_removed_rows, batch_format="numpy").map_batches(
        _first_k, batch_format="numpy", fn_kwargs={"k": k}
    )  # k per step per block first: a step's group then holds blocks x k rows, not millions
    picks = (
        removed.groupby("step")
        .map_groups(_first_k, batch_format="numpy", fn_kwargs={"k": k})
        .take_all()
    )
    want = {int(r["doc_id"]) for r in picks} | {int(x) for pair in first_clusters for x in pair}
    texts = _fetch(listing, cfg, want)
    sigs = {}
    if first_clusters:
        ids = [int(x) for pair in first_clusters for x in pair]
        for r in _where(statused, "doc_id", ids).take_all():
            sigs[int(r["doc_id"])] = np.frombuffer(r["sig"], dtype=np.uint32)
    examples: dict[str, list] = {}
    for r in sorted(picks, key=lambda r: r["doc_id"]):
        source, text, total = texts[int(r["doc_id"])]
        if r["status"] == TOO_LONG:
            step, why = STEPS[0], f"{total:,} chars"
        elif r["status"] == EXACT:
            step, why = STEPS[1], ""
        else:
            normed = normalize_text(text, cfg.normalize)
            step, why = next(iter(quality_failures(normed, cfg.quality).items()))
        entry = {"source": source, "text": truncate(text, cfg.example_chars)}
        if why:
            entry["why"] = why
        examples.setdefault(step, []).append(entry)
    near_examples = []
    for kept, gone in first_clusters:
        ex = {}
        for side, doc in (("kept", kept), ("removed", gone)):
            source, text, _ = texts[int(doc)]
            text = normalize_text(text, cfg.normalize)
            ex[side] = {"source": source, "text": truncate(text, cfg.example_chars)}
        ex["estimated_jaccard"] = float(estimated_jaccard(sigs[gone], sigs[kept]))
        near_examples.append(ex)
    examples["near_dedup"] = near_examples
    return examples


def _removed_rows(batch: dict) -> dict:
    """The removed documents and the step that removed them, each quality rule its own."""
    gone = batch["status"] != KEPT
    status, first = batch["status"][gone].astype(np.int64), batch["first_failure"][gone]
    step = np.where(status == QUALITY, 100 + first, status)
    return {"doc_id": batch["doc_id"][gone], "status": status, "step": step}


def _first_k(batch: dict, k: int) -> dict:
    """The k lowest ids of each step."""
    order = np.lexsort((batch["doc_id"], batch["step"]))
    step = batch["step"][order]
    starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]])
    rank = np.arange(len(step)) - np.repeat(starts, np.diff(np.r_[starts, len(step)]))
    keep = order[rank < k]
    return {key: v[keep] for key, v in batch.items()}


def _fetch(listing, cfg: CurateConfig, want: set[int]) -> dict:
    """(source, raw text, original length) of a few documents, read by their files' tasks."""
    if not want:
        return {}
    wanted_files = sorted({d >> ROW_BITS for d in want})
    rows = (
        listing.map_batches(_keep_rows, fn_kwargs={"column": "file", "values": wanted_files})
        .map_batches(
            _read_wanted,
            batch_size=1,
            fn_kwargs={"cfg_input": cfg.input.model_dump(), "want": sorted(want)},
        )
        .take_all()
    )
    return {int(r["doc_id"]): (r["source"], r["text"], int(r["chars_in"])) for r in rows}


def _read_wanted(batch: dict, cfg_input: dict, want: list[int]) -> dict:
    parts = [
        {
            key: out[key][np.isin(out["doc_id"], want)]
            for key in ("doc_id", "source", "text", "chars_in")
        }
        for out in _read_files(batch, cfg_input)
    ]
    if not parts:
        return {"doc_id": np.zeros(0, np.int64)}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
