"""Token shards on Ray Data: ``lmforge data shards --engine ray``.

The same format and the same split as ``shards.build_shards``: a document's index is its
position among the corpus's non-empty documents, so the held-out documents are the same ones.
A first pass counts each file's non-empty documents (one task per file; the driver keeps one
number per file), which gives each file the index of its first document; then each file's task
tokenizes it and writes its own shards, ``train/tokens-FFFFF-SSSSS.bin`` and its
``docs-FFFFF-SSSSS.npy`` (file F, shard S). Read in the order meta.json lists them, the shards
hold exactly the tokens and document boundaries the local build writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lmforge.data.ray_session import ray_session
from lmforge.data.shards import SPLITS, _SplitWriter, check_tokenizer, shards_meta, token_dtype
from lmforge.data.sources import iter_file, list_files
from lmforge.tokenizer import Tokenizer, is_heldout
from lmforge.utils import staging_dir, write_json


def build_shards_on_ray(
    data_path: str | os.PathLike,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    text_column: str = "text",
    val_fraction: float = 0.01,
    seed: int = 0,
    shard_tokens: int = 1 << 27,
    batch_docs: int = 2048,
    progress: bool = True,
    workers: int = 1,
    address: str | None = None,
) -> dict:
    """``build_shards`` with one Ray task per input file. Returns meta."""
    check_tokenizer(tokenizer)
    files = [str(f) for f in list_files(data_path)]
    with ray_session(address, workers, progress) as ray:
        listing = ray.data.from_items(
            [{"file": k, "path": p} for k, p in enumerate(files)], override_num_blocks=len(files)
        )
        counts = listing.map_batches(
            _count_documents, batch_size=1, fn_kwargs={"text_column": text_column}
        ).take_all()
        per_file = np.zeros(len(files), dtype=np.int64)
        for r in counts:
            per_file[r["file"]] = r["documents"]
        first_index = np.concatenate([[0], np.cumsum(per_file)[:-1]]).tolist()
        with staging_dir(Path(out_dir)) as tmp:
            settings = {
                "tokenizer": tokenizer,
                "first_index": first_index,
                "out": str(tmp),
                "text_column": text_column,
                "val_fraction": val_fraction,
                "seed": seed,
                "shard_tokens": shard_tokens,
                "batch_docs": batch_docs,
            }
            written = listing.map_batches(
                _tokenize_file,
                batch_size=1,
                fn_kwargs=settings,
                compute=ray.data.TaskPoolStrategy(size=workers),
            ).take_all()
            splits = {s: {"documents": 0, "tokens": 0, "bytes": 0, "shards": []} for s in SPLITS}
            for r in sorted(written, key=lambda r: (r["file"], r["split"])):
                total = splits[r["split"]]
                for key in ("documents", "tokens", "bytes"):
                    total[key] += int(r[key])
                total["shards"] += list(r["shards"])
            meta = shards_meta(data_path, tokenizer, text_column, val_fraction, seed, splits)
            write_json(tmp / "meta.json", meta)
    return meta


def _count_documents(batch: dict, text_column: str) -> dict:
    counts = [
        sum(1 for doc in iter_file(Path(path), text_column) if doc["text"].strip())
        for path in batch["path"]
    ]
    return {"file": batch["file"], "documents": np.array(counts, dtype=np.int64)}


def _add(writers: dict, tokenizer: Tokenizer, pending: list, how: dict) -> None:
    encoded = tokenizer.encode_batch([t for _, t in pending], add_bos=True, add_eos=True)
    for (index, text), ids in zip(pending, encoded):
        held = is_heldout(index, how["val_fraction"], how["seed"])
        writers["val" if held else "train"].add(ids, len(text.encode("utf-8")))
    pending.clear()


def _tokenize_file(batch: dict, tokenizer: Tokenizer, first_index: list[int], out: str, **how):
    """One file's non-empty documents, tokenized into its own train and val shards."""
    rows = {k: [] for k in ("file", "split", "documents", "tokens", "bytes", "shards")}
    for file, path in zip(batch["file"], batch["path"]):
        file = int(file)
        dtype = token_dtype(tokenizer.vocab_size)
        writers = {
            s: _SplitWriter(Path(out) / s, dtype, how["shard_tokens"], prefix=f"{file:05d}-")
            for s in SPLITS
        }
        index, pending = first_index[file], []
        for doc in iter_file(Path(path), how["text_column"]):
            if not doc["text"].strip():
                continue  # as build_shards: an empty document teaches nothing
            pending.append((index, doc["text"]))
            index += 1
            if len(pending) >= how["batch_docs"]:
                _add(writers, tokenizer, pending, how)
        _add(writers, tokenizer, pending, how)
        for split, writer in writers.items():
            info = writer.close()
            rows["file"].append(file)
            rows["split"].append(split)
            for key in ("documents", "tokens", "bytes"):
                rows[key].append(info[key])
            rows["shards"].append(info["shards"])
    return {
        "file": np.array(rows["file"], dtype=np.int64),
        "split": np.array(rows["split"], dtype=object),
        "documents": np.array(rows["documents"], dtype=np.int64),
        "tokens": np.array(rows["tokens"], dtype=np.int64),
        "bytes": np.array(rows["bytes"], dtype=np.int64),
        "shards": np.array(rows["shards"] + [None], dtype=object)[:-1],
    }
