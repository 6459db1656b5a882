"""The offline default post-training data: questions about words, answered from WordNet.

A tiny model pre-trained on dictionary text knows words; post-training teaches it to answer
questions about them. WordNet (Debian ``wordnet-base``) supplies questions with checkable
answers, so SFT, a reward model and DPO all have data without a network or a bigger model:

    define    "What does 'dog' mean?"          the definition of the word's main sense
    synonym   "Give a synonym of 'big'."       another lemma of the same synset
    antonym   "What is the opposite of 'hot'?" a WordNet antonym (the lexical '!' pointer)
    sentence  "Use 'bark' in a sentence."      a WordNet example sentence containing the word
    category  "Which category does 'dog' ..."  the lexicographer file (noun.animal -> animals)

``build_instructions`` writes, atomically, into one directory:

    train.jsonl, val.jsonl     {"messages": [...], "task", "word", "synset"}
    preferences-train.jsonl,   {"prompt": question, "chosen": right answer,
    preferences-val.jsonl       "rejected": plausible wrong answer, "task", "word", "synset"}
    info.json                  counts, seed, phrasings, held-out words, examples

Choices, and why:

- Subject words are lowercase, letters-only lemmas of two letters or more ("dog", not
  "hot dog", "Paris" or "3-D"): dictionary words a small model can spell, no proper nouns.
  Answer words (synonyms, antonyms, wrong words) follow the same rule.
- Slurs and obscenities stay out: a synset WordNet marks as offensive (its gloss says
  "offensive term", "ethnic slur", ...; or its usage domain is disparagement, ethnic slur or
  obscenity) is dropped, and its words are never a subject or an answer word.
- Common words first: words with a sense-tagged sense (they occur in the SemCor corpus, so
  the index counts them) fill the caps before rare ones, so 20,000 conversations are about
  "dog" and "bright" more than "saporous".
- A word has one main sense, so the same question never has two answers: the part of speech
  with the most sense-tagged senses in WordNet's index files (ties: noun, verb, adjective,
  adverb), and its first synset there (the index lists senses by frequency). Tasks that need
  something the main sense lacks (a synonym, an antonym, an example) take the first sense
  that has it; a synonym is preferably not a mere spelling variant (colour, color).
- Validation is by word: a word is held out by a hash of the word and the seed, so val asks
  about words no train conversation is about, and adding data never moves a word.
- Each word is the subject of at most one conversation per task; tasks are balanced up to the
  caps (antonyms are the scarce ones, the others share what antonyms cannot fill).
- A rejected answer has the chosen answer's exact form (another animal's definition, a wrong
  word in the same sentence frame), so a reward model must judge content, not format.
- Everything random comes from seeded ``random.Random`` streams over sorted inputs: the same
  seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lmforge.data.corpora import WORDNET_DIR, WORDNET_FILES, Synset, iter_wordnet_synsets
from lmforge.errors import ConfigError, DataError
from lmforge.utils import staging_dir, write_json

TASKS = ("define", "synonym", "antonym", "sentence", "category")

PHRASINGS = {
    "define": (
        "What does '{word}' mean?",
        "Define {word}.",
        "Give me the meaning of the word {word}.",
        "What is the definition of '{word}'?",
        "What is meant by '{word}'?",
        "Explain the word '{word}'.",
    ),
    "synonym": (
        "Give a synonym of '{word}'.",
        "What is another word for '{word}'?",
        "Name a word that means the same as '{word}'.",
        "Which word has the same meaning as '{word}'?",
        "Tell me a synonym for {word}.",
    ),
    "antonym": (
        "What is the opposite of '{word}'?",
        "Give an antonym of '{word}'.",
        "Name a word that means the opposite of '{word}'.",
        "What word is the opposite of {word}?",
        "Tell me an antonym for {word}.",
    ),
    "sentence": (
        "Use '{word}' in a sentence.",
        "Give me an example sentence with the word '{word}'.",
        "Write a sentence that uses '{word}'.",
        "How is '{word}' used in a sentence?",
        "Show me '{word}' in a sentence.",
    ),
    "category": (
        "Which category does '{word}' belong to?",
        "What category does the word '{word}' fall into?",
        "Classify the word '{word}'.",
        "What is the semantic category of '{word}'?",
        "Which group of words does '{word}' belong to?",
    ),
}

SYSTEM_PROMPTS = (
    "You are a helpful dictionary assistant.",
    "You are a helpful assistant.",
    "Answer questions about words briefly and accurately.",
    "You explain the meaning and use of English words.",
)
SYSTEM_FRACTION = 0.2  # enough that a system turn is familiar, few enough not to be expected

# Lexicographer files as answers, worded after lexnames(5WN). noun.Tops (the unique
# beginners) and the adjective/adverb files say nothing about meaning and are not asked.
CATEGORIES = {
    "noun.act": "acts and actions",
    "noun.animal": "animals",
    "noun.artifact": "man-made objects",
    "noun.attribute": "attributes and qualities",
    "noun.body": "body parts",
    "noun.cognition": "thought and knowledge",
    "noun.communication": "communication",
    "noun.event": "events",
    "noun.feeling": "feelings and emotions",
    "noun.food": "foods and drinks",
    "noun.group": "groups of people or things",
    "noun.location": "places",
    "noun.motive": "goals and motives",
    "noun.object": "natural objects",
    "noun.person": "people",
    "noun.phenomenon": "natural phenomena",
    "noun.plant": "plants",
    "noun.possession": "possessions",
    "noun.process": "natural processes",
    "noun.quantity": "quantities and units of measure",
    "noun.relation": "relations",
    "noun.shape": "shapes",
    "noun.state": "states and conditions",
    "noun.substance": "substances",
    "noun.time": "time",
    "verb.body": "verbs of bodily care",
    "verb.change": "verbs of change",
    "verb.cognition": "verbs of thinking",
    "verb.communication": "verbs of communication",
    "verb.competition": "verbs of fighting and competing",
    "verb.consumption": "verbs of eating and drinking",
    "verb.contact": "verbs of touching and contact",
    "verb.creation": "verbs of making and creating",
    "verb.emotion": "verbs of feeling",
    "verb.motion": "verbs of motion",
    "verb.perception": "verbs of perception",
    "verb.possession": "verbs of owning and exchanging",
    "verb.social": "verbs of social activities",
    "verb.stative": "verbs of being and having",
    "verb.weather": "verbs of weather",
}

WORD = re.compile(r"[a-z]{2,}")
INDEX_FILES = {"n": "index.noun", "v": "index.verb", "a": "index.adj", "r": "index.adv"}

# Offensive senses: WordNet says so in the gloss, or with a usage-domain pointer (';u') to
# disparagement (n06717170), ethnic slur (n06718862) or obscenity (n07124340).
OFFENSIVE_GLOSS = re.compile(
    r"ethnic slur|\b(offensive|disparaging|derogatory|obscene|vulgar|insulting)\b[^;]*"
    r"\b(term|terms|word|words|name|names|slang|expression)\b",
    re.IGNORECASE,
)
OFFENSIVE_USAGE = {("n", 6717170), ("n", 6718862), ("n", 7124340)}
_LETTERS = re.compile(r"[a-z]+")


# --------------------------------------------------------------------------------------------
# WordNet as a lexicon: synsets, and each word's senses in order
# --------------------------------------------------------------------------------------------


def _ref(pos: str, offset: int) -> tuple[str, int]:
    # Satellites ('s') live in data.adj with the head adjectives, and pointers to them say 'a'.
    return ("a" if pos == "s" else pos, offset)


def is_offensive(s: Synset) -> bool:
    return OFFENSIVE_GLOSS.search(s.definition) is not None or any(
        symbol == ";u" and _ref(pos, offset) in OFFENSIVE_USAGE
        for symbol, offset, pos, _ in s.pointers
    )


@dataclass
class Lexicon:
    synsets: dict[tuple[str, int], Synset]  # (pos, offset) -> synset; offensive ones dropped
    senses: dict[str, list[Synset]]  # eligible word -> its synsets, main sense first
    tagged: dict[str, int]  # word -> how many of its senses are sense-tagged (0: a rare word)
    blocked: set[str]  # words of offensive synsets
    by_lexname: dict[str, list[Synset]]  # pools for plausible wrong answers
    words_by_lexname: dict[str, list[str]]

    def eligible(self, word: str) -> bool:
        """A word that may be asked about or given as an answer."""
        return word in self.senses


def check_wordnet(wordnet_dir: str | os.PathLike = WORDNET_DIR) -> None:
    wordnet_dir = Path(wordnet_dir)
    for name in [*WORDNET_FILES.values(), *INDEX_FILES.values()]:
        if not (wordnet_dir / name).is_file():
            raise DataError(
                f"{wordnet_dir / name} is missing; install WordNet with `apt-get install wordnet-base`"
            )


def read_sense_order(wordnet_dir: str | os.PathLike = WORDNET_DIR) -> dict[str, tuple[int, list]]:
    """Letters-only lemma -> (its sense-tagged senses, the (pos, offset) of its synsets, main
    part of speech first).

    An index line is `lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset...`,
    offsets in order of sense frequency (index(5WN))."""
    entries: dict[str, list[tuple[int, int, list]]] = {}
    for rank, (pos, name) in enumerate(INDEX_FILES.items()):
        with open(Path(wordnet_dir) / name, encoding="utf-8") as f:
            for line in f:
                lemma, _, rest = line.partition(" ")
                if not WORD.fullmatch(lemma):  # also skips the licence header's indented lines
                    continue
                fields = rest.split()
                p_cnt = int(fields[2])
                tagged = int(fields[4 + p_cnt])
                refs = [(pos, int(o)) for o in fields[5 + p_cnt :]]
                entries.setdefault(lemma, []).append((-tagged, rank, refs))
    return {
        w: (-sum(t for t, _, _ in e), [r for _, _, refs in sorted(e) for r in refs])
        for w, e in entries.items()
    }


def read_lexicon(wordnet_dir: str | os.PathLike = WORDNET_DIR, progress: bool = False) -> Lexicon:
    check_wordnet(wordnet_dir)
    lex = Lexicon(
        synsets={}, senses={}, tagged={}, blocked=set(), by_lexname={}, words_by_lexname={}
    )
    for s in tqdm(
        iter_wordnet_synsets(wordnet_dir),
        desc="wordnet",
        unit=" synsets",
        disable=not progress,
        dynamic_ncols=True,
    ):
        if is_offensive(s):
            lex.blocked.update(s.words)
        else:
            lex.synsets[_ref(s.pos, s.offset)] = s
    for s in lex.synsets.values():
        lex.by_lexname.setdefault(s.lexname, []).append(s)
    for word, (tagged, refs) in read_sense_order(wordnet_dir).items():
        # The index is case-blind: "bath" lists the city Bath too, whose lemma is "Bath".
        found = [lex.synsets[r] for r in refs if r in lex.synsets and word in lex.synsets[r].words]
        if found and word not in lex.blocked:
            lex.senses[word], lex.tagged[word] = found, tagged
            for s in found:
                lex.words_by_lexname.setdefault(s.lexname, []).append(word)
    return lex


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def spelling_variant(a: str, b: str) -> bool:
    """colour/color, centre/center, realise/realize: right as synonyms, but they teach little.
    Variants share a start and an end, and differ in at most two letters between them."""
    start = len(os.path.commonprefix([a, b]))
    end = len(os.path.commonprefix([a[start:][::-1], b[start:][::-1]]))
    longer = max(len(a), len(b))
    return longer - start - end <= 2 and start + end >= longer / 2


def synonyms_of(lex: Lexicon, word: str) -> list[tuple[Synset, str]]:
    """Other lemmas of the word's synsets, in sense order."""
    return [(s, w) for s in lex.senses[word] for w in s.words if w != word and lex.eligible(w)]


