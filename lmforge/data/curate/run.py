"""The pipeline: ``curate()`` reads the input, scores it, removes duplicates and writes the
kept documents and the report.

Outputs: parquet shards with ``text`` and ``source`` columns plus ``stats.json``, exactly like
``data/default`` (see ``corpora.build_default_corpus``), written atomically; and, if asked, a
report directory: ``curation.json``, ``curation.md``, ``removed_examples.json`` and
``near_dup_clusters.png``.

Memory stays bounded: documents stream through in batches, scored in parallel processes;
what is kept per document is a few numbers and its 64-bit exact-dedup hash, and the MinHash
signatures (4 * num_perm bytes each) go to a temporary file. The kept documents are written in
a second pass over the input. A .jsonl / .parquet / .csv row is loaded whole by its reader, so
max_chars bounds what is processed, not what the reader allocates.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmforge.data.curate.config import CurateConfig
from lmforge.data.curate.dedup import (
    candidate_pairs,
    clusters,
    estimated_jaccard,
    keepers,
    optimal_bands,
    verify_pairs,
)
from lmforge.data.curate.normalize import normalize_text
from lmforge.data.curate.output import CorpusWriter, write_stats
from lmforge.data.curate.quality import RULES
from lmforge.data.curate.read import read_documents
from lmforge.data.curate.report import (
    EXACT,
    KEPT,
    NEAR,
    QUALITY,
    TOO_LONG,
    summarize,
    truncate,
    write_report,
)
from lmforge.data.curate.score import batched, scored
from lmforge.data.sources import list_files
from lmforge.errors import ConfigError, DataError
from lmforge.utils import staging_dir


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def curate(
    inputs: str | Path,
    out: str | Path,
    cfg: CurateConfig,
    report: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    engine: str = "local",
    address: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Curate the documents under ``inputs`` into parquet shards at ``out`` (atomically), write
    the report directory if ``report`` is given, and return the report's numbers.

    ``engine="ray"`` runs the same steps on Ray Data (``ray_engine``): on this machine, or on
    the cluster at ``address``; the documents kept are the same."""
    t_start = time.perf_counter()
    inputs, out = Path(inputs), Path(out)
    # Re-validate: a config built with model_construct or mutated without validation.
    cfg = CurateConfig.model_validate(cfg.model_dump())
    if out.resolve() != inputs.resolve() and inputs.resolve() in out.resolve().parents:
        raise ConfigError(
            f"--out {out} is inside the input {inputs}; a rerun would read its own output. "
            "Write it next to the input instead"
        )
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine {engine} is not an engine; use local or ray")
    _refuse_another_run(out, inputs, cfg, overwrite)
    workers = _default_workers() if workers is None else max(1, int(workers))
    list_files(inputs)  # a missing or empty input fails here, before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    if engine == "ray":
        from lmforge.data.curate import ray_engine  # Ray is an optional extra

        parts, examples = ray_engine.curate(inputs, out, cfg, workers, address, progress)
    else:
        parts, examples = _curate_here(inputs, out, cfg, workers, progress)
    parts["seconds"]["total"] = time.perf_counter() - t_start
    summary = summarize(inputs=inputs, out=out, cfg=cfg, workers=workers, **parts)
    summary["engine"] = engine
    if report is not None:
        write_report(Path(report), summary, examples)
    if summary["documents_out"] == 0:
        steps = ", ".join(f"{s['step']} {s['documents_removed']}" for s in summary["steps"])
        raise DataError(
            f"curation removed all {summary['documents_in']} documents of {inputs} ({steps}); "
            "nothing was written to --out. Loosen or disable the filters that removed them "
            "(see the report)"
        )
    return summary


def _refuse_another_run(out: Path, inputs: Path, cfg: CurateConfig, overwrite: bool) -> None:
    """A directory that holds something other than this curation (another input or config,
    or not a curated corpus at all) is replaced only with ``overwrite``: a typo in --out must
    not delete a corpus."""
    if overwrite or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    stats = out / "stats.json"
    try:
        held = json.loads(stats.read_text())
        same = held.get("curated_from") == str(inputs) and held.get("curation") == cfg.model_dump(
            mode="json"
        )
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        raise ConfigError(
            f"--out {out} already holds something else (another curation, or not a curated "
            "corpus); pass --overwrite to replace it, or choose another --out"
        )


