"""Read documents from txt / jsonl / parquet / csv files, or a directory of them.

Every reader yields plain dicts with at least ``text``; parquet and jsonl files may carry a
``source`` column that is passed through (the default corpus uses it for per-source stats).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from lmforge.errors import DataError, MissingColumnError

TEXT_SUFFIXES = {".txt", ".md", ".text"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet", ".csv"}


def list_files(path: str | os.PathLike) -> list[Path]:
    """The readable data files at ``path`` (a file, or a directory searched recursively)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type '{path.suffix}'. Supported: {', '.join(sorted(SUFFIXES))}"
            )
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(
            f"no readable data files in directory {path}. Put .txt, .jsonl, .parquet or .csv "
            "files there (each jsonl/parquet/csv with a text column)."
        )
    return files


def _decode_error(file: Path, err: UnicodeDecodeError, data: bytes | None = None) -> DataError:
    return DataError(
        f"{file} is not valid UTF-8 (byte offset {err.start}: {err.reason}). Convert it first, e.g. "
        f"`iconv -f latin1 -t utf-8 {file} > {file.with_suffix('.utf8' + file.suffix)}`, and remove the original."
    )


def _read_text(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _decode_error(file, e) from None


def iter_jsonl_objects(file: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; a clear error for any bad line."""
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"{file}:{lineno} is not valid UTF-8 ({e.reason})") from None
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{file}:{lineno} is not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{file}:{lineno} must hold a JSON object, not {type(obj).__name__}"
                )
            yield lineno, obj


def _iter_jsonl(file: Path, text_column: str) -> Iterator[dict]:
    for _, obj in iter_jsonl_objects(file):
        if text_column not in obj:
            raise MissingColumnError(file, text_column, obj.keys())
        yield {**obj, "text": str(obj[text_column])}


def _iter_parquet(file: Path, text_column: str) -> Iterator[dict]:
    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{file} is not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    if text_column not in names:
        raise MissingColumnError(file, text_column, names)
    columns = [text_column] + [c for c in ("source", "id") if c in names and c != text_column]
    for batch in pf.iter_batches(columns=columns, batch_size=4096):
        cols = batch.to_pydict()
        for i, text in enumerate(cols[text_column]):
            row = {c: cols[c][i] for c in columns if c != text_column}
            row["text"] = "" if text is None else str(text)
            yield row


def _iter_csv(file: Path, text_column: str) -> Iterator[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(file, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                raise MissingColumnError(file, text_column, reader.fieldnames or [])
            for row in reader:
                yield {**row, "text": row[text_column] or ""}
    except UnicodeDecodeError as e:
        raise _decode_error(file, e) from None


def iter_file(file: Path, text_column: str = "text") -> Iterator[dict]:
    suffix = file.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        # A plain text file is one document: a book, a man page, a source file.
        yield {"text": _read_text(file), "source": file.stem}
    elif suffix == ".jsonl":
        yield from _iter_jsonl(file, text_column)
    elif suffix == ".parquet":
        yield from _iter_parquet(file, text_column)
    elif suffix == ".csv":
        yield from _iter_csv(file, text_column)
    else:
        raise DataError(f"{file}: unsupported file type '{suffix}'")


def iter_documents(path: str | os.PathLike, text_column: str = "text") -> Iterator[dict]:
    """Every document under ``path`` in a stable order, each a dict with at least ``text``."""
    for file in list_files(path):
        yield from iter_file(file, text_column)


def iter_texts(path: str | os.PathLike, text_column: str = "text") -> Iterator[str]:
    for doc in iter_documents(path, text_column):
        yield doc["text"]