def antonyms_of(lex: Lexicon, word: str) -> list[tuple[Synset, str]]:
    """Antonyms are lexical pointers: source/target hex `sstt` name the source word s of this
    synset and the target word t of the other (1-based; 0000 would mean whole synsets)."""
    out = []
    for s in lex.senses[word]:
        for symbol, offset, pos, source_target in s.pointers:
            source, target = int(source_target[:2], 16), int(source_target[2:], 16)
            if symbol != "!" or source == 0 or s.words[source - 1] != word:
                continue
            other = lex.synsets.get(_ref(pos, offset))
            if other is not None and other.words[target - 1] != word:
                if lex.eligible(other.words[target - 1]):
                    out.append((s, other.words[target - 1]))
    return out


def uses_word(sentence: str, word: str) -> bool:
    """Whether the sentence has the word itself ("dogs" is not "dog"), in any case."""
    return word in _LETTERS.findall(sentence.lower())


def examples_of(lex: Lexicon, word: str) -> list[tuple[Synset, str]]:
    """Examples that use the word, in sense order; short fragments ("an indolent hanger-on")
    after real sentences, as the question asks for a sentence."""
    found = [(s, e) for s in lex.senses[word] for e in s.examples if uses_word(e, word)]
    return sorted(found, key=lambda found: len(found[1].split()) < 4)


