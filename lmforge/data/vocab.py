"""A tokenizer trained on a corpus on disk, with its compression on held-out documents.

    lmforge tokenizer train --data data/default --vocab-size 8192 --out runs/demo/tokenizer

Reads any corpus data/sources.py reads, holds out a fixed fraction of documents (the same ones
token shards hold out), trains lmforge's byte-level BPE (tokenizer.py) on the rest and
reports bytes per token on both.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator

from lmforge.data.sources import iter_texts
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import (
    MIN_VOCAB,
    SPECIAL_TOKENS,
    bytes_per_token,
    is_heldout,
    train_tokenizer,
)
from lmforge.utils import atomic_write_text, staging_dir


def train_tokenizer_from_path(
    data_path: str | os.PathLike,
    vocab_size: int,
    out_dir: str | os.PathLike,
    text_column: str = "text",
    heldout_fraction: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train on a corpus, hold out a fraction of documents, save atomically, report compression."""
    if vocab_size < MIN_VOCAB:
        raise ConfigError(
            f"--vocab-size {vocab_size} is too small; the minimum is {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    heldout: list[str] = []
    counts = {"documents": 0, "train_bytes": 0}

    def training_texts() -> Iterator[str]:
        for i, text in enumerate(iter_texts(data_path, text_column)):
            if not text.strip():
                continue
            counts["documents"] += 1
            if is_heldout(i, heldout_fraction, seed) and len(heldout) < 2000:
                heldout.append(text)
                continue
            counts["train_bytes"] += len(text.encode("utf-8"))
            yield text

    t0 = time.perf_counter()
    tok = train_tokenizer(training_texts(), vocab_size, progress=progress)
    seconds = time.perf_counter() - t0
    if counts["documents"] == 0:
        raise DataError(f"{data_path} holds no text: every document is empty")
    sample = []
    for i, text in enumerate(iter_texts(data_path, text_column)):
        if text.strip() and not is_heldout(i, heldout_fraction, seed):
            sample.append(text)
        if len(sample) >= 2000:
            break
    summary = {
        "vocab_size": tok.vocab_size,
        "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        "documents": counts["documents"],
        "train_bytes": counts["train_bytes"],
        "heldout_documents": len(heldout),
        "train_seconds": round(seconds, 2),
        "bytes_per_token_train": bytes_per_token(tok, sample),
        "bytes_per_token_heldout": bytes_per_token(tok, heldout) if heldout else None,
        "data": str(data_path),
    }
    if tok.vocab_size < vocab_size:
        # BPE stops when no pair of tokens occurs twice more: a small corpus cannot fill a
        # large vocabulary. Kept (it is a working tokenizer), but never silently.
        note = (
            f"the vocabulary has {tok.vocab_size} tokens, not the {vocab_size} asked for: "
            f"{counts['documents']} document(s), {counts['train_bytes']:,} bytes of training "
            f"text under {data_path} hold no more pairs seen twice to merge. Add text to reach "
            f"{vocab_size}, or pass --vocab-size {tok.vocab_size} to ask for what it holds"
        )
        print(f"warning: {note}", file=sys.stderr)
        summary.update(requested_vocab_size=vocab_size, vocab_note=note)
    with staging_dir(out_dir) as tmp:
        tok.save(tmp)
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
