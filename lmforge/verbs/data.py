"""The data verbs: corpora, tasks, chat data, curation, mixtures, and the tokenizer."""

from __future__ import annotations

import json
import os
from textwrap import dedent
from typing import Literal

from lmforge.utils import LazyModule
from lmforge.verbs.options import Call, Options, Verb, opt

# Imported when a verb runs (utils.LazyModule): the registry alone imports no component.
corpora = LazyModule("lmforge.data.corpora")
curation = LazyModule("lmforge.data.curate")
instruction_data = LazyModule("lmforge.data.instructions")
mixture = LazyModule("lmforge.data.mixture")
sources = LazyModule("lmforge.data.sources")
tasks = LazyModule("lmforge.data.tasks")
vocab = LazyModule("lmforge.data.vocab")
tokenizer = LazyModule("lmforge.tokenizer")
token_shards = LazyModule("lmforge.data.shards")
shards_ray = LazyModule("lmforge.data.shards_ray")

CORPUS = "a file or directory of txt / jsonl / parquet / csv"
ENGINE_HELP = ("local", "local: processes on this machine; ray: Ray Data, here or at --address")
ADDRESS_HELP = "--engine ray: the cluster (auto, host:port or ray://host:port; default: a Ray here)"


def _task_stats(t) -> dict:
    counts = t.train_counts()
    return {
        "rows": {"train": len(t.train), "val": len(t.val), "test": len(t.test)},
        "num_labels": t.num_labels,
        "largest_class": [t.label_names[counts.index(max(counts))], max(counts)],
        "smallest_class": [t.label_names[counts.index(min(counts))], min(counts)],
        "dropped_classes": len(t.info.get("dropped_classes", [])),
    }


class BuildOptions(Options):
    out: str = opt(help="output directory (replaced atomically)")
    sources: list[str] = opt(
        ["wordnet", "gcide", "kjv", "fortunes"],
        "which sources to include (default: the four text sources; `python`: the Python "
        "standard library's code, a mid-training domain)",
    )
    max_docs_per_source: int | None = opt(
        None,
        "cap each source at this many documents, 1 or more (for quick runs; default: all)",
        ge=1,
    )
    no_progress: bool = opt(False, "no progress bars")


def build(call: Call) -> dict:
    o = call.opts
    return corpora.build_default_corpus(
        o.out,
        sources=tuple(o.sources),
        max_docs_per_source=o.max_docs_per_source,
        progress=not o.no_progress,
    )


class WordnetTaskOptions(Options):
    out: str = opt(help="task directory to write (replaced atomically)")
    seed: int = opt(42, "split seed (default 42)")
    val_fraction: float = opt(0.1)
    test_fraction: float = opt(0.1)


def wordnet_task(call: Call) -> dict:
    o = call.opts
    t = tasks.build_wordnet_task(
        o.out, seed=o.seed, val_fraction=o.val_fraction, test_fraction=o.test_fraction
    )
    return _task_stats(t)


class OutOptions(Options):
    out: str = opt(help="directory to write (replaced atomically)")


def task(call: Call) -> dict:
    return _task_stats(tasks.prepare_task(call.cfg, call.opts.out))


class InstructionOptions(Options):
    out: str = opt(help="directory to write (replaced atomically)")
    seed: int = opt(0)
    max_train: int = opt(20000, "training conversations")
    max_val: int = opt(500, "held-out conversations and pairs")


def instructions(call: Call) -> dict:
    o = call.opts
    info = instruction_data.build_instructions(
        o.out, seed=o.seed, max_train=o.max_train, max_val=o.max_val
    )
    return {k: v for k, v in info.items() if k in ("counts", "heldout_words_count")}


class CurateOptions(Options):
    input: str = opt(help=f"a corpus: {CORPUS}", positional=True)
    out: str = opt(help="curated corpus directory (replaced atomically)")
    near_dup: float | None = opt(None, "Jaccard threshold (0, 1]", sets="near_dedup.threshold")
    report: str | None = opt(None, "directory for curation.json/.md/png")
    workers: int | None = opt(None, "processes, or Ray tasks at once (default: all cores)")
    engine: Literal["local", "ray"] = opt(ENGINE_HELP[0], ENGINE_HELP[1])
    address: str | None = opt(None, ADDRESS_HELP)
    overwrite: bool = opt(False, "replace an --out that holds another curation")
    no_progress: bool = opt(False)