def answer_value(lex: Lexicon, task: str, word: str) -> tuple[Synset, str] | None:
    """(the synset the answer comes from, the bare answer), or None if WordNet has none."""
    main = lex.senses[word][0]
    if task == "define":
        return (main, main.definition) if main.definition else None
    if task == "category":  # the main sense's: another sense's category would mislead
        return (main, main.lexname) if main.lexname in CATEGORIES else None
    if task == "synonym":
        found = synonyms_of(lex, word)
        for synset, synonym in found:
            if not spelling_variant(word, synonym):
                return synset, synonym
    elif task == "antonym":
        found = antonyms_of(lex, word)
    else:
        found = examples_of(lex, word)
    return found[0] if found else None


def as_sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def render_answer(task: str, word: str, value: str) -> str:
    if task in ("define", "sentence"):
        return as_sentence(value)
    if task == "synonym":
        return f"A synonym of '{word}' is '{value}'."
    if task == "antonym":
        return f"The opposite of '{word}' is '{value}'."
    return f"The word '{word}' belongs to the category of {CATEGORIES[value]}."


def _pick(rng: random.Random, pool: list, ok, tries: int = 50):
    for _ in range(tries):
        candidate = rng.choice(pool)
        if ok(candidate):
            return candidate
    return None


def wrong_value(
    lex: Lexicon, task: str, word: str, synset: Synset, rng: random.Random
) -> str | None:
    """A plausible wrong bare answer for `task` about `word` (None if none was found): of the
    same lexicographer file as the right one, and right for no sense of the word."""
    if task == "define":
        definitions = {s.definition for s in lex.senses[word]}
        other = _pick(
            rng,
            lex.by_lexname[synset.lexname],
            lambda s: s.definition and s.definition not in definitions and word not in s.words,
        )
        return other.definition if other else None
    if task in ("synonym", "antonym"):
        synonyms = {w for _, w in synonyms_of(lex, word)}
        antonyms = {w for _, w in antonyms_of(lex, word)}
        right, other = (synonyms, antonyms) if task == "synonym" else (antonyms, synonyms)
        # The hardest wrong answer is the other relation: an antonym for a synonym and back.
        if other - right:
            return sorted(other - right)[0]
        return _pick(
            rng,
            lex.words_by_lexname[synset.lexname],
            lambda w: w != word and w not in synonyms and w not in antonyms,
        )
    if task == "sentence":
        other = _pick(
            rng,
            lex.by_lexname[synset.lexname],
            lambda s: any(not uses_word(e, word) for e in s.examples),
        )
        return next(e for e in other.examples if not uses_word(e, word)) if other else None
    own = {s.lexname for s in lex.senses[word]}
    part_of_speech = synset.lexname.split(".")[0] + "."
    return rng.choice(
        sorted(c for c in CATEGORIES if c.startswith(part_of_speech) and c not in own)
    )


