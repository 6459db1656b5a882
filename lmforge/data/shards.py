"""Token shards: documents tokenized once into memory-mapped arrays, and packed batches.

Layout of a shards directory (written atomically; meta.json last):

    meta.json                 dtype, vocab size, tokenizer fingerprint, per-split counts
    train/tokens-00000.bin    uint16 (vocab < 65,536) or uint32 tokens, documents back to back
    train/docs-00000.npy      int64 offsets: document i is tokens[docs[i]:docs[i+1]]
    val/...

Each document is stored as ``<|bos|> text <|endoftext|>``. The split is by document, by a
stable hash of its index, so adding documents to a corpus does not reshuffle the split.

Packing (``PackedLoader``) is BOS-aligned, as in nanochat: a row opens with a document's
``<|bos|>`` and is filled best-fit from a small look-ahead buffer, cropping only when nothing
fits. Unlike nanochat, a document longer than a row is not cropped to one row (that would throw
away most of a book or a Bible chapter) but cut into row-sized segments; rows then open at a
document or at one of those segments. The order is a seeded
permutation per epoch; ``state_dict()`` holds the exact position, so a resumed run reads the
same batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from lmforge.config import Section
from lmforge.data.sources import iter_documents
from lmforge.errors import ConfigError, DataError, MissingColumnError
from lmforge.tokenizer import Tokenizer, is_heldout
from lmforge.utils import read_json, staging_dir, write_json

FORMAT_VERSION = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


class _SplitWriter:
    def __init__(self, root: Path, dtype: np.dtype, shard_tokens: int, prefix: str = ""):
        # prefix: one writer per input file on Ray names its shards tokens-FFFFF-SSSSS.bin
        self.root, self.dtype, self.shard_tokens, self.prefix = root, dtype, shard_tokens, prefix
        root.mkdir(parents=True, exist_ok=True)
        self.shard = -1
        self.documents = self.tokens = self.bytes = 0
        self._file = None
        self._offsets: list[int] = []
        self._pos = 0
        self.files: list[str] = []

    def _roll(self) -> None:
        self._close_shard()
        self.shard += 1
        name = f"tokens-{self.prefix}{self.shard:05d}.bin"
        self.files.append(name)
        self._file = open(self.root / name, "wb")
        self._offsets, self._pos = [0], 0

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            np.save(
                self.root / f"docs-{self.prefix}{self.shard:05d}.npy",
                np.asarray(self._offsets, dtype=np.int64),
            )
            self._file = None

    def add(self, ids: list[int], n_bytes: int) -> None:
        if self._file is None or self._pos >= self.shard_tokens:
            self._roll()
        arr = np.asarray(ids, dtype=self.dtype)
        self._file.write(arr.tobytes())
        self._pos += len(arr)
        self._offsets.append(self._pos)
        self.documents += 1
        self.tokens += len(arr)
        self.bytes += n_bytes

    def close(self) -> dict:
        self._close_shard()
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "shards": self.files,
        }


def check_tokenizer(tokenizer: Tokenizer) -> None:
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise DataError(
            "the tokenizer needs BOS and EOS tokens to build shards; train it with `lmforge tokenizer train`"
        )


def build_shards(
    data_path: str | os.PathLike,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    text_column: str = "text",
    val_fraction: float = 0.01,
    seed: int = 0,
    shard_tokens: int = 1 << 27,
    batch_docs: int = 2048,
    progress: bool = True,
    index_column: str | None = None,
) -> dict:
    """Tokenize every document under ``data_path`` into train/val shards. Returns meta.

    A document is held out by its index (its position among the non-empty documents) and the
    seed; ``index_column`` names a column that carries the index instead, so that a subset
    of a corpus (one source of a mixture) is split exactly as the whole corpus was.
    """

    check_tokenizer(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        writers = {s: _SplitWriter(tmp / s, dtype, shard_tokens) for s in SPLITS}
        bar = tqdm(desc="tokenize", unit=" docs", disable=not progress, dynamic_ncols=True)
        index = 0
        pending: list[tuple[int, str]] = []

        def flush() -> None:
            encoded = tokenizer.encode_batch([t for _, t in pending], add_bos=True, add_eos=True)
            for (i, text), ids in zip(pending, encoded):
                split = "val" if is_heldout(i, val_fraction, seed) else "train"
                writers[split].add(ids, len(text.encode("utf-8")))
            bar.update(len(pending))
            pending.clear()

        for doc in iter_documents(data_path, text_column):
            text = doc["text"]
            if not text.strip():
                continue  # an empty document teaches nothing
            pending.append((int(doc[index_column]) if index_column else index, text))
            index += 1
            if len(pending) >= batch_docs:
                flush()
        if pending:
            flush()
        bar.close()
        splits = {s: w.close() for s, w in writers.items()}
        meta = shards_meta(data_path, tokenizer, text_column, val_fraction, seed, splits)
        write_json(tmp / "meta.json", meta)
    return meta


def shards_meta(data_path, tokenizer: Tokenizer, text_column, val_fraction, seed, splits) -> dict:
    """meta.json of a shards directory, once both splits hold documents (else a DataError)."""
    documents = sum(split["documents"] for split in splits.values())
    if documents == 0:
        raise DataError(
            f"{data_path} holds no text: every document is empty. Point data.path at a corpus with text."
        )
    if splits["val"]["documents"] == 0 or splits["train"]["documents"] == 0:
        raise DataError(
            f"{data_path} has {documents} document(s), too few for a train/val split at val_fraction "
            f"{val_fraction}: add documents or raise data.val_fraction"
        )
    return {
        "format": FORMAT_VERSION,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "source": str(data_path),
        "text_column": text_column,
        "val_fraction": val_fraction,
        "seed": seed,
        "splits": splits,
    }


def shards_match(path: str | os.PathLike, tokenizer: Tokenizer) -> bool:
    """True when ``path`` holds complete shards built with this tokenizer."""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = read_json(meta_path)
    except ValueError:
        return False
    return (
        meta.get("format") == FORMAT_VERSION
        and meta.get("tokenizer_fingerprint") == tokenizer.fingerprint()
    )


class ShardDataset:
    """One split of a shards directory: memory-mapped tokens and document boundaries."""

    def __init__(self, path: str | os.PathLike, split: str):
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DataError(
                f"{path} is not a shards directory (no meta.json); build it with the pretrain stage"
            )
        self.path, self.split = path, split
        self.meta = read_json(meta_path)
        if split not in self.meta["splits"]:
            raise DataError(
                f"{path} has no split '{split}' (has: {', '.join(self.meta['splits'])})"
            )
        info = self.meta["splits"][split]
        dtype = np.dtype(self.meta["dtype"])
        self.arrays, starts, lengths, shard_of = [], [], [], []
        for k, name in enumerate(info["shards"]):
            tokens_file = path / split / name
            docs_file = path / split / name.replace("tokens-", "docs-").replace(".bin", ".npy")
            try:
                arr = np.memmap(tokens_file, dtype=dtype, mode="r")
                offsets = np.load(docs_file)
            except (OSError, ValueError) as e:
                raise DataError(
                    f"shard {tokens_file} is unreadable ({e}); delete {path} to rebuild it"
                ) from None
            if offsets[-1] != len(arr):
                raise DataError(
                    f"shard {tokens_file} is truncated ({len(arr)} tokens, index says {offsets[-1]}); delete {path} to rebuild it"
                )
            self.arrays.append(arr)
            starts.append(offsets[:-1])
            lengths.append(np.diff(offsets))
            shard_of.append(np.full(len(offsets) - 1, k, dtype=np.int32))
        self.doc_start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.doc_len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self.doc_shard = np.concatenate(shard_of) if shard_of else np.zeros(0, np.int32)
        self.num_docs = len(self.doc_len)
        self.num_tokens = int(self.doc_len.sum())
        self.bytes_of_text = info["bytes"]

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        base = self.doc_start[doc]
        length = self.doc_len[doc]
        stop = length if stop is None else min(stop, length)
        return self.arrays[self.doc_shard[doc]][base + start : base + stop]


class PackedLoader:
    """Batches of BOS-aligned rows: {"input_ids": (B, T), "targets": (B, T)}, targets shifted by one.

    Documents longer than a row are cut into row-sized segments; a row is filled best-fit from
    a look-ahead buffer of segments. ``rank``/``world_size`` give each data-parallel rank a
    disjoint share of the rows.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        bos_id: int | None = None,
        shuffle: bool = True,
        lookahead: int = 32,
        rank: int = 0,
        world_size: int = 1,
    ):
        if dataset.num_docs == 0:
            raise DataError("the dataset split is empty")
        self.ds, self.batch_size, self.seq_len = dataset, batch_size, seq_len
        self.seed, self.shuffle, self.lookahead = seed, shuffle, lookahead
        self.rank, self.world_size = rank, world_size
        row = seq_len + 1
        # segments: (doc, start) with length <= row
        counts = np.maximum(1, -(-dataset.doc_len // row))
        self.seg_doc = np.repeat(np.arange(dataset.num_docs), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        self.seg_start = (np.arange(len(self.seg_doc)) - first) * row
        self.seg_len = np.minimum(row, dataset.doc_len[self.seg_doc] - self.seg_start)
        self.epoch, self.cursor, self.buffer, self.rows_made = 0, 0, [], 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        n = len(self.seg_doc)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _next_segment(self) -> int:
        if self.cursor >= len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._permutation(self.epoch)
        seg = int(self._order[self.cursor])
        self.cursor += 1
        return seg

    def _fill_buffer(self) -> None:
        while len(self.buffer) < self.lookahead:
            self.buffer.append(self._next_segment())

    def _make_row(self) -> np.ndarray:
        row_len = self.seq_len + 1
        parts, used = [], 0
        self._fill_buffer()
        # the first segment always opens the row, so every row starts where a segment starts
        while used < row_len:
            space = row_len - used
            pick = next((i for i, s in enumerate(self.buffer) if self.seg_len[s] <= space), None)
            if pick is None:
                pick = 0  # nothing fits: crop the oldest segment to the space left
            seg = self.buffer.pop(pick)
            take = min(int(self.seg_len[seg]), space)
            start = int(self.seg_start[seg])
            parts.append(self.ds.tokens(int(self.seg_doc[seg]), start, start + take))
            used += take
            self._fill_buffer()
        self.rows_made += 1
        return np.concatenate(parts).astype(np.int64)

    def next_batch(self) -> dict[str, torch.Tensor]:
        # Every rank packs every row (best-fit packing depends on all earlier rows) and keeps
        # rows rank, rank + world, ...; a batch always ends on a whole block of world x batch
        # rows, so all ranks share one position: the state is global and resumes on any world.
        rows = []
        while len(rows) < self.batch_size or self.rows_made % self.world_size:
            index = self.rows_made
            row = self._make_row()
            if index % self.world_size == self.rank:
                rows.append(row)
        arr = torch.from_numpy(np.stack(rows))
        return {"input_ids": arr[:, :-1], "targets": arr[:, 1:]}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "buffer": list(self.buffer),
            "rows_made": self.rows_made,
            "seed": self.seed,
            "num_segments": len(self.seg_doc),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_segments") not in (None, len(self.seg_doc)):
            raise DataError(
                "the data changed since the checkpoint was written (different number of segments); "
                "resume with the same shards and seq_len, or start a fresh output directory"
            )
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.buffer, self.rows_made = [int(s) for s in state["buffer"]], state["rows_made"]
        self._order = self._permutation(self.epoch)


def iter_eval_batches(
    dataset: ShardDataset, batch_size: int, seq_len: int, max_batches: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The same deterministic batches every time: documents in order, packed as in training."""
    loader = PackedLoader(dataset, batch_size, seq_len, shuffle=False)
    total_rows = max(1, -(-dataset.num_tokens // (seq_len + 1)))
    n = min(max_batches, max(1, total_rows // batch_size))
    for _ in range(n):
        yield loader.next_batch()


# --------------------------------------------------------------------------------------------
# A recipe's data section, built into shards once
# --------------------------------------------------------------------------------------------


class LMData(Section):
    """A language-modelling recipe's `data:` section (pretrain, midtrain)."""

    path: str = "data/default"  # txt / jsonl / parquet / csv file or directory
    text_column: str = "text"
    # Token shards: built from `path` into <out_dir>/shards unless this names a built directory.
    shards: str | None = None
    val_fraction: float = Field(0.01, gt=0, lt=1)
    seq_len: int = Field(256, ge=2)  # tokens per training row
    eval_batches: int = Field(20, ge=1)


def ensure_shards(data: LMData, tokenizer: Tokenizer, out: Path, seed: int) -> Path:
    """Token shards of data.path under out/shards (reused when built from the same data with
    this tokenizer), or the built directory data.shards names."""
    if data.shards:
        if not shards_match(data.shards, tokenizer):
            raise ConfigError(
                f"data.shards {data.shards} was built with another tokenizer or is incomplete; "
                "remove data.shards to rebuild from data.path"
            )
        return Path(data.shards)
    shards_dir = out / "shards"
    if shards_match(shards_dir, tokenizer) and _built_from(shards_dir, data, seed):
        return shards_dir
    try:
        build_shards(
            data.path,
            tokenizer,
            shards_dir,
            text_column=data.text_column,
            val_fraction=data.val_fraction,
            seed=seed,
        )
    except MissingColumnError as e:
        raise e.with_fix("Set data.text_column to the column that holds the text.") from None
    return shards_dir


def _built_from(shards_dir: Path, data: LMData, seed: int) -> bool:
    """True when shards under a run directory were built from this data: a run re-made in the
    same out_dir with another corpus must not train on the old one."""
    meta = read_json(shards_dir / "meta.json")
    built = (
        meta.get("source"),
        meta.get("text_column"),
        meta.get("val_fraction"),
        meta.get("seed"),
    )
    return built == (str(data.path), data.text_column, data.val_fraction, seed)
