import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.config import load_config
from lmforge.data.curate import (
    RULES,
    CurateConfig,
    MinHasher,
    NormalizeConfig,
    QualityConfig,
    curate,
    estimated_jaccard,
    normalize_text,
    optimal_bands,
    quality_failures,
    shingle_words,
)
from lmforge.data.sources import iter_documents, iter_texts
from lmforge.errors import ConfigError, DataError

STOP = ["the", "of", "and", "to", "with", "that", "be", "have"]
_rng = random.Random(7)
VOCAB = sorted(
    {
        "".join(_rng.choice("abcdefghijklmnoprstuvw") for _ in range(_rng.randint(3, 9)))
        for _ in range(600)
    }
)


def words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(STOP) if rng.random() < 0.25 else rng.choice(VOCAB) for _ in range(n)]


def prose(ws: list[str], rng: random.Random) -> str:
    """Sentences of 8-14 words: a capital, a full stop."""
    out, i = [], 0
    while i < len(ws):
        k = rng.randint(8, 14)
        s = " ".join(ws[i : i + k])
        out.append(s[0].upper() + s[1:] + ".")
        i += k
    return " ".join(out)


def good_doc(rng: random.Random, n: int = 80) -> str:
    return prose(words(rng, n), rng)


def junk_docs(rng: random.Random) -> dict[str, str]:
    """One document per rule that fails that rule first (in RULES order)."""
    two_letter = ["".join(rng.choice("bcdfgkmnpt") for _ in range(2)) for _ in range(60)]
    seq = words(rng, 20)
    a_line = "A short heading line"
    body = "\n".join(good_doc(rng, 8) for _ in range(12))
    return {
        "word_count": "Hi there.",
        "mean_word_length": " ".join(two_letter[:30] + ["to", "of", "be"] + two_letter[30:]) + ".",
        "symbol_ratio": " ".join(
            ("#" + w if k % 6 == 0 else w) for k, w in enumerate(words(rng, 70))
        ),
        "bullet_lines": "\n".join("- " + good_doc(rng, 8) for _ in range(8)),
        "ellipsis_lines": "\n".join(
            good_doc(rng, 12)[:-1] + ("..." if k < 4 else ".") for k in range(10)
        ),
        "alpha_words": " ".join(
            (str(rng.randint(10, 99)) if k % 3 == 0 else w) for k, w in enumerate(words(rng, 60))
        )
        + ".",
        "stop_words": prose([rng.choice(VOCAB) for _ in range(60)], rng),
        "digit_fraction": " ".join(
            (w + "12345678" if k % 3 == 0 else w) for k, w in enumerate(words(rng, 60))
        )
        + ".",
        "line_punctuation": "\n".join(good_doc(rng, 6)[:-1] for _ in range(6)),
        "duplicate_lines": "\n".join([good_doc(rng, 6) for _ in range(6)] * 2),
        "duplicate_paragraphs": f"{a_line}\n\n{body}\n\n{a_line}",
        "top_ngrams": " ".join(w for _ in range(12) for w in ["big", "cat", *words(rng, 3)]) + ".",
        "duplicate_ngrams": prose(seq + words(rng, 40) + seq, rng),
    }


def all_rules_on() -> CurateConfig:
    cfg = CurateConfig()
    cfg.quality.line_punctuation.enabled = True
    return cfg


def build_corpus(root, seed: int = 0) -> dict:
    """~300 documents in two parquet files: good prose, planted exact and near duplicates,
    related-but-distinct pairs (Jaccard ~0.55) and one junk document per quality rule."""
    rng = random.Random(seed)
    good = [good_doc(rng) for _ in range(250)]
    exact = [good[k] for k in range(0, 40, 4)]
    near = []
    for k in range(10):
        base = words(rng, 200)
        variant = list(base)
        if k % 2:  # one word inserted: the later copy is longer, so it is the one kept
            variant.insert(100, rng.choice(VOCAB))
        else:  # a word replaced by one as long: same length, so the first copy is kept
            p = next(p for p in range(100, 200) if base[p] in VOCAB)
            variant[p] = rng.choice([w for w in VOCAB if len(w) == len(base[p]) and w != base[p]])
        near.append((" ".join(base) + ".", " ".join(variant) + "."))
    distinct = []
    for _ in range(3):
        base = words(rng, 200)
        other = base[:75] + words(rng, 50) + base[125:]
        distinct.append((" ".join(base) + ".", " ".join(other) + "."))
    junk = junk_docs(rng)
    rows = [(t, "good") for t in good] + [(t, "junk") for t in junk.values()]
    rows += [(t, "distinct") for pair in distinct for t in pair]
    random.Random(seed + 1).shuffle(rows)
    # Copies after their originals, so "first in input order" is the original.
    rows += [(t, "near") for pair in near for t in pair]
    rows += [("  " + t.upper().replace(" ", "  \t "), "exact") for t in exact]
    root.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for name, part in (("part-0.parquet", rows[:half]), ("part-1.parquet", rows[half:])):
        table = pa.table({"text": [t for t, _ in part], "source": [s for _, s in part]})
        pq.write_table(table, root / name)
    return {"good": good, "exact": exact, "near": near, "distinct": distinct, "junk": junk}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    planted = build_corpus(root / "in")
    summary = curate(
        root / "in", root / "out", all_rules_on(), report=root / "report", progress=False, workers=1
    )
    kept = list(iter_texts(root / "out"))
    return root, planted, summary, kept


