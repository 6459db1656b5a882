import gzip
import os

import pyarrow.parquet as pq
import pytest

from lmforge.data import corpora
from lmforge.data.corpora import (
    LEXNAMES,
    dictd_b64,
    iter_fortunes,
    iter_gcide,
    iter_wordnet_synsets,
    parse_bible_output,
    render_synset,
    split_gloss,
    strip_gcide,
)
from lmforge.errors import DataError

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n  2 Princeton University\n"
NOUN = (
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is perceived "
    "or known or inferred to have its own distinct existence (living or nonliving)  \n"
    '02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a member of the genus Canis; "the dog barked all night"  \n'
)
VERB = (
    "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 002 ! 00005041 v 0101 + 03110323 a 0301 02 + 01 00 + 02 00 "
    '| draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"; "The patient is respiring"  \n'
)
ADJ = '00019731 00 s 02 handy 0 ready_to_hand(p) 0 001 & 00019131 a 0000 | easy to reach; "found a handy spot for the can opener"  \n'


@pytest.fixture
def wordnet_dir(tmp_path):
    (tmp_path / "data.noun").write_text(HEADER + NOUN)
    (tmp_path / "data.verb").write_text(HEADER + VERB)
    (tmp_path / "data.adj").write_text(HEADER + ADJ)
    (tmp_path / "data.adv").write_text(HEADER)
    return tmp_path


def test_wordnet_synsets_are_parsed_completely(wordnet_dir):
    synsets = list(iter_wordnet_synsets(wordnet_dir))
    assert len(synsets) == 4
    entity, dog, breathe, handy = synsets
    assert (
        entity.lexname == "noun.Tops" and entity.words == ["entity"] and len(entity.pointers) == 3
    )
    assert entity.definition.startswith("that which is perceived") and entity.examples == []
    assert dog.lexname == "noun.animal" and dog.words == ["dog", "domestic dog"]
    assert dog.definition == "a member of the genus Canis" and dog.examples == [
        "the dog barked all night"
    ]
    assert breathe.lexname == "verb.body" and breathe.pos == "v"
    assert breathe.words == ["breathe", "take a breath", "respire", "suspire"]
    assert breathe.pointers[0] == ("!", 5041, "v", "0101")  # an antonym
    assert breathe.definition == "draw air into, and expel out of, the lungs"
    assert breathe.examples == [
        "I can breathe better when the air is clean",
        "The patient is respiring",
    ]
    assert (
        handy.words == ["handy", "ready to hand"]
        and handy.lexname == "adj.all"
        and handy.pos == "s"
    )
    assert (
        render_synset(dog)
        == 'dog, domestic dog (noun): a member of the genus Canis. "the dog barked all night"'
    )


def test_lexnames_are_the_45_wordnet_files_in_order():
    assert (
        len(LEXNAMES) == 45
        and LEXNAMES[0] == "adj.all"
        and LEXNAMES[29] == "verb.body"
        and LEXNAMES[44] == "adj.ppl"
    )


def test_gloss_without_examples_keeps_semicolons():
    assert split_gloss("a; b; c") == ("a; b; c", [])


def test_dictd_base64_is_most_significant_first():
    assert (
        dictd_b64("A") == 0
        and dictd_b64("B") == 1
        and dictd_b64("BA") == 64
        and dictd_b64("/") == 63
    )
    assert dictd_b64("5I") == 57 * 64 + 8


def test_gcide_entries_are_read_by_offset_and_stripped(tmp_path):
    entries = [
        'Allnight \\All"night`\\, n.\n   Light, fuel, or food for the whole night. [Obs.] --Bacon.\n   [1913 Webster]\n',
        'Allocate \\Al"lo*cate\\, v. t. [LL. allocatus, fr. L. ad + locare. See {Allow}.]\n   1. To distribute; to {allot}.\n      [1913 Webster]\n\n   2. To localize.\n',
    ]
    blob = "".join(entries).encode()

    def b64(n):
        return (
            "".join(corpora._B64[(n >> (6 * k)) & 63] for k in reversed(range(4))).lstrip("A")
            or "A"
        )

    index = ["00-database-info\tA\tB", f"allnight\t{b64(0)}\t{b64(len(entries[0].encode()))}"]
    off = len(entries[0].encode())
    index += [
        f"allocate\t{b64(off)}\t{b64(len(entries[1].encode()))}",
        f"allocated\t{b64(off)}\t{b64(len(entries[1].encode()))}",
    ]
    with gzip.open(tmp_path / "gcide.dict.dz", "wb") as f:
        f.write(blob)
    (tmp_path / "gcide.index").write_text("\n".join(index) + "\n")
    docs = list(iter_gcide(tmp_path))
    assert docs == [
        "Allnight, n. Light, fuel, or food for the whole night. --Bacon.",
        "Allocate, v. t. 1. To distribute; to allot.\n2. To localize.",
    ]
    assert strip_gcide("{a {b} c}") == "a b c"


def test_bible_output_is_grouped_by_chapter_with_wrapped_verses():
    out = "Genesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 And the earth was\nwithout form.\n\nGenesis 2\n\n  1 Thus the heavens were finished.\n"
    assert list(parse_bible_output(out)) == [
        (
            "Genesis 1",
            "In the beginning God created the heaven and the earth. And the earth was without form.",
        ),
        ("Genesis 2", "Thus the heavens were finished."),
    ]


def test_fortunes_split_on_percent_lines(tmp_path):
    (tmp_path / "wisdom").write_text("First fortune.\n%\nSecond\n  -- someone\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01")
    (tmp_path / "ascii-art").write_text("  /\\_/\\\n%\n")
    assert list(iter_fortunes(tmp_path)) == ["First fortune.", "Second\n  -- someone"]


def test_missing_package_names_the_apt_command_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(
        corpora.SOURCES,
        "gcide",
        (corpora.iter_gcide, [tmp_path / "nope" / "gcide.dict.dz"], "dict-gcide"),
    )
    with pytest.raises(DataError, match="apt-get install dict-gcide"):
        corpora.build_default_corpus(tmp_path / "out", sources=("gcide",), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    not os.path.exists("/usr/share/wordnet/data.noun"), reason="Debian wordnet-base not installed"
)
def test_real_debian_corpus_builds_with_every_source(tmp_path):
    stats = corpora.build_default_corpus(tmp_path / "c", max_docs_per_source=300, progress=False)
    assert {k: v["documents"] for k, v in stats["sources"].items()} == {
        "wordnet": 300,
        "gcide": 300,
        "kjv": 300,
        "fortunes": 300,
    }
    table = pq.read_table(tmp_path / "c" / "corpus-00000.parquet")
    assert table.column_names == ["text", "source"] and table.num_rows == 1200
    assert len(set(table.column("source").to_pylist()[:50])) > 1  # shuffled, not in source order


def test_python_stdlib_source_is_code_without_the_test_suite(tmp_path):
    from lmforge.data.corpora import iter_python_stdlib

    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "pkg" / "tests" / "test_mod.py").write_text("assert True\n")
    (tmp_path / "empty.py").write_text("\n")
    assert list(iter_python_stdlib(tmp_path)) == ["def f():\n    return 1\n"]
    real = next(iter_python_stdlib())  # the running interpreter's own library
    assert "import" in real or "def " in real
