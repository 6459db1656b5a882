"""Every lmforge verb, registered once: its options, its recipe, its run, its summary.

    VERBS["pretrain"]       Verb(config=pretrain.ref("PretrainConfig"), summary=PretrainSummary, ...)
    call = parse(["quantize", "runs/cls", "--method", "int8", "--out", "runs/int8"])
    call.verb.run(call)

A verb takes a recipe (``config``: ``--config FILE key.sub=value ...``), flags (``options``,
a pydantic model whose fields are the flags: name, type, default and help in one place), or
both. The command-line parser is derived from them (options.py), so `lmforge <verb> --help`,
the CLI, and `lmforge run`'s pipeline (which reads each stage's command line through
``parse``) agree on what a command line means. ``summary`` is the schema of what the verb
writes (stages/summaries.py): the CLI prints its SHOWN keys, the report
its headline (report/headlines.py). The registry names recipes without importing them
(utils.LazyModule): `lmforge --help` starts at once, and a verb imports only what it runs.
"""

from __future__ import annotations

import argparse
from textwrap import dedent

from lmforge.errors import ConfigError
from lmforge.verbs import data, evaluate, train, use
from lmforge.verbs.options import Call, Verb, add_verb_arguments, formatter, make_call

VERBS: dict[str, Verb] = {v.name: v for m in (data, train, evaluate, use) for v in m.VERBS}

# Verbs of two words (`data build`, `classify train`): each group's help and description.
GROUPS = {
    "data": ("build and inspect corpora", "Build and inspect corpora."),
    "tokenizer": ("train or inspect a BPE tokenizer", "Byte-level BPE tokenizers."),
    "baseline": ("the TF-IDF + logistic regression bar for a classification task", ""),
    "classify": (
        "fine-tune a pretrained model to classify texts (probe / full / LoRA) and evaluate it",
        "Classification fine-tuning with the course's evaluation.",
    ),
    "distill": (
        "knowledge distillation: cache a teacher's logits, train a student on them",
        evaluate.DISTILL_HELP,
    ),
    "scaling": (
        "scaling laws: published ones, a sweep of runs, and a law fitted to them",
        dedent("""\
            Scaling laws: the published ones (Chinchilla, its Epoch AI refit, Kaplan, 20
            tokens/parameter), a sweep of small pre-training runs, and a law fitted to them.
              lmforge scaling predict --flops 1e21
              lmforge scaling sweep --config configs/demo/scaling.yaml      # 16 runs, ~45 min on 2 cores
              lmforge scaling fit runs/demo/scaling --out runs/demo/scaling-fit
            """),
    ),
}


def add_subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """One sub-command per registered verb (two-word verbs under their group); returns the
    top level, where a caller may add its own."""
    top = parser.add_subparsers(dest="verb", metavar="<verb>")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, verb in VERBS.items():
        words = name.split()
        if len(words) == 2:
            if words[0] not in groups:
                about, text = GROUPS[words[0]]
                g = top.add_parser(
                    words[0], help=about, description=text or about, formatter_class=formatter
                )
                groups[words[0]] = g.add_subparsers(dest="action", metavar="<action>")
            where, word = groups[words[0]], words[1]
        else:
            where, word = top, name
        p = where.add_parser(
            word,
            help=verb.help,
            description=verb.description or verb.help,
            formatter_class=formatter,
        )
        p.set_defaults(registered=name)
        add_verb_arguments(p, verb)
    return top


def find(argv: list[str]) -> Verb:
    """The verb a command line names (its first one or two words)."""
    two, one = " ".join(argv[:2]), argv[0] if argv else ""
    verb = VERBS.get(two) or VERBS.get(one)
    if verb is None:
        raise ConfigError(
            f"`lmforge {' '.join(argv[:2])}` is not a verb of lmforge; verbs: " + ", ".join(VERBS)
        )
    return verb


def parse(argv: list[str]) -> Call:
    """A command line as the call it makes: the verb, its flags and its resolved recipe.

    What the CLI runs and what the pipeline plans with; a usage error raises ConfigError."""
    verb = find(argv)
    parser = argparse.ArgumentParser(prog=f"lmforge {verb.name}", add_help=False)
    add_verb_arguments(parser, verb)
    words = len(verb.name.split())

    def refuse(message):
        raise ConfigError(f"`lmforge {verb.name}`: {message}")

    parser.error = refuse
    return make_call(verb, parser.parse_args(argv[words:]))