def _curate_here(inputs: Path, out: Path, cfg: CurateConfig, workers: int, progress: bool):
    """The local engine: processes on this machine. Returns summarize's arrays and the
    removed examples."""
    nd = cfg.near_dedup
    bands, rows = optimal_bands(
        nd.threshold, nd.num_perm, nd.false_positive_weight, nd.false_negative_weight
    )

    # Pass 1: read, normalise, hash, filter and MinHash every document, in parallel batches;
    # keep a few numbers per document and append the candidates' signatures to a file.
    source_ids: dict[str, int] = {}
    status, source_of, chars_in, chars_norm, first_failure = [], [], [], [], []
    failing_parts: list[np.ndarray] = []
    seen_keys: set[int] = set()
    cand_list: list[int] = []  # document index of each signature row written
    skipped_files: list[dict] = []
    examples: dict[str, list] = collections.defaultdict(list)
    truncated = normalized_changed = 0
    cpu_seconds: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.curate-", dir=out.parent) as tmp:
        sig_path = Path(tmp) / "signatures.u32"
        t_pass1 = time.perf_counter()
        bar = tqdm(desc="curate: score", unit=" docs", disable=not progress, dynamic_ncols=True)
        docs = read_documents(inputs, cfg.input, skipped_files)
        batches = batched(docs, cfg.batch_docs)
        with open(sig_path, "wb") as sig_file:
            for batch, score in scored(batches, workers, cfg.model_dump()):
                sig_rows = iter(score["signatures"] if score["signatures"] is not None else ())
                for k, (source, text, total, note) in enumerate(batch):
                    source_of.append(source_ids.setdefault(source, len(source_ids)))
                    chars_in.append(total)
                    chars_norm.append(score["chars"][k])
                    first_failure.append(-1)
                    key, first = score["keys"][k], score["first_failure"][k]
                    truncated += note == "truncated"
                    if note == "skipped":
                        status.append(TOO_LONG)
                        _add_example(examples, "too_long", cfg, source, text, f"{total:,} chars")
                    elif cfg.exact_dedup.enabled and key in seen_keys:
                        status.append(EXACT)
                        _add_example(examples, "exact_dedup", cfg, source, text, "")
                    elif first is not None:
                        status.append(QUALITY)
                        first_failure[-1] = list(RULES).index(first[0])
                        _add_example(examples, first[0], cfg, source, text, first[1])
                    else:
                        status.append(KEPT)
                    if cfg.exact_dedup.enabled and note != "skipped":
                        seen_keys.add(key)
                    if score["has_shingles"][k]:
                        # Every document that passes the filters has a signature; the ones
                        # that also survived exact dedup are the near-dedup candidates.
                        row = next(sig_rows)
                        if status[-1] == KEPT:
                            sig_file.write(row.tobytes())
                            cand_list.append(len(status) - 1)
                failing_parts.append(score["failing"])
                normalized_changed += sum(score["changed"])
                cpu_seconds.update(score["seconds"])
                bar.update(len(batch))
        bar.close()
        seconds = {"score": time.perf_counter() - t_pass1}

        status_arr = np.array(status, dtype=np.int8)
        chars_norm_arr = np.array(chars_norm, dtype=np.int64)
        n_docs = len(status_arr)
        failing = np.concatenate(failing_parts) if failing_parts else None
        if n_docs == 0:
            where = f"; unreadable files skipped: {skipped_files}" if skipped_files else ""
            raise DataError(f"{inputs} holds no documents{where}")

        # Near dedup over the candidates' signatures.
        t_near = time.perf_counter()
        near = {"bands": bands, "rows": rows, "candidates": 0, "candidate_pairs": 0}
        near["verified_pairs"], near["cluster_sizes"], near_examples = 0, {}, []
        cand = np.array(cand_list, dtype=np.int64)
        if nd.enabled and len(cand) > 1:
            sig = np.memmap(sig_path, dtype=np.uint32, mode="r", shape=(len(cand), nd.num_perm))
            i, j = candidate_pairs(sig, bands, rows)
            near.update(candidates=len(cand), candidate_pairs=len(i))
            if nd.verify:
                i, j, _ = verify_pairs(sig, i, j, nd.threshold)
            near["verified_pairs"] = len(i) if nd.verify else None
            labels = clusters(len(cand), i, j)
            sizes = np.bincount(labels)
            keep = keepers(labels, chars_norm_arr[cand])
            dup = (sizes[labels] > 1) & ~keep
            status_arr[cand[dup]] = NEAR
            size_counts = collections.Counter(sizes[sizes > 1].tolist())
            near["cluster_sizes"] = {int(s): int(c) for s, c in sorted(size_counts.items())}
            near_examples = _near_examples(cand, labels, keep, sig, cfg.examples)
            del sig
        seconds["near_dedup"] = time.perf_counter() - t_near

    # Pass 2: read again and write the kept documents, normalised, as parquet shards.
    t_write = time.perf_counter()
    kept_stats, wanted = _write_output(inputs, out, cfg, status_arr, near_examples, progress)
    seconds["write"] = time.perf_counter() - t_write
    for ex in near_examples:
        for side in ("kept", "removed"):
            source, text = wanted[ex[side]]
            ex[side] = {"source": source, "text": truncate(text, cfg.example_chars)}
    examples["near_dedup"] = near_examples
    parts = dict(
        status=status_arr,
        source_of=np.array(source_of),
        source_ids=source_ids,
        chars_in=np.array(chars_in),
        chars_norm=chars_norm_arr,
        first_failure=np.array(first_failure),
        failing=failing,
        near=near,
        truncated=truncated,
        normalized_changed=normalized_changed,
        skipped_files=skipped_files,
        seconds=seconds,
        cpu_seconds=dict(cpu_seconds),
        kept_stats=kept_stats,
    )
    return parts, examples