def run_curate(call: Call) -> dict:
    o = call.opts
    result = curation.curate(
        o.input,
        o.out,
        call.cfg,
        report=o.report,
        progress=not o.no_progress,
        workers=o.workers,
        engine=o.engine,
        address=o.address,
        overwrite=o.overwrite,
    )
    keys = ("documents_in", "documents_out", "characters_in", "characters_out", "seconds")
    return {k: result[k] for k in keys if k in result}


def mix(call: Call) -> dict:
    manifest = mixture.build_mixture(call.cfg, call.opts.out)
    return {k: v for k, v in manifest.items() if k != "config"}


class ShardsOptions(Options):
    data: str = opt(help=CORPUS, positional=True)
    tokenizer: str = opt(help="tokenizer directory or tokenizer.json")
    out: str = opt(help="shards directory (replaced atomically)")
    text_column: str = opt("text", "text column for jsonl/parquet/csv (default: text)")
    val_fraction: float = opt(0.01, "share of documents held out (default 0.01)", gt=0, lt=1)
    seed: int = opt(0, "the held-out choice's seed (a run's data.seed)")
    engine: Literal["local", "ray"] = opt(ENGINE_HELP[0], ENGINE_HELP[1])
    address: str | None = opt(None, ADDRESS_HELP)
    workers: int | None = opt(None, "--engine ray: tasks at once (default: all cores)")
    no_progress: bool = opt(False)


def shards(call: Call) -> dict:
    o = call.opts
    tok = tokenizer.Tokenizer.load(o.tokenizer)
    how = {"text_column": o.text_column, "val_fraction": o.val_fraction, "seed": o.seed}
    if o.engine == "ray":
        workers = o.workers or len(os.sched_getaffinity(0))
        meta = shards_ray.build_shards_on_ray(
            o.data,
            tok,
            o.out,
            progress=not o.no_progress,
            workers=workers,
            address=o.address,
            **how,
        )
    else:
        meta = token_shards.build_shards(o.data, tok, o.out, progress=not o.no_progress, **how)
    return {s: {k: v[k] for k in ("documents", "tokens")} for s, v in meta["splits"].items()}


class StatsOptions(Options):
    path: str = opt(help=CORPUS, positional=True)
    text_column: str = opt("text")


def stats(call: Call) -> dict:
    docs = chars = words = 0
    for text in sources.iter_texts(call.opts.path, call.opts.text_column):
        docs, chars, words = docs + 1, chars + len(text), words + len(text.split())
    return {"documents": docs, "characters": chars, "words": words}


class TokenizerTrainOptions(Options):
    data: str = opt(help=CORPUS)
    vocab_size: int = opt(8192, "vocabulary size (default 8192)")
    out: str = opt(help="output directory")
    text_column: str = opt("text", "text column for jsonl/parquet/csv (default: text)")


def tokenizer_train(call: Call) -> dict:
    o = call.opts
    return vocab.train_tokenizer_from_path(o.data, o.vocab_size, o.out, text_column=o.text_column)


class EncodeOptions(Options):
    tokenizer: str = opt(help="tokenizer directory or tokenizer.json", positional=True)
    text: str = opt(positional=True)


def encode(call: Call) -> str:
    tok = tokenizer.Tokenizer.load(call.opts.tokenizer)
    ids = tok.encode(call.opts.text)
    pieces = [tok.decode([i]) for i in ids]
    return json.dumps({"ids": ids, "tokens": pieces, "n_tokens": len(ids)}, ensure_ascii=False)


