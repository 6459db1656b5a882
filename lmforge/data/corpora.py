"""The embedded default corpus: real English from Debian text packages, offline.

    wordnet   WordNet 3.0 synsets: words, definition, examples   (wordnet-base)
    gcide     GCIDE, Webster's 1913 and additions, markup stripped (dict-gcide)
    kjv       the King James Bible, one document per chapter      (bible-kjv, bible-kjv-text)
    fortunes  the fortune cookie files                            (fortunes)

``build_default_corpus`` writes them as parquet shards with ``text`` and ``source`` columns in
a seeded shuffle (so any contiguous slice is a mix), plus ``stats.json``. The WordNet parser is
also the source of the default classification task and instruction data, so it keeps the
whole synset structure.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lmforge.errors import ConfigError, DataError
from lmforge.utils import staging_dir, write_json

WORDNET_DIR = Path("/usr/share/wordnet")
GCIDE_DIR = Path("/usr/share/dictd")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
KJV_DATA = Path("/usr/lib/bible.data")

# lexnames(5WN), in lex_filenum order (the lexnames file itself is not shipped).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
assert len(LEXNAMES) == 45

POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
WORDNET_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}


@dataclass
class Synset:
    offset: int
    pos: str  # n, v, a, s (adjective satellite), r
    lexname: str
    words: list[str]
    definition: str
    examples: list[str] = field(default_factory=list)
    # (pointer symbol, target offset, target pos, source/target as 4 hex digits)
    pointers: list[tuple[str, int, str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.pos}{self.offset:08d}"


_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")
_QUOTED = re.compile(r'"([^"]*)"')


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """WordNet gloss -> (definition, quoted examples)."""
    gloss = gloss.strip()
    examples = [e.strip() for e in _QUOTED.findall(gloss) if e.strip()]
    cut = gloss.find('"')
    definition = gloss[:cut] if cut >= 0 else gloss
    definition = definition.strip().rstrip(";").strip()
    return definition, examples


def parse_synset_line(line: str) -> Synset:
    data, _, gloss = line.partition(" | ")
    f = data.split()
    offset, lex_filenum, ss_type = int(f[0]), int(f[1]), f[2]
    w_cnt = int(f[3], 16)
    words = []
    i = 4
    for _ in range(w_cnt):
        word = _ADJ_MARKER.sub("", f[i]).replace("_", " ")
        words.append(word)
        i += 2  # word, lex_id
    p_cnt = int(f[i])
    i += 1
    pointers = []
    for _ in range(p_cnt):
        pointers.append((f[i], int(f[i + 1]), f[i + 2], f[i + 3]))
        i += 4
    definition, examples = split_gloss(gloss)
    return Synset(offset, ss_type, LEXNAMES[lex_filenum], words, definition, examples, pointers)


def iter_wordnet_synsets(
    wordnet_dir: str | os.PathLike = WORDNET_DIR, parts=("noun", "verb", "adj", "adv")
) -> Iterator[Synset]:
    """Every synset of the data.* files, in file order (licence header lines skipped)."""
    wordnet_dir = Path(wordnet_dir)
    for part in parts:
        path = wordnet_dir / WORDNET_FILES[part]
        if not path.is_file():
            raise DataError(
                f"{path} is missing; install WordNet with `apt-get install wordnet-base`"
            )
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():
                    continue
                try:
                    yield parse_synset_line(line.rstrip("\n"))
                except (ValueError, IndexError) as e:
                    raise DataError(f"{path}:{lineno} is not a WordNet synset line ({e})") from None


def render_synset(s: Synset) -> str:
    """One readable document per synset."""
    words = ", ".join(s.words)
    text = f"{words} ({POS_NAMES.get(s.pos, s.pos)}): {s.definition}."
    if s.examples:
        text += " " + " ".join(f'"{e}"' for e in s.examples)
    return text


# --- GCIDE -------------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def dictd_b64(s: str) -> int:
    """dictd's base64 numbers: most significant digit first."""
    n = 0
    for c in s:
        n = n * 64 + _B64_VALUE[c]
    return n