def _add_example(examples: dict, step: str, cfg: CurateConfig, source, text, why) -> None:
    if len(examples[step]) < cfg.examples:
        entry = {"source": source, "text": truncate(text, cfg.example_chars)}
        if why:
            entry["why"] = why
        examples[step].append(entry)


def _near_examples(cand, labels, keep, sig, k: int) -> list[dict]:
    """A kept and a removed member of the first k clusters (by the removed one's position)."""
    out, done = [], set()
    keeper_of = {int(labels[x]): x for x in np.flatnonzero(keep)}
    for x in np.flatnonzero(~keep):
        label = int(labels[x])
        if label in done or label not in keeper_of:
            continue
        done.add(label)
        y = keeper_of[label]
        est = float(estimated_jaccard(sig[x], sig[y]))
        out.append({"kept": int(cand[y]), "removed": int(cand[x]), "estimated_jaccard": est})
        if len(out) >= k:
            break
    return out


def _write_output(inputs, out, cfg, status, near_examples, progress):
    """Pass 2: the kept documents, normalised, in input order, as corpus-NNNNN.parquet shards
    (text, source) plus stats.json -- the layout of data/default."""
    want = {ex[s] for ex in near_examples for s in ("kept", "removed")}
    wanted: dict[int, tuple[str, str]] = {}
    if not (status == KEPT).any():
        return {}, wanted
    bar = tqdm(desc="curate: write", unit=" docs", disable=not progress, dynamic_ncols=True)
    with staging_dir(out) as tmp:
        writer = CorpusWriter(tmp, cfg.shard_docs, lambda k: f"corpus-{k:05d}.parquet")
        # The same reader as pass 1, so document k is the same document; skipped files are
        # skipped again (their errors are already recorded).
        docs = read_documents(inputs, cfg.input, skipped_files=None)
        for k, (source, text, _, _) in enumerate(docs):
            bar.update(1)
            if k >= len(status):
                raise DataError(f"{inputs} changed while it was being curated; run again")
            if status[k] != KEPT and k not in want:
                continue
            text = normalize_text(text, cfg.normalize)
            if k in want:
                wanted[k] = (source, text)
            if status[k] == KEPT:
                writer.add(text, source)
        writer.flush()
        bar.close()
        write_stats(tmp, writer.per_source, writer.shards, inputs, cfg)
    return writer.per_source, wanted
