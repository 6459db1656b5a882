import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data.sources import iter_documents, iter_texts, list_files
from lmforge.errors import DataError


def test_reads_every_format_in_a_directory(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file\nwith two lines")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "from jsonl"}) + "\n\n" + json.dumps({"body": "second"}) + "\n"
    )
    pq.write_table(pa.table({"body": ["from parquet"], "source": ["pq"]}), tmp_path / "c.parquet")
    (tmp_path / "d.csv").write_text('id,body\n1,"from csv, with a comma"\n')
    (tmp_path / ".hidden.txt").write_text("skipped")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    texts = list(iter_texts(tmp_path / "a.txt")) + [
        d["text"]
        for f in ("b.jsonl", "c.parquet", "d.csv")
        for d in iter_documents(tmp_path / f, "body")
    ]
    assert texts == [
        "plain text file\nwith two lines",
        "from jsonl",
        "second",
        "from parquet",
        "from csv, with a comma",
    ]
    assert [p.name for p in list_files(tmp_path)] == ["a.txt", "b.jsonl", "c.parquet", "d.csv"]
    assert next(iter_documents(tmp_path / "c.parquet", "body"))["source"] == "pq"


def test_missing_column_lists_the_columns_that_exist(tmp_path):
    (tmp_path / "d.csv").write_text("id,body\n1,x\n")
    with pytest.raises(DataError, match=r"no column 'text'.*id, body"):
        list(iter_texts(tmp_path / "d.csv"))
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e.parquet has no column 'text'.*content"):
        list(iter_texts(tmp_path / "e.parquet"))


def test_missing_column_fix_names_the_commands_own_option(tmp_path, capsys):
    """The reader does not know how a column is named; each command's message says how."""
    from lmforge.cli import main

    (tmp_path / "d.csv").write_text("id,body\n1,x\n")
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--data",
                str(tmp_path / "d.csv"),
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no column 'text'" in err and "id, body" in err and "--text-column" in err
    assert not (tmp_path / "tok").exists()


def test_non_utf8_file_names_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt is not valid UTF-8.*iconv"):
        list(iter_texts(bad))


def test_empty_directory_and_missing_path(tmp_path):
    (tmp_path / "readme.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError, match="no readable data files"):
        list_files(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        list_files(tmp_path / "nope")


def test_bad_json_line_is_located(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2 is not valid JSON"):
        list(iter_texts(tmp_path / "x.jsonl"))


def test_corrupt_parquet_is_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet is not a readable parquet file"):
        list(iter_texts(tmp_path / "broken.parquet"))
