"""The curated corpus on disk: parquet shards (text, source) and stats.json, the layout of
data/default, written the same way by both engines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.utils import write_json


class CorpusWriter:
    """Documents into shards of ``shard_docs`` rows, in the order given, each shard named by
    ``name(k)``; counts documents, characters and words per source as they go."""

    def __init__(self, folder: Path, shard_docs: int, name: Callable[[int], str]):
        self.folder, self.shard_docs, self.name = Path(folder), shard_docs, name
        self.per_source: dict[str, dict] = {}
        self.shards = 0
        self._rows: list[tuple[str, str]] = []

    def add(self, text: str, source: str) -> None:
        s = self.per_source.setdefault(source, {"documents": 0, "characters": 0, "words": 0})
        s["documents"] += 1
        s["characters"] += len(text)
        s["words"] += len(text.split())
        self._rows.append((text, source))
        if len(self._rows) == self.shard_docs:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        table = pa.table({"text": [t for t, _ in self._rows], "source": [s for _, s in self._rows]})
        pq.write_table(table, self.folder / self.name(self.shards), compression="zstd")
        self.shards += 1
        self._rows.clear()


def write_stats(folder: Path, per_source: dict, shards: int, inputs, cfg) -> None:
    """stats.json: per source and in total, the shard count, and what made the corpus (a rerun
    with the same input and config may replace it; another may not, without --overwrite)."""
    write_json(
        Path(folder) / "stats.json",
        {
            "sources": per_source,
            "total": {
                key: sum(s[key] for s in per_source.values())
                for key in ("documents", "characters", "words")
            },
            "shards": shards,
            "curated_from": str(inputs),
            "curation": cfg.model_dump(mode="json"),
        },
    )
