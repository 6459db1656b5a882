"""The verbs that read trained runs: evaluate, compare, convert, quantize, distil, estimate."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import Literal

from pydantic import model_validator

from lmforge.errors import ConfigError
from lmforge.model import ONNX_METHODS, QUANT_METHODS
from lmforge.stages.summaries import QuantizeSummary
from lmforge.utils import LazyModule, write_json
from lmforge.verbs.options import Call, Options, Verb, opt

# Imported when a verb runs (utils.LazyModule): the registry alone imports no recipe.
E = LazyModule("lmforge.eval.estimate")
classifier = LazyModule("lmforge.eval.classifier")
scaling_laws = LazyModule("lmforge.eval.scaling_laws")
classify = LazyModule("lmforge.stages.classify")
convert = LazyModule("lmforge.stages.convert")
distill = LazyModule("lmforge.stages.distill")
quantize = LazyModule("lmforge.stages.quantize")
scaling = LazyModule("lmforge.stages.scaling")
tradeoff = LazyModule("lmforge.stages.tradeoff")

RUN = "a classify run directory"
DISTILL_HELP = dedent("""\
            Distil a trained classifier (the teacher) into another (the student):
              lmforge distill logits --teacher runs/demo/cls-minilm --out runs/demo/teacher-logits
              lmforge distill train --config configs/demo/distill-encoder.yaml
              lmforge distill grid --config configs/demo/distill-encoder.yaml --temperatures 1 2 4 --alphas 0.5 0.9
            The student's loss is alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE
            (distill.temperature, default 4; distill.alpha, default 0.7). `distill train` is
            `classify train` with a distill section: every classify option applies.
            """)


class EvalOptions(Options):
    run: str = opt(help=RUN, positional=True)
    split: Literal["train", "val", "test"] = opt("test")


class PredictOptions(Options):
    run: str = opt(help=RUN, positional=True)
    input: str = opt(help="csv / jsonl / parquet file with a text column")
    output: str = opt(help="where to write (.csv, .jsonl or .parquet)")
    text_column: str = opt("text")
    top_k: int = opt(3, "how many labels to list in top_labels")


def predict_rows(call: Call) -> dict:
    o = call.opts
    return classify.predict(o.run, o.input, o.output, o.text_column, o.top_k)


class CompareOptions(Options):
    a: str = opt(positional=True)
    b: str = opt(positional=True)
    split: str = opt("test")
    resamples: int = opt(1000)
    seed: int = opt(0)
    out: str | None = opt(None, "also write the result as JSON here")


def compare(call: Call) -> dict:
    o = call.opts
    result = classifier.compare(o.a, o.b, o.split, o.resamples, o.seed)
    if o.out:
        write_json(o.out, result)
    return result


class ConvertOptions(Options):
    from_hf: str | None = opt(None, "a transformers checkpoint to import", metavar="DIR|hf:REPO")
    to_hf: str | None = opt(None, "an lmforge artifact to export", metavar="ARTIFACT")
    to_gguf: str | None = opt(
        None, "a decoder to write as one GGUF file (llama.cpp)", metavar="ARTIFACT|DIR|hf:REPO"
    )
    out: str = opt(help="the directory to write (the .gguf file with --to-gguf)")
    dtype: Literal["fp32", "bf16", "fp16"] | None = opt(None, "cast the weights (default: keep)")
    gguf_type: Literal["f16", "q8_0"] | None = opt(
        None, "the GGUF weights: f16 (default) or q8_0 (8-bit blocks of 32, half the size)"
    )

    @model_validator(mode="after")
    def _one_way(self):
        if [self.from_hf, self.to_hf, self.to_gguf].count(None) != 2:
            raise ValueError(
                "give one of --from-hf DIR|hf:REPO (import), --to-hf ARTIFACT (export for "
                "transformers) or --to-gguf ARTIFACT (export for llama.cpp)"
            )
        if self.to_gguf is not None and self.dtype is not None:
            raise ValueError("--dtype casts --from-hf/--to-hf weights; for GGUF use --gguf-type")
        if self.to_gguf is None and self.gguf_type is not None:
            raise ValueError("--gguf-type goes with --to-gguf")
        return self


def run_convert(call: Call) -> dict:
    o = call.opts
    if o.from_hf:
        return convert.from_hf(o.from_hf, o.out, o.dtype)
    if o.to_gguf:
        return convert.to_gguf(o.to_gguf, o.out, o.gguf_type or "f16")
    return convert.to_hf(o.to_hf, o.out, o.dtype)


class QuantizeOptions(Options):
    run: str = opt(help="a trained artifact (classify run, pretrain output, ...)", positional=True)
    method: Literal[QUANT_METHODS + ONNX_METHODS] = opt()
    group_size: int | None = opt(
        None,
        "input columns per int4 group; must divide every layer's width (default: the "
        "largest size up to 128 that does)",
        ge=1,
    )
    out: str = opt()


def run_quantize(call: Call) -> dict:
    o = call.opts
    summary = quantize.quantize(o.run, o.out, o.method, o.group_size)
    return {k: v for k, v in summary.items() if not isinstance(v, dict)}


class LogitsOptions(Options):
    teacher: str = opt(help=RUN)
    out: str = opt()
    task: str | None = opt(None, "task directory (default: the teacher's own)")
    max_examples: int | None = opt(None, "training subsample (default: the teacher's)")


def logits(call: Call) -> dict:
    o = call.opts
    return distill.teacher_logits(o.teacher, o.out, o.task, o.max_examples)


class TradeoffOptions(Options):
    dir: str = opt(positional=True)
    split: str = opt("test")
    max_latency_ms: float | None = opt(None)
    min_macro_f1: float | None = opt(None)
    max_ece: float | None = opt(None)
    max_size_mb: float | None = opt(None)


def run_tradeoff(call: Call) -> int:
    o = call.opts
    limits = o.model_dump(exclude={"dir", "split"})
    result = tradeoff.tradeoff(o.dir, o.split, **limits)
    print((Path(o.dir) / "tradeoff.md").read_text())
    return 0 if result["recommended"] else 1  # no run within the limits: a failing exit


class FitOptions(Options):
    runs: str = opt(
        help="a directory of finished pretrain runs (a sweep's out_dir)", positional=True
    )
    out: str = opt(help="where fit.json and the plots go")
    bootstrap: int = opt(100, "resamples for the intervals")
    predict_flops: float | None = opt(None, "report the optimum here")


def fit(call: Call) -> dict:
    o = call.opts
    result = scaling.fit(o.runs, o.out, bootstrap=o.bootstrap, predict_flops=o.predict_flops)
    return {k: v for k, v in result.items() if k != "runs"}


class PredictLawOptions(Options):
    flops: float = opt(help="training compute, e.g. 1e21")
    law: list[str] | None = opt(
        None, "chinchilla | epoch | kaplan | 20-tokens (repeatable; default: all)", repeat=True
    )
    as_json: bool = opt(False, "print JSON instead of a table", flag="--json")


def predict_law(call: Call):
    try:
        rows = scaling_laws.predict(call.opts.flops, call.opts.law)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return rows if call.opts.as_json else scaling_laws.format_table(rows)


class EstimateOptions(Options):
    model: str = opt(help="a preset, a stage config YAML or a checkpoint")
    method: Literal["full", "lora", "probe", "dpo", "inference"] = opt("full")
    batch: int = opt(8, "sequences per step (default 8)")
    seq: int = opt(256, "tokens per sequence (default 256)")
    dtype: Literal["fp32", "bf16", "fp16"] = opt("bf16")
    lora_r: int = opt(16)
    num_labels: int | None = opt(None, "a classification head of this many labels")
    memory_gb: float | None = opt(None, "say whether it fits in this much memory")
    no_calibrate: bool = opt(False, "skip the timed calibration")
    as_json: bool = opt(False, "print JSON", flag="--json")


def estimate(call: Call):
    o = call.opts
    kind, cfg = E.resolve_model(o.model)
    rate = None if o.no_calibrate else E.calibrate(o.dtype)
    d = E.estimate(
        cfg,
        o.method,
        o.batch,
        o.seq,
        o.dtype,
        lora_r=o.lora_r,
        num_labels=o.num_labels,
        flops_per_s=rate,
    )
    d["kind"] = kind
    return d if o.as_json else E.format_estimate(d, memory_budget_gb=o.memory_gb)


VERBS = [
    Verb(
        "classify eval",
        "evaluate a trained classifier on a split",
        lambda call: classify.evaluate(call.opts.run, call.opts.split),
        options=EvalOptions,
        inputs=("run",),
    ),
    Verb(
        "classify predict",
        "label every row of a csv / jsonl / parquet file",
        predict_rows,
        "Adds predicted, confidence, top_labels and truncated columns to each row.",
        options=PredictOptions,
        output="output",
        inputs=("run", "input"),
    ),
    Verb(
        "compare",
        "paired bootstrap of the macro-F1 difference between two classifiers",
        compare,
        dedent("""\
            Compare two runs evaluated on the same split (classify or baseline runs): the macro-F1
            difference a - b with a 95% interval from 1,000 paired bootstrap resamples of the
            examples, overall and per tier.
              lmforge compare runs/demo/cls-encoder-full runs/demo/cls-decoder-lora --split test
            """),
        options=CompareOptions,
        output="out",
        inputs=("a", "b"),
    ),
    Verb(
        "convert",
        "Hugging Face checkpoints in and out (Qwen2.5, Llama, GPT-2, ModernBERT, BERT)",
        run_convert,
        dedent("""\
            Import a transformers checkpoint as an lmforge artifact, or export one so that
            transformers (and PEFT, for LoRA runs) load it without help.
              lmforge convert --from-hf /path/to/Qwen2.5-0.5B --out runs/qwen
              lmforge convert --from-hf hf:Qwen/Qwen2.5-0.5B --out runs/qwen   (hub or its cache)
              lmforge convert --to-hf runs/demo/pretrain --out export/pretrain
              lmforge convert --to-hf runs/demo/cls-decoder-lora --out export/cls  (+ base/, adapter/)
              lmforge convert --to-gguf runs/demo/sft --out export/sft.gguf --gguf-type q8_0
            --to-gguf writes a Llama or Qwen2 decoder, its tokenizer and its chat template as one
            file for llama.cpp, llama-cpp-python, Ollama and LM Studio (f16 or q8_0 weights).
            Every verb that takes a model also takes a Hugging Face directory or hf:<repo> directly;
            converting first only saves the import on every run.
            Supported: LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, ModernBertModel /
            ForMaskedLM / ForSequenceClassification, BertModel / ForSequenceClassification (and
            the decoders' ForSequenceClassification).
            """),
        options=ConvertOptions,
        output="out",
        inputs=("from_hf", "to_hf", "to_gguf"),
    ),
    Verb(
        "quantize",
        "int8 / int4 / bf16 / fp16 / ONNX copy of a trained model, evaluated and timed",
        run_quantize,
        dedent("""\
            Quantize the attention and MLP projections of a trained model (embeddings, norms
            and the task head stay full precision). A classifier is re-evaluated on its run's
            splits and timed with the classification speed protocol.
              int8         W8A8 dynamic: int8 GEMM, activations quantized per row (faster)
              int8-weight  int8 weights, fp32 matmul (smaller, not faster)
              int4         4-bit weights per group of --group-size columns (smaller, not faster)
              bf16, fp16   the whole model cast
              onnx         a classifier exported to ONNX, run with ONNX Runtime (fp32)
              onnx-int8    the same with ONNX Runtime's int8 weights (dynamic quantization)
              lmforge quantize runs/demo/cls-decoder-lora --method int8 --out runs/demo/cls-decoder-int8
            """),
        options=QuantizeOptions,
        summary=QuantizeSummary,
        output="out",
        inputs=("run",),
    ),
    Verb(
        "distill logits",
        "run the teacher once over the training examples",
        logits,
        options=LogitsOptions,
        output="out",
        inputs=("teacher", "task"),
    ),
    Verb(
        "tradeoff",
        "every classifier under a directory: table, Pareto plot, compression damage, pick",
        run_tradeoff,
        dedent("""\
            One table of every classifier run under DIR (classify, baseline, quantize, distill),
            the quality-vs-latency Pareto frontier (tradeoff.png), what each compression cost
            against its source per tier (paired bootstrap), and the best run within your limits.
            Writes DIR/tradeoff.md, tradeoff.png, tradeoff.json.
              lmforge tradeoff runs/demo --max-latency-ms 10 --min-macro-f1 0.4 --max-ece 0.05
            """),
        options=TradeoffOptions,
        inputs=("dir",),
    ),
    Verb(
        "scaling fit",
        "fit approaches 2 and 3 to the runs under a directory",
        fit,
        dedent("""\
            Fit Chinchilla's approach 3 (L = E + A/N^alpha + B/D^beta: Huber loss on log loss,
            L-BFGS from a grid of starts) and, for IsoFLOP runs, approach 2 (a parabola per
            budget, a power law through the minima), with bootstrap intervals on the
            exponents; writes fit.json, isoflop.png, law.png and the predicted optimum.
              lmforge scaling fit runs/demo/scaling --out runs/demo/scaling-fit
            """),
        options=FitOptions,
        output="out",
        inputs=("runs",),
    ),
    Verb(
        "scaling predict",
        "N_opt, D_opt, tokens per parameter and loss for a FLOP budget under each law",
        predict_law,
        dedent("""\
            For a training budget C (FLOPs, C = 6 N D), each law's compute-optimal model size
            and token count, side by side:
              lmforge scaling predict --flops 1e21
              lmforge scaling predict --law chinchilla --flops 5.76e23   # Chinchilla's own budget
            """),
        options=PredictLawOptions,
    ),
    Verb(
        "estimate",
        "parameters, memory, FLOPs and time per step before spending them",
        estimate,
        dedent("""\
            What one training (or inference) step of a model costs: parameters and trainable
            parameters, memory for weights, gradients, optimizer states and activations (with
            and without activation checkpointing), FLOPs per step, and time per step on this
            machine from a short measured calibration.
              lmforge estimate --model qwen2.5-0.5b --method full --batch 32 --seq 128 --dtype bf16 --memory-gb 16
              lmforge estimate --model configs/demo/pretrain.yaml --method full --batch 8 --seq 256
              lmforge estimate --model runs/demo/pretrain --method lora --batch 32 --seq 64
            """),
        options=EstimateOptions,
        inputs=("model",),
    ),
]