# --------------------------------------------------------------------------------------------
# Splits, balance and records
# --------------------------------------------------------------------------------------------


def is_heldout_word(word: str, seed: int, fraction: float) -> bool:
    """A stable pseudo-random choice of words: the same word is held out whatever else the
    data holds."""
    h = hashlib.blake2b(f"{seed}:{word}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction


def balanced_quotas(available: dict[str, int], cap: int | None) -> dict[str, int]:
    """Share `cap` equally among tasks; what a scarce task cannot use goes to the others."""
    if cap is None:
        return dict(available)
    quotas, left = {}, cap
    by_scarcity = sorted(available, key=lambda t: (available[t], TASKS.index(t)))
    for i, task in enumerate(by_scarcity):
        quotas[task] = min(available[task], left // (len(by_scarcity) - i))
        left -= quotas[task]
    return {t: quotas[t] for t in available}


def common_first(lex: Lexicon, words: list[str], rng: random.Random) -> list[str]:
    """Words with a sense-tagged sense, then the rest, each group in a seeded order."""
    common = [w for w in words if lex.tagged[w] > 0]
    rare = [w for w in words if lex.tagged[w] == 0]
    rng.shuffle(common)
    rng.shuffle(rare)
    return common + rare


def _question(rng: random.Random, task: str, word: str) -> str:
    return rng.choice(PHRASINGS[task]).format(word=word)


def make_conversations(
    answers: dict, words: dict[str, list[str]], cap: int | None, rng: random.Random
) -> list[dict]:
    """`words`: task -> its candidate words in order of preference."""
    quotas = balanced_quotas({t: len(w) for t, w in words.items()}, cap)
    out = []
    for task in TASKS:
        for word in words[task][: quotas[task]]:
            synset, value = answers[task][word]
            messages = []
            if rng.random() < SYSTEM_FRACTION:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            messages.append({"role": "user", "content": _question(rng, task, word)})
            messages.append({"role": "assistant", "content": render_answer(task, word, value)})
            out.append({"messages": messages, "task": task, "word": word, "synset": synset.key})
    rng.shuffle(out)  # tasks interleaved, so any slice of the file is a mix
    return out


def make_preferences(
    lex: Lexicon, answers: dict, words: dict[str, list[str]], cap: int | None, rng: random.Random
) -> list[dict]:
    quotas = balanced_quotas({t: len(w) for t, w in words.items()}, cap)
    out = []
    for task in TASKS:
        taken = 0
        for word in words[task]:
            if taken == quotas[task]:
                break
            synset, value = answers[task][word]
            wrong = wrong_value(lex, task, word, synset, rng)
            if wrong is None:  # rare: no wrong answer found in a few tries; take the next word
                continue
            chosen, rejected = render_answer(task, word, value), render_answer(task, word, wrong)
            assert chosen.strip() != rejected.strip(), (task, word)
            out.append(
                {
                    "prompt": _question(rng, task, word),
                    "chosen": chosen,
                    "rejected": rejected,
                    "task": task,
                    "word": word,
                    "synset": synset.key,
                }
            )
            taken += 1
    rng.shuffle(out)
    return out


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _counts(records: list[dict]) -> dict[str, int]:
    return {t: sum(r["task"] == t for r in records) for t in TASKS}


def build_instructions(
    out: str | os.PathLike,
    seed: int = 0,
    heldout_fraction: float = 0.05,
    max_train: int | None = 20000,
    max_val: int = 500,
    progress: bool = True,
    wordnet_dir: str | os.PathLike = WORDNET_DIR,
) -> dict:
    """Write conversations and preference pairs about WordNet words into `out` (atomic).
    Returns what info.json holds."""
    if not 0 < heldout_fraction < 1:
        raise ConfigError(f"heldout_fraction must be between 0 and 1, got {heldout_fraction}")
    if max_val < 1 or (max_train is not None and max_train < 1):
        raise ConfigError("max_train and max_val must be at least 1 (max_train None: no cap)")

    lex = read_lexicon(wordnet_dir, progress=progress)

    answers = {task: {} for task in TASKS}  # task -> word -> (synset, bare answer)
    for word in tqdm(sorted(lex.senses), desc="answers", unit=" words", disable=not progress):
        for task in TASKS:
            found = answer_value(lex, task, word)
            if found is not None:
                answers[task][word] = found
    heldout = [w for w in sorted(lex.senses) if is_heldout_word(w, seed, heldout_fraction)]
    is_val = set(heldout)

    records, available = {}, {}
    for split, cap, prefs_cap in (
        ("train", max_train, None if max_train is None else max(1, max_train // 2)),
        ("val", max_val, max_val),
    ):
        pool = {t: [w for w in answers[t] if (w in is_val) == (split == "val")] for t in TASKS}
        available[split] = {t: len(words) for t, words in pool.items()}
        # Separate streams: conversations and preferences draw their words independently.
        rng = random.Random(f"{seed}:{split}:conversations")
        words = {t: common_first(lex, pool[t], rng) for t in TASKS}
        records[split] = make_conversations(answers, words, cap, rng)
        rng = random.Random(f"{seed}:{split}:preferences")
        words = {t: common_first(lex, pool[t], rng) for t in TASKS}
        records[f"preferences-{split}"] = make_preferences(lex, answers, words, prefs_cap, rng)

    train, counts = records["train"], _counts(records["train"])
    info = {
        "source": f"WordNet 3.0 (Debian wordnet-base) in {Path(wordnet_dir)}",
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "counts": {name: _counts(r) for name, r in records.items()},
        "available": available,  # words with an answer, per split and task, before the caps
        "phrasings": {t: list(p) for t, p in PHRASINGS.items()},
        "system_prompts": list(SYSTEM_PROMPTS),
        "system_fraction": SYSTEM_FRACTION,
        "offensive_words_excluded": sum(WORD.fullmatch(w) is not None for w in lex.blocked),
        "heldout_words_count": len(heldout),
        "heldout_words": heldout,
        "examples": [next(r for r in train if r["task"] == t) for t in TASKS if counts[t]],
        "preference_examples": records["preferences-train"][:2],
    }
    with staging_dir(out) as tmp:
        for name, r in records.items():
            _write_jsonl(tmp / f"{name}.jsonl", r)
        write_json(tmp / "info.json", info)
    return info