def test_normalisation_forms_and_whitespace():
    text = "\n\n\tThe ﬁrst\u00a0line  \r\nsecond\u200b line\x07\n\n\n\nlast   \n"
    tidy = normalize_text(text, NormalizeConfig())
    assert tidy == "\tThe ﬁrst line\nsecond line\n\nlast"  # NFC keeps the ligature
    assert normalize_text(text, NormalizeConfig(unicode="NFKC")).startswith("\tThe first")
    assert normalize_text(text, NormalizeConfig(whitespace="collapse")) == (
        "The ﬁrst line second line last"
    )
    assert normalize_text(text, NormalizeConfig(unicode="none", whitespace="keep")) == text


def test_each_rule_catches_its_junk_and_passes_good_prose():
    rng = random.Random(3)
    cfg = all_rules_on().quality
    for rule, text in junk_docs(rng).items():
        failures = quality_failures(text, cfg)
        assert failures and next(iter(failures)) == rule, (rule, failures, text[:200])
    for _ in range(50):
        assert quality_failures(good_doc(rng), cfg) == {}


def test_each_rule_can_be_switched_off():
    rng = random.Random(4)
    for rule, text in junk_docs(rng).items():
        cfg = all_rules_on().quality
        getattr(cfg, rule).enabled = False
        assert rule not in quality_failures(text, cfg)


def test_word_count_upper_bound_and_short_document_exemptions():
    cfg = QualityConfig()
    cfg.word_count.max_words = 50
    assert "word_count" in quality_failures(good_doc(random.Random(0), 60), cfg)
    # A short gloss without stop words is judged by word count only.
    assert quality_failures("red (adjective): colored red.", QualityConfig()) == {}
    gopher = QualityConfig()
    gopher.stop_words.min_words = 0
    assert "stop_words" in quality_failures("red (adjective): colored red.", gopher)


def test_curation_removes_planted_duplicates_and_junk_keeps_good_docs(curated):
    _, planted, summary, kept = curated
    kept_set = set(kept)
    assert set(planted["good"]) <= kept_set
    # Exact copies (different case and spacing) are gone: each good text appears once.
    assert all(kept.count(t) == 1 for t in planted["good"])
    assert summary["steps"][1]["documents_removed"] == len(planted["exact"])
    assert not kept_set & set(planted["junk"].values())
    filters = summary["steps"][2]["filters"]
    assert {name: f["documents_removed"] for name, f in filters.items()} == dict.fromkeys(RULES, 1)


def test_near_duplicate_pairs_merge_keeping_longest_then_first(curated):
    _, planted, summary, kept = curated
    kept_set = set(kept)
    for k, (first, second) in enumerate(planted["near"]):
        # odd k: the second copy has one word more and is kept; even k: same length, first kept
        winner, loser = (second, first) if k % 2 else (first, second)
        assert winner in kept_set and loser not in kept_set, k
    for a, b in planted["distinct"]:  # Jaccard ~0.55 < 0.8: both stay
        assert a in kept_set and b in kept_set
    nd = summary["near_dedup"]
    assert nd["cluster_sizes"] == {2: len(planted["near"])}
    assert summary["steps"][3]["documents_removed"] == len(planted["near"])


