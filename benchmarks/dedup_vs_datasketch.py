"""Near-dedup side by side: lmforge's MinHash + LSH against datasketch's, one process each.

Same documents, same shingles (lower-cased word 5-grams of ``\\w+`` runs; a document shorter
than 5 words is one shingle), same permutation scheme and seed (datasketch's default affine32,
seed 1), num_perm 128, threshold 0.8 and so the same bands x rows (9 x 13). The only
difference is how a shingle becomes a 32-bit number: datasketch hashes each shingle string
with SHA-1 (its default) or a faster function it documents passing as ``hashfunc`` (here
xxhash, when installed); lmforge combines cached per-word BLAKE2b hashes with numpy. So the
two signatures are independent draws, and the pairs they call duplicates differ only near the
threshold.

Timed from raw text to candidate pairs: tokenise, shingle, hash, MinHash, band, pairs.
datasketch uses ``MinHash.bulk`` (its documented fast path for many sets), ``MinHashLSH``
with an insertion session, then ``query`` per document. Neither side verifies candidates
(datasketch's LSH does not); lmforge's verified pairs are reported too. Agreement: precision,
recall and Jaccard of lmforge's pair set against datasketch's, and each side's share of pairs
whose exact shingle Jaccard reaches the threshold.

    python benchmarks/dedup_vs_datasketch.py --max-docs 50000 --repeats 3
    python benchmarks/dedup_vs_datasketch.py                    # all ~260k documents, ~1.5 min
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from lmforge.data.curate import (
    MinHasher,
    candidate_pairs,
    optimal_bands,
    shingle_words,
    verify_pairs,
)
from lmforge.data.sources import iter_documents


def shingles(words: list[str], n: int) -> set[bytes]:
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def run_ours(texts: list[str], num_perm: int, ngram: int, threshold: float) -> dict:
    bands, rows = optimal_bands(threshold, num_perm)  # config, computed before the clock starts
    t0 = time.perf_counter()
    hasher = MinHasher(num_perm, ngram, seed=1)
    parts, has_parts = [], []
    for s in range(0, len(texts), 2048):
        sig, has = hasher.signatures(texts[s : s + 2048])
        parts.append(sig)
        has_parts.append(has)
    sig, has = np.concatenate(parts), np.concatenate(has_parts)
    t1 = time.perf_counter()
    index = np.flatnonzero(has)
    # Every pair in a bucket, however large, to compare like with like with datasketch.
    i, j = candidate_pairs(sig[index], bands, rows, all_pairs_up_to=len(index))
    t2 = time.perf_counter()
    vi, vj, _ = verify_pairs(sig[index], i, j, threshold)
    t3 = time.perf_counter()
    return {
        "seconds_minhash": t1 - t0,
        "seconds_lsh": t2 - t1,
        "seconds": t2 - t0,
        "seconds_verify": t3 - t2,
        "pairs": set(zip(index[i].tolist(), index[j].tolist())),
        "verified_pairs": set(zip(index[vi].tolist(), index[vj].tolist())),
    }


def lmforge_shingle_hashes(texts: list[str], ngram: int) -> list[list[int]]:
    """Each document's shingles as lmforge hashes them (32-bit ints)."""
    hasher = MinHasher(ngram=ngram)
    hashes, doc = hasher.shingle_hashes([shingle_words(t) for t in texts])
    bounds = np.searchsorted(doc, np.arange(len(texts) + 1))
    return [hashes[bounds[k] : bounds[k + 1]].tolist() for k in range(len(texts))]


