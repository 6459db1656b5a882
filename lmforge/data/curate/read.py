"""Reading the input: every document of every file, with its source, in a stable order.

txt / jsonl / parquet / csv, via ``lmforge.data.sources``. A document longer than
``input.max_chars`` is truncated or skipped (a .txt file is read only that far); an unreadable
file (e.g. corrupt parquet) stops the run or is skipped and listed. Both passes of ``curate``
read through here, so document k is the same document in each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.curate.config import InputConfig
from lmforge.data.sources import iter_file, list_files
from lmforge.errors import DataError


def _read_txt(file: Path, max_chars: int) -> tuple[str, int]:
    """(text, its full length): only max_chars are held; the rest is counted, not kept."""
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read(max_chars)
            total = len(text)
            while chunk := f.read(1 << 20):
                total += len(chunk)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file} is not valid UTF-8 ({e.reason} at byte {e.start}); convert it with iconv"
        ) from None
    return text, total


def _file_documents(file: Path, cfg: InputConfig) -> Iterator[tuple[str, str, int]]:
    """(source, text, original length) of each document in one file."""
    if file.suffix.lower() in {".txt", ".md", ".text"}:
        text, total = _read_txt(file, cfg.max_chars)
        yield file.stem, text, total
        return
    for row in iter_file(file, cfg.text_column):
        # A file without a source column is its own source, as a .txt file is.
        source = row.get("source")
        yield (file.stem if source is None else str(source)), row["text"], len(row["text"])


def read_documents(
    inputs: str | os.PathLike, cfg: InputConfig, skipped_files: list[dict] | None = None
) -> Iterator[tuple[str, str, int, str]]:
    """(source, text, original length, note) of every document, in a stable order. note is ""
    or "truncated" / "skipped" for a document over max_chars (its text cut to max_chars)."""
    for file in list_files(inputs):
        yield from read_file(file, cfg, skipped_files)


def read_file(
    file: Path, cfg: InputConfig, skipped_files: list[dict] | None = None
) -> Iterator[tuple[str, str, int, str]]:
    """``read_documents`` for one file (the Ray engine reads each file in its own task)."""
    n = 0
    try:
        for source, text, total in _file_documents(file, cfg):
            n += 1
            note = ""
            if total > cfg.max_chars:
                # A skipped document keeps its head too, for the report's examples.
                note = "truncated" if cfg.too_long == "truncate" else "skipped"
                text = text[: cfg.max_chars]
            yield source, text, total, note
    except Exception as e:
        # pyarrow raises OSError / ArrowInvalid mid-file for a damaged row group; sources
        # raises DataError for what it can see when opening. Either way: name the file.
        reason = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (DataError, OSError, ValueError)):
            raise
        if cfg.on_error == "stop":
            raise DataError(
                f"cannot read {file} (after {n} documents): {reason}. Fix or remove the "
                "file, or set input.on_error=skip to skip unreadable files"
            ) from None
        if skipped_files is not None:
            skipped_files.append({"file": str(file), "documents_read": n, "error": reason})
