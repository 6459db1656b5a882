"""Duplicates: the exact-dedup key, MinHash signatures, LSH candidate pairs, clusters.

**Exact dedup** on a 64-bit BLAKE2b hash of the normalised text, lower-cased and
whitespace-collapsed; the first copy in input order is kept.

**Near dedup** with MinHash + LSH over word n-gram shingles (default 5-grams of ``\\w+``
words, lower-cased; a document shorter than n words is one shingle):

- MinHash (Broder 1997): for a random permutation pi of the hash space,
  P[min pi(A) = min pi(B)] = |A n B| / |A u B| = J(A, B). With ``num_perm`` = k permutations
  the fraction of equal minima estimates J with standard error sqrt(J (1 - J) / k).
  A shingle's 32-bit hash x is pre-mixed by the MurmurHash3 finalizer and permuted by
  pi_i(x) = (a_i x + b_i) mod 2^32, a_i odd -- datasketch's default "affine32" scheme with the
  same seeded a, b (so given the same shingle hashes our signatures equal datasketch's).
  Shingles are hashed by combining 64-bit BLAKE2b word hashes (sum_j w_j c_j mod 2^64 with
  odd c_j, then a 64-bit finalizer), vectorised with numpy; datasketch hashes each shingle
  string with SHA-1 in Python.
- LSH (Indyk & Motwani 1998; Leskovec et al., Mining of Massive Datasets ch. 3): split the
  signature into b bands of r rows; two documents are candidates when any band is identical,
  with probability P(s) = 1 - (1 - s^r)^b for Jaccard s. b and r minimise
  w_fp * int_0^t P(s) ds + w_fn * int_t^1 (1 - P(s)) ds over b * r <= k, exactly as
  datasketch's ``_optimal_param`` (t = 0.8, k = 128 -> b = 9, r = 13).
- Candidates are verified by default: a pair is a duplicate only if its estimated Jaccard is
  >= the threshold (datasketch's MinHashLSH does not verify; ``near_dedup.verify: false``
  behaves like it). Buckets of more than 64 documents are verified against their first
  member only, to keep the pair count linear.
- Only documents that survived exact dedup and the quality filters are compared. Clusters
  are the connected components of the duplicate pairs (what union-find computes; here
  scipy.sparse.csgraph). Each cluster keeps one document: the longest (in characters after
  normalisation), then the first in input order.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np
from scipy.integrate import quad
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lmforge.errors import ConfigError


def exact_key(text: str) -> int:
    """64-bit hash of the text lower-cased with whitespace collapsed: copies that differ only in
    case or spacing are one document."""
    canonical = " ".join(text.lower().split()).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little")


# --- MinHash -----------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_U32 = np.uint32
_U64 = np.uint64


def shingle_words(text: str) -> list[str]:
    """The words shingles are made of: lower-cased ``\\w+`` runs (punctuation ignored)."""
    return _WORD.findall(text.lower())


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, a bijection that spreads every input bit (as datasketch)."""
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


# Odd 64-bit multipliers, one per position in a shingle: sum_j w_j * c_j (mod 2^64) is an
# order-sensitive combination of the word hashes. Fixed, so hashes agree across processes.
_POSITION_MULTIPLIERS = np.random.RandomState(20211208).randint(
    0, 2**63, size=64, dtype=np.uint64
) * _U64(2) + _U64(1)