def run_datasketch(
    texts: list[str], num_perm: int, ngram: int, threshold: float, hashfunc=None, sets=None
) -> dict:
    """datasketch from raw text; or, given ``sets`` of precomputed shingle hashes and an
    identity ``hashfunc``, on exactly lmforge's shingle hashes."""
    from datasketch import MinHash, MinHashLSH
    from datasketch.lsh import _optimal_param

    # Like ours, the bands x rows search is config and runs before the clock starts.
    params = _optimal_param(threshold, num_perm, 0.5, 0.5)
    t0 = time.perf_counter()
    if sets is None:
        sets = [shingles(shingle_words(t), ngram) for t in texts]
    keys = [k for k, s in enumerate(sets) if s]
    kwargs = {"num_perm": num_perm, "seed": 1}
    if hashfunc is not None:
        kwargs["hashfunc"] = hashfunc
    minhashes = MinHash.bulk([sets[k] for k in keys], **kwargs)
    t1 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=params)
    with lsh.insertion_session() as session:
        for k, m in zip(keys, minhashes):
            session.insert(k, m, check_duplication=False)
    pairs = set()
    for k, m in zip(keys, minhashes):
        for other in lsh.query(m):
            if other != k:
                pairs.add((min(k, other), max(k, other)))
    t2 = time.perf_counter()
    return {
        "seconds_minhash": t1 - t0,
        "seconds_lsh": t2 - t1,
        "seconds": t2 - t0,
        "pairs": pairs,
        "bands_rows": [lsh.b, lsh.r],
    }


def agreement(ours: set, theirs: set) -> dict:
    both = len(ours & theirs)
    return {
        "ours": len(ours),
        "datasketch": len(theirs),
        "both": both,
        "precision_vs_datasketch": both / len(ours) if ours else 1.0,
        "recall_vs_datasketch": both / len(theirs) if theirs else 1.0,
        "jaccard": both / len(ours | theirs) if ours | theirs else 1.0,
    }


def share_truly_similar(pairs: set, sets: list[set], threshold: float) -> float:
    """Fraction of pairs whose exact shingle-set Jaccard is >= threshold."""
    if not pairs:
        return 1.0
    good = sum(len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= threshold for a, b in pairs)
    return good / len(pairs)


def recall_of_true_pairs(pairs: set, all_pairs: set, sets: list[set], threshold: float) -> float:
    """Share of the truly similar pairs (exact Jaccard >= threshold) among ``all_pairs`` (what
    any run found) that ``pairs`` contains: LSH misses pairs near the threshold at random."""
    true = {
        (a, b) for a, b in all_pairs if len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= threshold
    }
    return len(pairs & true) / len(true) if true else 1.0