_PRON = re.compile(r"\\[^\\\n]*\\")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_BRACES = re.compile(r"\{([^{}]*)\}")
_SPACES = re.compile(r"[ \t]+")


def strip_gcide(entry: str) -> str:
    """Plain text: no pronunciations, bracketed etymologies/source tags, or cross-ref braces."""
    text = _PRON.sub("", entry)
    while True:  # brackets nest: ['e] inside an etymology
        new = _BRACKETS.sub("", text)
        if new == text:
            break
        text = new
    while True:
        new = _BRACES.sub(r"\1", text)
        if new == text:
            break
        text = new
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        line = _SPACES.sub(" ", " ".join(x.strip() for x in block.splitlines())).strip()
        line = re.sub(r" ([,.;:])", r"\1", line)
        if line and line not in (",", "."):
            paragraphs.append(line)
    return "\n".join(paragraphs)


def iter_gcide(dict_dir: str | os.PathLike = GCIDE_DIR) -> Iterator[str]:
    """One plain-text document per unique dictionary entry, in index order."""
    dict_dir = Path(dict_dir)
    data_path, index_path = dict_dir / "gcide.dict.dz", dict_dir / "gcide.index"
    for p in (data_path, index_path):
        if not p.is_file():
            raise DataError(f"{p} is missing; install GCIDE with `apt-get install dict-gcide`")
    data = gzip.open(data_path).read()  # dictzip is gzip-compatible; ~40 MB in 0.2 s
    seen: set[int] = set()
    with open(index_path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00-"):
                continue  # dictd's own metadata entries
            offset, length = dictd_b64(parts[1]), dictd_b64(parts[2])
            if offset in seen:
                continue
            seen.add(offset)
            text = strip_gcide(data[offset : offset + length].decode("utf-8", errors="replace"))
            if text:
                yield text


# --- KJV ---------------------------------------------------------------------------------

_VERSE = re.compile(r"^\s+(\d+)\s+(.*)$")


def parse_bible_output(output: str) -> Iterator[tuple[str, str]]:
    """`bible` prints a chapter header, a blank line, then verses `  N text` whose long lines
    wrap unindented. Yields (chapter title, chapter text)."""
    title, verses = None, []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if m:
            verses.append(m.group(2).strip())
            continue
        prev_blank = i == 0 or not lines[i - 1].strip()
        next_blank = i + 1 >= len(lines) or not lines[i + 1].strip()
        if prev_blank and next_blank:  # a chapter header stands alone between blank lines
            if title and verses:
                yield title, " ".join(verses)
            title, verses = line.strip(), []
        elif verses:
            verses[-1] += " " + line.strip()  # a wrapped verse continues
    if title and verses:
        yield title, " ".join(verses)


def iter_kjv() -> Iterator[str]:
    if shutil.which("bible") is None or not KJV_DATA.is_file():
        raise DataError(
            "the `bible` program or its data is missing; install `apt-get install bible-kjv bible-kjv-text`"
        )
    out = subprocess.run(
        ["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    for title, text in parse_bible_output(out):
        yield f"{title}\n{text}"


# --- Fortunes ----------------------------------------------------------------------------

SKIP_FORTUNE_FILES = {"ascii-art"}  # pictures, not language


def iter_fortunes(fortunes_dir: str | os.PathLike = FORTUNES_DIR) -> Iterator[str]:
    fortunes_dir = Path(fortunes_dir)
    if not fortunes_dir.is_dir():
        raise DataError(f"{fortunes_dir} is missing; install `apt-get install fortunes`")
    for path in sorted(fortunes_dir.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.name in SKIP_FORTUNE_FILES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a legacy-encoded file: skip it rather than guess
        for piece in re.split(r"\n%\n", "\n" + text + "\n"):
            piece = piece.strip("\n")
            if piece.strip() and piece.strip() != "%":
                yield piece


# --- Python code: the standard library of the running interpreter -------------------------

PYTHON_STDLIB = Path(sysconfig.get_paths()["stdlib"])


def iter_python_stdlib(root: str | os.PathLike = PYTHON_STDLIB) -> Iterator[str]:
    """Every .py module of the standard library (tests and vendored packages left out: they
    are mostly generated data), one document each, in path order. A domain for
    mid-training: real code, present wherever Python is."""
    root = Path(root)
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield text


# --- the corpus --------------------------------------------------------------------------

SOURCES = {
    "wordnet": (
        lambda: (render_synset(s) for s in iter_wordnet_synsets()),
        [WORDNET_DIR / "data.noun"],
        "wordnet-base",
    ),
    "gcide": (iter_gcide, [GCIDE_DIR / "gcide.dict.dz", GCIDE_DIR / "gcide.index"], "dict-gcide"),
    "kjv": (iter_kjv, [KJV_DATA], "bible-kjv bible-kjv-text"),
    "fortunes": (iter_fortunes, [FORTUNES_DIR], "fortunes"),
    # not in the default corpus: the code domain of `configs/demo/midtrain-code.yaml`
    "python": (iter_python_stdlib, [PYTHON_STDLIB / "os.py"], "python3"),
}


def check_sources(sources) -> None:
    missing = []
    for name in sources:
        if name not in SOURCES:
            raise DataError(f"unknown source '{name}'; choose from {', '.join(SOURCES)}")
        _, files, package = SOURCES[name]
        for f in files:
            if not Path(f).exists():
                missing.append((name, f, package))
        if name == "kjv" and shutil.which("bible") is None:
            missing.append((name, Path("bible (program)"), package))
    if missing:
        packages = " ".join(sorted({p for _, _, p in missing}))
        lines = "\n".join(f"  {name}: {f} not found" for name, f, _ in missing)
        raise DataError(
            f"the default corpus needs Debian text packages that are not installed:\n{lines}\n"
            f"Install them with: apt-get install {packages}\n"
            "(or build from a subset with --sources, or use your own text with --data)"
        )


def build_default_corpus(
    out_dir: str | os.PathLike,
    sources=("wordnet", "gcide", "kjv", "fortunes"),
    shard_docs: int = 50_000,
    max_docs_per_source: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write parquet shards (text, source) in a seeded shuffle plus stats.json. Atomic."""

    if max_docs_per_source is not None and (
        isinstance(max_docs_per_source, bool)
        or not isinstance(max_docs_per_source, int)
        or max_docs_per_source < 1
    ):
        raise ConfigError(
            f"max_docs_per_source must be a whole number of 1 or more (got "
            f"{max_docs_per_source!r}); leave it out (None) to read every document"
        )
    check_sources(sources)
    t0 = time.perf_counter()
    docs: list[tuple[str, str]] = []
    stats: dict = {"sources": {}}
    for name in sources:
        produce = SOURCES[name][0]
        n = chars = words = 0
        for text in tqdm(
            produce(), desc=name, unit=" docs", disable=not progress, dynamic_ncols=True
        ):
            docs.append((text, name))
            n += 1
            chars += len(text)
            words += len(text.split())
            if max_docs_per_source is not None and n >= max_docs_per_source:
                break
        stats["sources"][name] = {"documents": n, "characters": chars, "words": words}
    random.Random(seed).shuffle(docs)
    with staging_dir(out_dir) as tmp:
        for k in range(0, len(docs), shard_docs):
            chunk = docs[k : k + shard_docs]
            table = pa.table({"text": [t for t, _ in chunk], "source": [s for _, s in chunk]})
            pq.write_table(table, tmp / f"corpus-{k // shard_docs:05d}.parquet", compression="zstd")
        totals = {
            key: sum(s[key] for s in stats["sources"].values())
            for key in ("documents", "characters", "words")
        }
        stats.update(
            total=totals,
            shards=-(-len(docs) // shard_docs),
            seed=seed,
            build_seconds=round(time.perf_counter() - t0, 1),
        )
        write_json(tmp / "stats.json", stats)
    return stats