def test_report_counts_add_up_and_files_exist(curated):
    root, _, summary, kept = curated
    report = root / "report"
    for name in ("curation.json", "curation.md", "removed_examples.json", "near_dup_clusters.png"):
        assert (report / name).is_file(), name
    assert json.loads((report / "curation.json").read_text()) == json.loads(json.dumps(summary))
    steps = summary["steps"]
    for prev, step in zip(steps, steps[1:]):
        assert step["documents_in"] == prev["documents_out"]
    for step in steps:
        assert step["documents_in"] == step["documents_out"] + step["documents_removed"]
        assert step["characters_in"] == step["characters_out"] + step["characters_removed"]
    assert summary["documents_out"] == len(kept) == steps[-1]["documents_out"]
    sources = summary["sources"]
    assert sum(s["documents_in"] for s in sources.values()) == summary["documents_in"]
    assert sum(s["documents_out"] for s in sources.values()) == summary["documents_out"]
    assert sources["junk"]["removed"]["quality"] == len(RULES)
    assert sources["exact"]["removed"]["exact_dedup"] == 10
    examples = json.loads((report / "removed_examples.json").read_text())
    assert set(RULES) | {"exact_dedup", "near_dedup"} <= set(examples)
    assert examples["near_dedup"][0]["estimated_jaccard"] >= 0.8
    assert "| near_dedup |" in (report / "curation.md").read_text()