def flagged(pairs: set) -> set:
    return {k for pair in pairs for k in pair}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="data/default")
    ap.add_argument("--max-docs", type=int, default=None, help="first N documents (default all)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs; medians reported")
    ap.add_argument(
        "--out", default=str(Path(__file__).with_name("results-dedup_vs_datasketch.json"))
    )
    args = ap.parse_args()
    t_start = time.perf_counter()

    texts = []
    for doc in iter_documents(args.data):
        texts.append(doc["text"])
        if args.max_docs and len(texts) >= args.max_docs:
            break
    n = len(texts)
    print(f"{n:,} documents from {args.data}, {sum(map(len, texts)):,} characters")

    contenders = {
        "lmforge": lambda: run_ours(texts, args.num_perm, args.ngram, args.threshold),
        "datasketch (sha1)": lambda: run_datasketch(
            texts, args.num_perm, args.ngram, args.threshold
        ),
    }
    try:
        import xxhash

        contenders["datasketch (xxh32)"] = lambda: run_datasketch(
            texts, args.num_perm, args.ngram, args.threshold, hashfunc=xxhash.xxh32_intdigest
        )
    except ImportError:
        print("xxhash not installed: datasketch runs with its default SHA-1 only")
    # Round robin, then the median of each time: a shared machine's speed drifts, and
    # interleaving spreads the drift over every contender alike.
    samples: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            samples[name].append(run())
    runs = {}
    for name, ss in samples.items():
        runs[name] = dict(ss[0])
        for key in ("seconds", "seconds_minhash", "seconds_lsh"):
            runs[name][key] = statistics.median(x[key] for x in ss)
    # Same shingle hashes as lmforge: the pairs must then be identical (not a speed run).
    same_hashes = run_datasketch(
        texts,
        args.num_perm,
        args.ngram,
        args.threshold,
        hashfunc=lambda x: x,
        sets=lmforge_shingle_hashes(texts, args.ngram),
    )

    bands, rows = optimal_bands(args.threshold, args.num_perm)
    assert all(r.get("bands_rows", [bands, rows]) == [bands, rows] for r in runs.values())
    ours = runs["lmforge"]
    theirs = runs["datasketch (sha1)"]
    fastest = min((r for k, r in runs.items() if k != "lmforge"), key=lambda r: r["seconds"])
    sets = [shingles(shingle_words(t), args.ngram) for t in texts]
    all_pairs = set().union(*(r["pairs"] for r in runs.values()))
    result = {
        "documents": n,
        "data": args.data,
        "threshold": args.threshold,
        "num_perm": args.num_perm,
        "ngram": args.ngram,
        "bands": bands,
        "rows": rows,
        "machine": f"{platform.machine()}, {platform.python_version()}, single process each",
        "repeats": args.repeats,
        "runs": {
            name: {
                "seconds": round(r["seconds"], 2),
                "seconds_minhash": round(r["seconds_minhash"], 2),
                "seconds_lsh": round(r["seconds_lsh"], 2),
                "documents_per_s": round(n / r["seconds"]),
                "pairs": len(r["pairs"]),
                "pairs_truly_similar": round(
                    share_truly_similar(r["pairs"], sets, args.threshold), 4
                ),
                "recall_of_truly_similar_pairs": round(
                    recall_of_true_pairs(r["pairs"], all_pairs, sets, args.threshold), 4
                ),
            }
            for name, r in runs.items()
        },
        "speedup_vs_fastest_datasketch": round(fastest["seconds"] / ours["seconds"], 2),
        "speedup_vs_datasketch_sha1": round(theirs["seconds"] / ours["seconds"], 2),
        # The same deterministic shingles and permutations: datasketch with SHA-1 is the reference.
        "pair_agreement": agreement(ours["pairs"], theirs["pairs"]),
        "flagged_document_agreement": agreement(flagged(ours["pairs"]), flagged(theirs["pairs"])),
        "pair_agreement_on_the_same_shingle_hashes": agreement(ours["pairs"], same_hashes["pairs"]),
        "lmforge_verified": {
            "pairs": len(ours["verified_pairs"]),
            "seconds_verify": round(ours["seconds_verify"], 3),
            "pairs_truly_similar": round(
                share_truly_similar(ours["verified_pairs"], sets, args.threshold), 4
            ),
            "agreement_with_datasketch": agreement(ours["verified_pairs"], theirs["pairs"]),
        },
    }
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)

    print(f"\nthreshold {args.threshold}, num_perm {args.num_perm}, bands x rows {bands} x {rows}")
    print(
        "| implementation | docs/s | seconds | MinHash s | LSH s | pairs | pairs with J >= t "
        "| recall of true pairs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in result["runs"].items():
        print(
            f"| {name} | {r['documents_per_s']:,} | {r['seconds']:.2f} | {r['seconds_minhash']:.2f} "
            f"| {r['seconds_lsh']:.2f} | {r['pairs']:,} | {r['pairs_truly_similar']:.1%} "
            f"| {r['recall_of_truly_similar_pairs']:.1%} |"
        )
    a, f = result["pair_agreement"], result["flagged_document_agreement"]
    print(
        f"\nspeed: {result['speedup_vs_fastest_datasketch']}x the fastest datasketch run, "
        f"{result['speedup_vs_datasketch_sha1']}x datasketch with SHA-1"
    )
    print(
        f"pairs: both {a['both']:,}; precision {a['precision_vs_datasketch']:.3f}, recall "
        f"{a['recall_vs_datasketch']:.3f}, Jaccard {a['jaccard']:.3f} (lmforge vs datasketch)"
    )
    print(
        f"flagged documents: precision {f['precision_vs_datasketch']:.3f}, recall "
        f"{f['recall_vs_datasketch']:.3f}, Jaccard {f['jaccard']:.3f}"
    )
    same = result["pair_agreement_on_the_same_shingle_hashes"]
    print(
        f"datasketch on lmforge's shingle hashes: {same['datasketch']:,} pairs, Jaccard "
        f"{same['jaccard']:.3f} with lmforge's (1.000 = the same MinHash and LSH)"
    )
    v = result["lmforge_verified"]
    print(
        f"lmforge verified (estimated J >= t): {v['pairs']:,} pairs, "
        f"{v['pairs_truly_similar']:.1%} truly similar"
    )
    print(f"wall time {result['wall_seconds']} s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
