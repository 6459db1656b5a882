"""Curate a corpus: normalise, drop exact and near duplicates, filter by quality, report.

    lmforge data curate data/default --out data/curated --near-dup 0.8 --report runs/demo/curation

Steps, in this order (each document is removed by the first step that rejects it, so every
step's documents in = documents out + documents removed):

1. **read** every file of the input (``read``);
2. **normalise** Unicode and whitespace (``normalize``);
3. **exact dedup** on a hash of the normalised text (``dedup``);
4. **quality filters** in the style of the Gopher rules (``quality``);
5. **near dedup** with MinHash + LSH over word n-gram shingles (``dedup``).

Steps 1-4 and the MinHash signatures run in worker processes (``score``); ``run`` holds
``curate()``, which drives them and writes the output, and ``report`` the curation report.
Settings: ``config``. Each module's docstring gives the details of its step.
"""

from lmforge.data.curate.config import (
    CurateConfig,
    ExactDedupConfig,
    InputConfig,
    NearDedupConfig,
    NormalizeConfig,
    QualityConfig,
)
from lmforge.data.curate.dedup import (
    MinHasher,
    candidate_pairs,
    clusters,
    estimated_jaccard,
    exact_key,
    keepers,
    optimal_bands,
    shingle_words,
    verify_pairs,
)
from lmforge.data.curate.normalize import normalize_text
from lmforge.data.curate.quality import RULES, quality_failures
from lmforge.data.curate.read import read_documents
from lmforge.data.curate.run import curate

__all__ = [
    "RULES",
    "CurateConfig",
    "ExactDedupConfig",
    "InputConfig",
    "MinHasher",
    "NearDedupConfig",
    "NormalizeConfig",
    "QualityConfig",
    "candidate_pairs",
    "clusters",
    "curate",
    "estimated_jaccard",
    "exact_key",
    "keepers",
    "normalize_text",
    "optimal_bands",
    "quality_failures",
    "read_documents",
    "shingle_words",
    "verify_pairs",
]
