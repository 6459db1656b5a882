"""The WordNet instruction data: loadable, split by word, and right by WordNet itself.

Answers are checked against WordNet read here directly (a synset's offset is its byte
offset in the data file, wndb(5WN)), not through lmforge's parser."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.data import chat
from lmforge.data.corpora import LEXNAMES
from lmforge.data.instructions import CATEGORIES, TASKS, build_instructions
from lmforge.errors import DataError

WORDNET = Path("/usr/share/wordnet")
DATA_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "s": "data.adj", "r": "data.adv"}
INDEX_FILES = {"n": "index.noun", "v": "index.verb", "a": "index.adj", "r": "index.adv"}
OUTPUT_FILES = ("train", "val", "preferences-train", "preferences-val")

pytestmark = pytest.mark.skipif(
    not (WORDNET / "data.noun").exists(), reason="Debian wordnet-base not installed"
)


# --- WordNet, read independently -------------------------------------------------------------


def synset_line(pos: str, offset: int, wordnet=WORDNET) -> str:
    with open(wordnet / DATA_FILES[pos], "rb") as f:
        f.seek(offset)
        line = f.readline().decode()
    assert line.startswith(f"{offset:08d} ")
    return line


def parse_line(line: str) -> dict:
    data, gloss = line.split(" | ", 1)
    f = data.split()
    n_words = int(f[3], 16)
    words = [re.sub(r"\(\w+\)$", "", w) for w in f[4 : 4 + 2 * n_words : 2]]
    i = 4 + 2 * n_words
    pointers = [f[j : j + 4] for j in range(i + 1, i + 1 + 4 * int(f[i]), 4)]
    definition = gloss.split('"')[0].strip().rstrip(";").strip()
    examples = re.findall(r'"([^"]*)"', gloss)
    return {
        "lexname": LEXNAMES[int(f[1])],
        "words": words,
        "pointers": pointers,
        "definition": definition,
        "examples": examples,
    }


def synset(key: str) -> dict:  # "n02084071"
    return parse_line(synset_line(key[0], int(key[1:])))


def antonyms(s: dict, word: str) -> set[str]:
    out = set()
    for symbol, offset, pos, source_target in s["pointers"]:
        source, target = int(source_target[:2], 16), int(source_target[2:], 16)
        if symbol == "!" and s["words"][source - 1] == word:
            out.add(parse_line(synset_line(pos, int(offset)))["words"][target - 1])
    return out


@pytest.fixture(scope="module")
def index() -> dict[str, list[tuple[str, list[int], int]]]:
    """word -> [(pos, offsets in sense order, sense-tagged count)] from the index files."""
    out = {}
    for pos, name in INDEX_FILES.items():
        for line in open(WORDNET / name):
            f = line.split()
            if line.startswith(" ") or not re.fullmatch("[a-z]+", f[0]):
                continue
            p_cnt = int(f[3])
            out.setdefault(f[0], []).append(
                (pos, [int(o) for o in f[6 + p_cnt :]], int(f[5 + p_cnt]))
            )
    return out


def senses(index, word: str) -> list[dict]:
    """Every synset with this exact lemma, in any part of speech."""
    found = []
    for pos, offsets, _ in index[word]:
        for offset in offsets:
            s = parse_line(synset_line(pos, offset))
            if word in s["words"]:
                found.append(s)
    return found


# --- the build -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("instructions") / "data"
    info = build_instructions(out, seed=0, max_train=2000, max_val=200, progress=False)
    records = {name: read(out / f"{name}.jsonl") for name in OUTPUT_FILES}
    return out, info, records


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_text(answer: str, candidates: list[str]) -> bool:
    """The answer is one of the candidates, up to case, spaces and a final period."""
    plain = [c.strip().rstrip(".").lower() for c in candidates]
    return answer.strip().rstrip(".").lower() in plain


def quoted_answer(text: str) -> str:
    return re.findall(r"'([^']*)'", text)[-1]  # "A synonym of 'big' is 'large'." -> large


def test_files_load_with_the_chat_loaders(built):
    out, info, records = built
    assert len(chat.load_conversations(out / "train.jsonl")) == len(records["train"]) <= 2000
    assert len(chat.load_conversations(out / "val.jsonl")) == len(records["val"]) <= 200
    assert len(chat.load_preferences(out / "preferences-train.jsonl")) <= 1000
    assert len(chat.load_preferences(out / "preferences-val.jsonl")) <= 200
    for name in OUTPUT_FILES:
        assert sum(info["counts"][name].values()) == len(records[name])


def test_tasks_are_balanced_with_varied_phrasings_and_some_system_turns(built):
    _, info, records = built
    assert info["counts"]["train"] == {t: 400 for t in TASKS}
    assert info["counts"]["val"] == {t: 40 for t in TASKS}
    assert info["counts"]["preferences-train"] == {t: 200 for t in TASKS}
    for task in TASKS:
        questions = {
            r["messages"][-2]["content"].replace(r["word"], "X")
            for r in records["train"]
            if r["task"] == task
        }
        assert len(questions) >= 4
    with_system = sum(r["messages"][0]["role"] == "system" for r in records["train"])
    assert 0.1 < with_system / len(records["train"]) < 0.3


def test_no_val_word_is_a_train_subject(built):
    _, info, records = built
    train_words = {r["word"] for name in ("train", "preferences-train") for r in records[name]}
    val_words = {r["word"] for name in ("val", "preferences-val") for r in records[name]}
    assert val_words and not val_words & train_words
    assert val_words <= set(info["heldout_words"]) and not train_words & set(info["heldout_words"])
    assert info["heldout_words_count"] == len(info["heldout_words"])


def test_define_answers_the_definition_of_the_words_main_sense(built, index):
    _, _, records = built
    defines = [r for r in records["train"] if r["task"] == "define"]
    for r in defines[:100]:
        s = synset(r["synset"])
        assert r["word"] in s["words"]
        d = s["definition"]
        assert r["messages"][-1]["content"] == d[0].upper() + d[1:] + (
            "" if d[-1] in ".?!" else "."
        )
        # the main sense: the first synset of its part of speech in the index
        pos = "a" if r["synset"][0] == "s" else r["synset"][0]
        first = next(offsets[0] for p, offsets, _ in index[r["word"]] if p == pos)
        assert int(r["synset"][1:]) == first


def test_caps_spend_on_common_words_first(built, index):
    _, _, records = built
    for r in records["train"]:
        assert sum(tagged for _, _, tagged in index[r["word"]]) > 0, r["word"]


def test_synonym_antonym_sentence_and_category_answers_are_wordnet_facts(built):
    _, _, records = built
    checked = dict.fromkeys(TASKS, 0)
    for r in records["train"] + records["val"]:
        s, word, answer = synset(r["synset"]), r["word"], r["messages"][-1]["content"]
        if r["task"] == "synonym":
            assert quoted_answer(answer) in s["words"] and quoted_answer(answer) != word
        elif r["task"] == "antonym":
            assert quoted_answer(answer) in antonyms(s, word)
        elif r["task"] == "sentence":
            assert re.search(rf"\b{word}\b", answer, re.IGNORECASE)
            assert same_text(answer, s["examples"])
        elif r["task"] == "category":
            assert answer.endswith(f"category of {CATEGORIES[s['lexname']]}.")
        checked[r["task"]] += 1
    assert all(checked.values())


def test_no_answer_comes_from_an_offensive_sense(built):
    _, _, records = built
    for name in OUTPUT_FILES:
        for r in records[name]:
            gloss = synset(r["synset"])["definition"]
            assert not re.search(r"ethnic slur|offensive term|obscene", gloss), (r["word"], gloss)


def test_rejected_is_a_wrong_answer_for_the_word(built, index):
    _, _, records = built
    for r in records["preferences-train"][:300] + records["preferences-val"]:
        assert r["chosen"].strip() != r["rejected"].strip()
        word, rejected, all_senses = r["word"], r["rejected"], senses(index, r["word"])
        if r["task"] == "define":
            assert not same_text(rejected, [s["definition"] for s in all_senses])
        elif r["task"] == "synonym":
            assert quoted_answer(rejected) not in {w for s in all_senses for w in s["words"]}
        elif r["task"] == "antonym":
            assert quoted_answer(rejected) not in {a for s in all_senses for a in antonyms(s, word)}
        elif r["task"] == "sentence":
            assert not re.search(rf"\b{word}\b", rejected, re.IGNORECASE)
        else:
            assert not any(
                rejected.endswith(f"category of {CATEGORIES[s['lexname']]}.")
                for s in all_senses
                if s["lexname"] in CATEGORIES
            )


# --- determinism, on a slice of WordNet to stay fast ----------------------------------------


@pytest.fixture(scope="module")
def small_wordnet(tmp_path_factory):
    """The first 3,000 synsets of each data file, and the index lines that point into them."""
    out = tmp_path_factory.mktemp("wordnet")
    kept = {}
    for pos in ("n", "v", "a", "r"):
        lines = (WORDNET / DATA_FILES[pos]).read_text().splitlines(keepends=True)
        header = [x for x in lines if x.startswith("  ")]
        body = [x for x in lines if not x.startswith("  ")][:3000]
        (out / DATA_FILES[pos]).write_text("".join(header + body))
        kept[pos] = {x.split()[0] for x in body}
    for pos, name in INDEX_FILES.items():
        lines = (WORDNET / name).read_text().splitlines(keepends=True)
        (out / name).write_text(
            "".join(x for x in lines if x.startswith("  ") or set(x.split()) & kept[pos])
        )
    return out


BUILD = (
    "import sys; from lmforge.data.instructions import build_instructions; "
    "build_instructions(sys.argv[1], seed=int(sys.argv[2]), max_train=600, max_val=100, "
    "progress=False, wordnet_dir=sys.argv[3])"
)


def test_same_seed_gives_identical_bytes_across_processes(small_wordnet, tmp_path):
    build_instructions(
        tmp_path / "a",
        seed=0,
        max_train=600,
        max_val=100,
        progress=False,
        wordnet_dir=small_wordnet,
    )
    # Another process with another string-hash seed: set or dict order cannot leak in.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    for name, seed in (("b", 0), ("c", 1)):
        subprocess.run(
            [sys.executable, "-c", BUILD, str(tmp_path / name), str(seed), str(small_wordnet)],
            check=True,
            env=env,
        )
    for name in [*OUTPUT_FILES, "info"]:
        suffix = ".json" if name == "info" else ".jsonl"
        a, b, c = ((tmp_path / d / f"{name}{suffix}").read_bytes() for d in "abc")
        assert a == b, name
        assert a != c, name


def test_missing_wordnet_says_how_to_install_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        build_instructions(tmp_path / "out", wordnet_dir=tmp_path / "nowhere", progress=False)
    assert not (tmp_path / "out").exists()