def test_output_is_a_corpus_like_data_default(curated):
    root, _, summary, kept = curated
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["corpus-00000.parquet", "stats.json"]
    assert pq.read_schema(out / "corpus-00000.parquet").names == ["text", "source"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"]["documents"] == len(kept) == summary["documents_out"]
    assert stats["total"]["characters"] == sum(map(len, kept)) == summary["characters_out"]
    assert {d["source"] for d in iter_documents(out)} == {"good", "near", "distinct"}


def test_same_output_whatever_the_number_of_workers(tmp_path):
    build_corpus(tmp_path / "in", seed=5)
    cfg = CurateConfig(batch_docs=64)  # several batches, so two workers really share them
    curate(tmp_path / "in", tmp_path / "w1", cfg, progress=False, workers=1)
    curate(tmp_path / "in", tmp_path / "w2", cfg, progress=False, workers=2)
    for name in ("corpus-00000.parquet", "stats.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_bands_and_rows_match_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold, num_perm in ((0.5, 128), (0.8, 128), (0.95, 128), (0.7, 64)):
        ours = optimal_bands(threshold, num_perm, 0.5, 0.5)
        assert ours == lsh._optimal_param(threshold, num_perm, 0.5, 0.5), threshold
    assert optimal_bands(0.8, 128) == (9, 13)


def test_signatures_equal_datasketch_for_the_same_shingle_hashes():
    datasketch = pytest.importorskip("datasketch")
    hasher = MinHasher(num_perm=128, ngram=5, seed=1)
    rng = random.Random(1)
    texts = [good_doc(rng, n) for n in (3, 7, 40, 120)]
    hashes, doc = hasher.shingle_hashes([shingle_words(t) for t in texts])
    ours = hasher.signatures_of_hashes(hashes, doc, len(texts))
    for k in range(len(texts)):
        m = datasketch.MinHash(num_perm=128, seed=1, hashfunc=lambda x: x)
        m.update_batch([int(h) for h in hashes[doc == k]])
        assert np.array_equal(ours[k], m.hashvalues), k


def test_minhash_estimates_jaccard_within_its_standard_error():
    hasher = MinHasher(num_perm=128, ngram=5, seed=1)
    rng = random.Random(2)
    for changed in (0, 10, 30, 60, 100, 150):
        base = words(rng, 200)
        other = base[:20] + words(rng, changed) + base[20 + changed :]
        a, b = (set(zip(*(ws[i:] for i in range(5)))) for ws in (base, other))
        true = len(a & b) / len(a | b)
        sig, _ = hasher.signatures([" ".join(base), " ".join(other)])
        est = float(estimated_jaccard(sig[0], sig[1]))
        stderr = (true * (1 - true) / 128) ** 0.5
        assert abs(est - true) <= 4 * stderr + 0.02, (changed, true, est)


@pytest.mark.parametrize("threshold", [0, 0.0, 1.5, -0.2])
def test_threshold_outside_zero_one_is_a_config_error(threshold):
    with pytest.raises(ConfigError, match=r"threshold must be .* in \(0, 1\]"):
        CurateConfig(near_dedup={"threshold": threshold})
    with pytest.raises(ConfigError, match="threshold"):
        load_config(CurateConfig, None, [f"near_dedup.threshold={threshold}"])
    assert CurateConfig(near_dedup={"threshold": 1.0}).near_dedup.threshold == 1.0


def test_corrupt_parquet_names_the_file_or_is_skipped(tmp_path):
    build_corpus(tmp_path / "in")
    bad = tmp_path / "in" / "part-2.parquet"
    bad.write_bytes(b"PAR1" + b"\x00garbage" * 100)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        curate(tmp_path / "in", tmp_path / "out", CurateConfig(), progress=False, workers=1)
    assert not (tmp_path / "out").exists()
    cfg = CurateConfig(input={"on_error": "skip"})
    summary = curate(
        tmp_path / "in", tmp_path / "out", cfg, report=tmp_path / "rep", progress=False, workers=1
    )
    assert [f["file"] for f in summary["files_skipped"]] == [str(bad)]
    assert summary["documents_out"] > 250
    assert str(bad) in (tmp_path / "rep" / "curation.md").read_text()


def test_documents_over_max_chars_are_truncated_or_skipped(tmp_path):
    (tmp_path / "in").mkdir()
    big = good_doc(random.Random(0), 2000)
    (tmp_path / "in" / "big.txt").write_text(big)
    (tmp_path / "in" / "small.txt").write_text(good_doc(random.Random(1), 80))
    cfg = CurateConfig(input={"max_chars": 1000})
    summary = curate(tmp_path / "in", tmp_path / "out", cfg, progress=False, workers=1)
    texts = list(iter_texts(tmp_path / "out"))
    assert summary["normalize"]["documents_truncated"] == 1
    assert len(texts) == 2 and big[:1000].rstrip() in texts
    cfg = CurateConfig(input={"max_chars": 1000, "too_long": "skip"})
    summary = curate(tmp_path / "in", tmp_path / "out", cfg, progress=False, overwrite=True)
    assert summary["steps"][0]["documents_removed"] == 1
    assert summary["steps"][0]["characters_removed"] == len(big)
    assert len(list(iter_texts(tmp_path / "out"))) == 1


def test_an_out_holding_another_run_is_replaced_only_with_overwrite(tmp_path):
    build_corpus(tmp_path / "in")
    out = tmp_path / "out"
    curate(tmp_path / "in", out, CurateConfig(), progress=False, workers=1)
    before = (out / "corpus-00000.parquet").read_bytes()
    curate(tmp_path / "in", out, CurateConfig(), progress=False, workers=1)  # the same run: fine
    other = CurateConfig(near_dedup={"threshold": 0.5})
    with pytest.raises(ConfigError, match="already holds something else.*--overwrite"):
        curate(tmp_path / "in", out, other, progress=False, workers=1)
    assert (out / "corpus-00000.parquet").read_bytes() == before  # nothing lost
    curate(tmp_path / "in", out, other, progress=False, workers=1, overwrite=True)
    assert (
        json.loads((out / "stats.json").read_text())["curation"]["near_dedup"]["threshold"] == 0.5
    )
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("not a corpus")
    with pytest.raises(ConfigError, match="already holds something else"):
        curate(tmp_path / "in", notes, CurateConfig(), progress=False, workers=1)
    assert (notes / "mine.txt").read_text() == "not a corpus"


def test_empty_input_is_a_data_error(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(DataError, match="no readable data files"):
        curate(tmp_path / "in", tmp_path / "out", CurateConfig(), progress=False)
    (tmp_path / "in" / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no documents"):
        curate(tmp_path / "in", tmp_path / "out", CurateConfig(), progress=False)
    assert not (tmp_path / "out").exists()


def test_all_documents_removed_is_a_data_error_with_a_report(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "Hi."}\n{"text": "Yo!"}\n')
    with pytest.raises(DataError, match="removed all 2 documents"):
        curate(tmp_path / "in", tmp_path / "out", CurateConfig(), report=tmp_path / "rep")
    assert not (tmp_path / "out").exists()
    assert json.loads((tmp_path / "rep" / "curation.json").read_text())["documents_out"] == 0


def test_cli_curates_and_refuses_a_bad_threshold(tmp_path, capsys):
    from lmforge.cli import main

    build_corpus(tmp_path / "in")
    bad = [
        "data",
        "curate",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "x"),
        "--near-dup",
        "1.5",
    ]
    assert main(bad) == 2 and "threshold" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    args = [
        "data",
        "curate",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
        "--near-dup",
        "0.8",
        "--report",
        str(tmp_path / "report"),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents_out"] < out["documents_in"]
    assert len(list(iter_texts(tmp_path / "out"))) == out["documents_out"]
    assert (tmp_path / "report" / "curation.md").is_file()
