"""`lmforge <verb> ...`: parse, call a stage, print. Nothing else lives here.

Every training verb takes ``--config recipe.yaml`` plus any number of ``key.sub=value``
overrides, e.g. ``lmforge pretrain --config configs/demo/pretrain.yaml trainer.max_steps=50``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from lmforge.errors import LmforgeError

EPILOG = textwrap.dedent(
    """\
    The four stages, start to finish on the embedded default corpus:
      lmforge data build --out data/default
      lmforge tokenizer train --data data/default --vocab-size 8192 --out runs/demo/tokenizer
      lmforge pretrain --config configs/demo/pretrain.yaml
      lmforge generate runs/demo/pretrain --prompt "The meaning of" --max-new-tokens 60

    Run `lmforge <verb> --help` for each verb's options.
    """
)


def _fmt(cls):
    return lambda prog: cls(prog, max_help_position=32, width=100)


def _add_config_args(p: argparse.ArgumentParser, default_config: str | None) -> None:
    p.add_argument(
        "--config", "-c", default=default_config, help=f"YAML recipe (default: {default_config})"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="override any config key, e.g. trainer.max_steps=50 model.n_layer=2 (values are YAML)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="From raw text to a language model you can fine-tune, compress, talk to and deploy.",
        epilog=EPILOG,
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    parser.add_argument("--version", action="version", version=f"lmforge {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")

    # data ------------------------------------------------------------------------------
    data = verbs.add_parser(
        "data", help="build and inspect corpora", description="Build and inspect corpora."
    )
    data_verbs = data.add_subparsers(dest="data_verb", metavar="<action>")
    build = data_verbs.add_parser(
        "build",
        help="write the embedded default corpus from Debian text packages",
        description=textwrap.dedent(
            """\
            Write the embedded default corpus as parquet shards (columns: text, source) plus
            stats.json, from Debian packages: WordNet glosses and examples (wordnet-base), GCIDE
            definitions (dict-gcide), the King James Bible (bible-kjv, bible-kjv-text) and
            fortunes (fortunes). Install them with:
              apt-get install wordnet-base dict-gcide bible-kjv bible-kjv-text fortunes
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    build.add_argument("--out", required=True, help="output directory (replaced atomically)")
    build.add_argument(
        "--sources",
        nargs="+",
        default=["wordnet", "gcide", "kjv", "fortunes"],
        help="which sources to include (default: all four)",
    )
    build.add_argument(
        "--max-docs-per-source", type=int, default=None, help="cap each source (for quick runs)"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars")

    stats = data_verbs.add_parser("stats", help="documents, characters and words of any corpus")
    stats.add_argument("path", help="a file or directory of txt / jsonl / parquet / csv")
    stats.add_argument("--text-column", default="text")

    # tokenizer ---------------------------------------------------------------------------
    tok = verbs.add_parser(
        "tokenizer",
        help="train or inspect a BPE tokenizer",
        description="Byte-level BPE tokenizers.",
    )
    tok_verbs = tok.add_subparsers(dest="tok_verb", metavar="<action>")
    train = tok_verbs.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on a corpus",
        description=textwrap.dedent(
            """\
            Train a byte-level BPE tokenizer (Hugging Face `tokenizers`) with the special tokens
            every later stage needs already reserved: BOS/EOS/PAD, the ChatML roles and <|mask|>.
            Writes tokenizer.json (loadable by transformers' PreTrainedTokenizerFast) and
            summary.json with bytes/token on training and held-out text.
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    train.add_argument(
        "--data", required=True, help="a file or directory of txt / jsonl / parquet / csv"
    )
    train.add_argument(
        "--vocab-size", type=int, default=8192, help="vocabulary size (default 8192)"
    )
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument(
        "--text-column", default="text", help="text column for jsonl/parquet/csv (default: text)"
    )
    encode = tok_verbs.add_parser("encode", help="show how a text is split into tokens")
    encode.add_argument("tokenizer", help="tokenizer directory or tokenizer.json")
    encode.add_argument("text")

    # pretrain ----------------------------------------------------------------------------
    pre = verbs.add_parser(
        "pretrain",
        help="pre-train a decoder on next-token prediction",
        description=textwrap.dedent(
            """\
            Pre-train a decoder (RoPE, RMSNorm, SwiGLU, GQA) on next-token prediction: tokenize the
            corpus into shards, train with AdamW + warmup/cosine, evaluate val loss and bits per byte,
            checkpoint, and write the artifact (model.safetensors, model.json, tokenizer.json,
            config.yaml, metrics.jsonl, loss.png, samples.jsonl, summary.json) to out_dir.
            Re-running the same command resumes from the newest checkpoint.

            examples:
              lmforge pretrain --config configs/demo/pretrain.yaml
              lmforge pretrain --config configs/demo/pretrain.yaml trainer.max_steps=50 model.n_layer=2
              lmforge pretrain --config configs/demo/pretrain.yaml data.path=my_texts/ out_dir=runs/mine
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(pre, "configs/demo/pretrain.yaml")

    # generate ----------------------------------------------------------------------------
    gen = verbs.add_parser(
        "generate",
        help="continue a prompt with a trained model",
        description="Sample a continuation from a model artifact, streamed to stdout (KV cache).",
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    gen.add_argument("model", help="an artifact directory (e.g. runs/demo/pretrain)")
    gen.add_argument("--prompt", "-p", default="", help="the text to continue")
    gen.add_argument("--max-new-tokens", "-n", type=int, default=100)
    gen.add_argument("--temperature", "-t", type=float, default=0.8, help="0 = greedy")
    gen.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    gen.add_argument(
        "--top-k", type=int, default=50, help="keep the k most likely tokens (0 = off)"
    )
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, e.g. 0.9")
    gen.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    gen.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    gen.add_argument("--num-samples", type=int, default=1)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lmforge")
    except Exception:
        return "dev"


def _load_stage_config(cls, args):
    from lmforge.config import load_config

    if args.config and not os.path.exists(args.config):
        from lmforge.errors import ConfigError

        raise ConfigError(
            f"config file {args.config} does not exist (run from the repository root, or pass --config)"
        )
    return load_config(cls, args.config, args.overrides)


def cmd_data(args) -> int:
    if args.data_verb == "build":
        from lmforge.data.corpora import build_default_corpus

        stats = build_default_corpus(
            args.out,
            sources=tuple(args.sources),
            max_docs_per_source=args.max_docs_per_source,
            progress=not args.no_progress,
        )
        print(json.dumps(stats, indent=2))
        return 0
    if args.data_verb == "stats":
        from lmforge.data.sources import iter_texts

        docs = chars = words = 0
        for text in iter_texts(args.path, args.text_column):
            docs += 1
            chars += len(text)
            words += len(text.split())
        print(json.dumps({"documents": docs, "characters": chars, "words": words}, indent=2))
        return 0
    print("usage: lmforge data {build,stats} ... (see lmforge data --help)", file=sys.stderr)
    return 2


def cmd_tokenizer(args) -> int:
    from lmforge.tokenizer import Tokenizer, train_tokenizer_from_path

    if args.tok_verb == "train":
        summary = train_tokenizer_from_path(
            args.data, args.vocab_size, args.out, text_column=args.text_column
        )
        print(json.dumps(summary, indent=2))
        return 0
    if args.tok_verb == "encode":
        tok = Tokenizer.load(args.tokenizer)
        ids = tok.encode(args.text)
        print(
            json.dumps(
                {"ids": ids, "tokens": [tok.decode([i]) for i in ids], "n_tokens": len(ids)},
                ensure_ascii=False,
            )
        )
        return 0
    print(
        "usage: lmforge tokenizer {train,encode} ... (see lmforge tokenizer --help)",
        file=sys.stderr,
    )
    return 2


def cmd_pretrain(args) -> int:
    from lmforge.stages import pretrain

    cfg = _load_stage_config(pretrain.PretrainConfig, args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    summary = pretrain.run(cfg)
    keys = (
        "steps",
        "final_train_loss",
        "val_loss",
        "val_bpb",
        "tokens_seen",
        "tokens_per_second",
        "mfu",
        "wall_seconds",
    )
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    print(f"artifact: {cfg.out_dir}")
    return 0


def cmd_generate(args) -> int:
    from lmforge.artifact import load
    from lmforge.infer.generate import SamplingConfig, stream_text

    loaded = load(args.model)
    if loaded.tokenizer is None:
        from lmforge.errors import CheckpointError

        raise CheckpointError(f"{args.model} has no tokenizer.json; generation needs one")
    for i in range(args.num_samples):
        cfg = SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k or None,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + i,
            stop=args.stop,
        )
        sys.stdout.write(args.prompt)
        for piece in stream_text(loaded.model, loaded.tokenizer, args.prompt, cfg):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.num_samples > 1:
            sys.stdout.write("-" * 40 + "\n")
    return 0


COMMANDS = {
    "data": cmd_data,
    "tokenizer": cmd_tokenizer,
    "pretrain": cmd_pretrain,
    "generate": cmd_generate,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.verb](args)
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted. Re-run the same command to resume from the newest checkpoint.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