class MinHasher:
    """Word n-gram shingles -> MinHash signatures, for many documents at once."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        if ngram > len(_POSITION_MULTIPLIERS):
            raise ConfigError(f"near_dedup.ngram must be <= {len(_POSITION_MULTIPLIERS)}")
        self.num_perm, self.ngram = num_perm, ngram
        # datasketch's affine32 permutations, drawn the same way from the same seed.
        gen = np.random.RandomState(seed)
        self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * _U32(2) + _U32(1)
        self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        self._word_cache: dict[str, int] = {}

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self._word_cache
        if len(cache) > 2_000_000:  # a vocabulary cache, not a memory leak
            cache.clear()
        for w in set(words).difference(cache):
            cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))

    def shingle_hashes(self, docs_words: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every document's shingles and the document each belongs to, sorted
        by document. A document of fewer than n words (but at least one) is one shingle."""
        n = self.ngram
        lengths = np.array([len(ws) for ws in docs_words], dtype=np.int64)
        words = [w for ws in docs_words for w in ws]
        wh = self._word_hashes(words)
        doc_of_word = np.repeat(np.arange(len(docs_words)), lengths)
        parts_h, parts_doc = [], []
        if len(words) >= n:
            # Shingle starting at word i: sum_j wh[i + j] * c_j, kept if it stays in one document.
            m = len(words) - n + 1
            acc = np.zeros(m, dtype=np.uint64)
            for j in range(n):
                acc += wh[j : j + m] * _POSITION_MULTIPLIERS[j]
            inside = doc_of_word[:m] == doc_of_word[n - 1 :]
            parts_h.append(acc[inside])
            parts_doc.append(doc_of_word[:m][inside])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        if len(short):
            acc = np.zeros(len(short), dtype=np.uint64)
            for j in range(n - 1):
                has = lengths[short] > j
                acc[has] += wh[starts[short[has]] + j] * _POSITION_MULTIPLIERS[j]
            parts_h.append(acc)
            parts_doc.append(short)
        if not parts_h:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        h, doc = np.concatenate(parts_h), np.concatenate(parts_doc)
        order = np.argsort(doc, kind="stable")
        return (_fmix64(h[order]) >> _U64(32)).astype(np.uint32), doc[order]

    def signatures_of_hashes(
        self, hashes: np.ndarray, doc: np.ndarray, n_docs: int, chunk: int = 1 << 16
    ) -> np.ndarray:
        """(n_docs, num_perm) uint32 MinHash signatures from shingle hashes sorted by ``doc``.
        A document without shingles keeps the all-0xFFFFFFFF signature."""
        sig = np.full((self.num_perm, n_docs), 0xFFFFFFFF, dtype=np.uint32)
        x = _fmix32(hashes.astype(np.uint32))
        a, b = self.a[:, None], self.b[:, None]
        # Chunks of shingles bound the (num_perm, chunk) temporary to 32 MB.
        for s in range(0, len(x), chunk):
            xs, ds = x[s : s + chunk], doc[s : s + chunk]
            permuted = a * xs[None, :] + b  # (num_perm, rows); uint32 wraps: mod 2^32
            seg = np.flatnonzero(np.concatenate([[True], ds[1:] != ds[:-1]]))
            mins = np.minimum.reduceat(permuted, seg, axis=1)  # (num_perm, segments)
            cols = ds[seg]
            sig[:, cols] = np.minimum(sig[:, cols], mins)
        return np.ascontiguousarray(sig.T)

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures (len(texts), num_perm) uint32, has_shingles bool mask)."""
        docs_words = [shingle_words(t) for t in texts]
        hashes, doc = self.shingle_hashes(docs_words)
        has = np.array([len(ws) > 0 for ws in docs_words], dtype=bool)
        return self.signatures_of_hashes(hashes, doc, len(texts)), has


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal minima, row by row: the MinHash estimate of Jaccard similarity."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1)


# --- LSH ---------------------------------------------------------------------------------


def _false_positive_area(threshold: float, b: int, r: int) -> float:
    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _false_negative_area(threshold: float, b: int, r: int) -> float:
    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@functools.lru_cache(maxsize=64)
def optimal_bands(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive + false-negative areas under the
    LSH S-curve; the same grid search and integrals as datasketch's ``_optimal_param``."""
    best, best_err = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = fp_weight * _false_positive_area(threshold, b, r)
            err += fn_weight * _false_negative_area(threshold, b, r)
            if err < best_err:
                best, best_err = (b, r), err
    return best


_ALL_PAIRS_UP_TO = 64  # larger buckets pair every member with the first one only


def candidate_pairs(
    sig: np.ndarray, bands: int, rows: int, all_pairs_up_to: int = _ALL_PAIRS_UP_TO
) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (i < j) of rows of ``sig`` that agree on every row of at least one band.

    A bucket is the set of documents with identical band values (compared as bytes, so no hash
    collisions: the same buckets as datasketch's dict keyed by the band's bytes), found by
    sorting rather than a Python dict of 100k+ entries.
    """
    n = len(sig)
    found = []
    for band in range(bands):
        keys = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        keys = keys.view(np.dtype((np.void, 4 * rows))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        in_bucket = counts[inverse] > 1
        members = np.flatnonzero(in_bucket)
        members = members[np.argsort(inverse[members], kind="stable")]  # grouped, index order
        bounds = np.flatnonzero(np.diff(inverse[members])) + 1
        for group in np.split(members, bounds):
            k = len(group)
            if k <= all_pairs_up_to:
                i, j = np.triu_indices(k, 1)
                found.append(np.stack([group[i], group[j]]))
            else:
                found.append(np.stack([np.full(k - 1, group[0]), group[1:]]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.concatenate(found, axis=1).astype(np.int64)
    codes = np.unique(pairs[0] * n + pairs[1])
    return codes // n, codes % n


def verify_pairs(
    sig: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float, chunk: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs whose estimated Jaccard is >= threshold, and those estimates."""
    keep, est = [], []
    for s in range(0, len(i), chunk):
        e = estimated_jaccard(sig[i[s : s + chunk]], sig[j[s : s + chunk]])
        keep.append(e >= threshold - 1e-9)
        est.append(e)
    if not keep:
        return i, j, np.zeros(0)
    keep_mask, est_all = np.concatenate(keep), np.concatenate(est)
    return i[keep_mask], j[keep_mask], est_all[keep_mask]


def clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cluster label of each of n items: connected components of the pairs (union-find)."""
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def keepers(labels: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Bool mask: the one member kept per cluster, the longest then the first by index."""
    order = np.lexsort((np.arange(len(labels)), -chars, labels))
    first = np.concatenate([[True], labels[order][1:] != labels[order][:-1]])
    keep = np.zeros(len(labels), dtype=bool)
    keep[order[first]] = True
    return keep