VERBS = [
    Verb(
        "data build",
        "write the embedded default corpus from Debian text packages",
        build,
        dedent("""\
            Write the embedded default corpus as parquet shards (columns: text, source) plus
            stats.json, from Debian packages: WordNet glosses and examples (wordnet-base), GCIDE
            definitions (dict-gcide), the King James Bible (bible-kjv, bible-kjv-text) and
            fortunes (fortunes). Install them with:
              apt-get install wordnet-base dict-gcide bible-kjv bible-kjv-text fortunes
            """),
        options=BuildOptions,
        output="out",
    ),
    Verb(
        "data wordnet-task",
        "the offline default classification task (WordNet definition -> 45 categories)",
        wordnet_task,
        dedent("""\
            Write the default classification task: each WordNet synset's definition, labelled
            with its lexicographer category (noun.animal, verb.motion, ...: 45 imbalanced classes,
            344:1 between the largest and the smallest). Stratified train/val/test parquet files,
            labels.json (names and train counts) and task.json. Needs `apt-get install wordnet-base`.
            """),
        options=WordnetTaskOptions,
        output="out",
    ),
    Verb(
        "data task",
        "prepare a labelled dataset (csv/jsonl/parquet/HF) as a task directory",
        task,
        dedent("""\
            Prepare your own labelled data the way `classify train` would, to inspect it first:
            column mapping, label merge map, minimum class count, stratified split.
              lmforge data task --config configs/course/consumer-complaints-task.yaml --out data/cc
            Keys are those of `task:` in a classify recipe, given here at the top level.
            """),
        options=OutOptions,
        config=tasks.ref("TaskConfig"),
        output="out",
    ),
    Verb(
        "data instructions",
        "the offline default chat data: WordNet questions, answers and preference pairs",
        instructions,
        dedent("""\
            Write conversations for SFT (define X, a synonym of X, the opposite of X, X in a
            sentence, X's category; varied phrasings) and preference pairs for a reward model
            and DPO (chosen: the right answer; rejected: a plausible wrong one), built from
            WordNet. Validation uses words never seen in training.
              train.jsonl val.jsonl preferences-train.jsonl preferences-val.jsonl info.json
            """),
        options=InstructionOptions,
        output="out",
    ),
    Verb(
        "data curate",
        "normalise, deduplicate (exact + MinHash LSH) and quality-filter a corpus",
        run_curate,
        dedent("""\
            Unicode normalisation, exact dedup on normalised text, near-dedup with MinHash +
            LSH (word 5-gram shingles, bands x rows from the Jaccard threshold, one document
            kept per cluster: the longest, then the first) and Gopher-style quality rules,
            each with its own threshold. Writes the kept documents in the corpus format and a
            report: what each step and rule removed, per source, with examples.
              lmforge data curate data/default --out data/curated --near-dup 0.8 --report runs/demo/curation
              lmforge data curate data/default --out data/curated quality.stop_words.enabled=false
            The same steps on Ray Data, on this machine or a cluster (pip install 'lmforge[ray]';
            the kept documents are the same):
              lmforge data curate data/default --out data/curated --engine ray
              lmforge data curate /shared/crawl --out /shared/curated --engine ray --address auto
            """),
        options=CurateOptions,
        config=curation.ref("CurateConfig"),
        output="out",
        inputs=("input",),
    ),
    Verb(
        "data mix",
        "tokenize weighted sources into a mixture for mid-training",
        mix,
        dedent("""\
            Tokenize each source of a mixture (a file or directory, optionally filtered by a
            column, or prebuilt shards) and record the weights (shares of training tokens, or
            epochs) and a schedule that changes them over training. `lmforge midtrain
            mixture=DIR` trains on it; the trainer logs the realised mix.
              lmforge data mix --config configs/demo/mixture.yaml --out data/mix
            """),
        options=OutOptions,
        config=mixture.ref("MixtureConfig"),
        default_config="configs/demo/mixture.yaml",
        output="out",
    ),
    Verb(
        "data shards",
        "tokenize a corpus into the token shards training reads",
        shards,
        dedent("""\
            Tokenize every non-empty document (<|bos|> text <|endoftext|>) into train/val token
            shards: the directory a recipe's data.shards names, as pretrain builds it under
            its run (a document is held out by its index and --seed). --engine ray tokenizes
            each file in its own Ray task (here, or on the cluster at --address): the same
            tokens, documents and split, in one shard set per input file.
              lmforge data shards data/curated --tokenizer runs/demo/tokenizer --out data/shards
              lmforge data shards /shared/curated --tokenizer tok --out /shared/shards --engine ray --address auto
            """),
        options=ShardsOptions,
        output="out",
        inputs=("data", "tokenizer"),
    ),
    Verb(
        "data stats",
        "documents, characters and words of any corpus",
        stats,
        options=StatsOptions,
        inputs=("path",),
    ),
    Verb(
        "tokenizer train",
        "train a byte-level BPE tokenizer on a corpus",
        tokenizer_train,
        dedent("""\
            Train a byte-level BPE tokenizer (Hugging Face `tokenizers`) with the special tokens
            every later stage needs already reserved: BOS/EOS/PAD, the ChatML roles and <|mask|>.
            Writes tokenizer.json (loadable by transformers' PreTrainedTokenizerFast) and
            summary.json with bytes/token on training and held-out text.
            """),
        options=TokenizerTrainOptions,
        output="out",
        inputs=("data",),
    ),
    Verb(
        "tokenizer encode",
        "show how a text is split into tokens",
        encode,
        options=EncodeOptions,
        inputs=("tokenizer",),
    ),
]
