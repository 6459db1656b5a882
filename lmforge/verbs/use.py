"""The verbs that talk to a model: generate, chat, serve."""

from __future__ import annotations

import sys
from textwrap import dedent

from lmforge.errors import CheckpointError
from lmforge.utils import LazyModule, read_json
from lmforge.verbs.options import Call, Options, Verb, opt

# Imported when a verb runs (utils.LazyModule): the registry alone imports no model code.
artifact = LazyModule("lmforge.artifact")
chat_cli = LazyModule("lmforge.infer.chat_cli")
generation = LazyModule("lmforge.infer.generate")
server = LazyModule("lmforge.infer.serve")
classifier_eval = LazyModule("lmforge.eval.classifier")

MODEL = "an artifact directory (e.g. runs/demo/pretrain), an HF directory or hf:<repo>"


class GenerateOptions(Options):
    model: str = opt(help=MODEL, positional=True)
    prompt: str = opt("", "the text to continue", short="-p")
    max_new_tokens: int = opt(100, short="-n")
    temperature: float = opt(0.8, "0 = greedy", short="-t")
    greedy: bool = opt(False, "same as --temperature 0")
    top_k: int = opt(50, "keep the k most likely tokens (0 = off)")
    top_p: float | None = opt(None, "nucleus sampling mass, e.g. 0.9")
    seed: int | None = opt(None, "for reproducible samples")
    stop: list[str] = opt([], "stop at this string (repeatable)", repeat=True)
    num_samples: int = opt(1)


def generate(call: Call) -> int:
    o = call.opts
    loaded = artifact.load_causal_lm(o.model)
    for i in range(o.num_samples):
        cfg = generation.SamplingConfig(
            max_new_tokens=o.max_new_tokens,
            temperature=0.0 if o.greedy else o.temperature,
            top_k=o.top_k or None,
            top_p=o.top_p,
            seed=None if o.seed is None else o.seed + i,
            stop=o.stop,
        )
        pieces = generation.stream_text(
            loaded.model, loaded.tokenizer, o.prompt, cfg
        )  # checks the length
        sys.stdout.write(o.prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if o.num_samples > 1:
            sys.stdout.write("-" * 40 + "\n")
    return 0


class ChatOptions(Options):
    model: str = opt(
        help="an SFT/DPO run directory, an HF chat model or hf:<repo>", positional=True
    )
    system: str | None = opt(None, "a system prompt")
    temperature: float = opt(0.7, "0 = greedy", short="-t")
    top_k: int = opt(50, "0 = off")
    top_p: float | None = opt(None)
    max_new_tokens: int = opt(256, short="-n")
    seed: int | None = opt(None)


def chat(call: Call) -> int:
    o = call.opts
    loaded = artifact.load_causal_lm(o.model)
    sampling = generation.SamplingConfig(
        max_new_tokens=o.max_new_tokens,
        temperature=o.temperature,
        top_k=o.top_k or None,
        top_p=o.top_p,
        seed=o.seed,
    )
    chat_cli.repl(loaded.model, loaded.tokenizer, sampling, system=o.system)
    return 0


class ServeOptions(Options):
    model: str = opt(
        help="a run directory (causal LM or classifier), an HF directory or hf:<repo>",
        positional=True,
    )
    host: str = opt("127.0.0.1")
    port: int = opt(8000)
    max_batch: int = opt(8, "sequences decoded together (classify: texts per forward pass)")
    max_queue: int = opt(16, "requests running + waiting; beyond it: 429 at once")
    max_tokens_cap: int = opt(512, "max_tokens above it: 422")
    max_body_bytes: int = opt(1_000_000, "larger bodies: 413")
    context: int = opt(2048, "KV-cache positions per sequence (at most the model's)")
    batch_wait_ms: float = opt(
        0.0,
        "classify: how long a batch waits for more texts (0: texts that arrive during a pass go in the next)",
    )
    shutdown_timeout_s: float = opt(10.0, "on Ctrl-C, in-flight answers get this long to finish")


def run_serve(call: Call) -> int:
    o = call.opts
    limits = server.Limits(
        max_batch=o.max_batch,
        max_queue=o.max_queue,
        max_tokens_cap=o.max_tokens_cap,
        max_body_bytes=o.max_body_bytes,
        context=o.context,
        batch_wait_ms=o.batch_wait_ms,
        shutdown_timeout_s=o.shutdown_timeout_s,
    )
    limits.check()  # before loading a model: a bad flag is a usage error at once
    loaded = artifact.load(o.model)
    if loaded.tokenizer is None:
        raise CheckpointError(
            f"{o.model} has no tokenizer.json; serving needs one beside the model"
        )
    classifier = None
    if loaded.kind == "sequence_classifier":
        classifier = served_classifier(loaded)
    elif loaded.kind != "causal_lm":
        raise CheckpointError(
            f"{o.model} is a {loaded.kind} artifact; serve takes a causal LM (pretrain, sft, "
            "dpo) or a classifier (classify train)"
        )
    name = str(o.model).rstrip("/")
    server.serve(loaded, name, o.host, o.port, limits, classifier)
    return 0


def served_classifier(loaded) -> dict:
    """How a classifier run reads its texts (max_length, padding side) and the temperature
    fitted on its val split (1.0, said, when the run has none)."""
    path = loaded.path
    if (path / "config.yaml").is_file():
        settings = classifier_eval.read_settings(path)
        max_length, side = settings.task.max_length, settings.padding_side
    else:  # an HF classifier directory: its head says how it pools
        max_length = loaded.model.cfg.max_seq_len
        side = "left" if loaded.model.cfg.causal else "right"
    metrics = path / "eval" / "val" / "metrics.json"
    temperature = read_json(metrics).get("temperature", 1.0) if metrics.is_file() else 1.0
    if not metrics.is_file():
        print(f"note: {metrics} not found: probabilities are not calibrated (temperature 1)")
    return {"max_length": max_length, "padding_side": side, "temperature": float(temperature)}


VERBS = [
    Verb(
        "generate",
        "continue a prompt with a trained model",
        generate,
        "Sample a continuation from a model artifact, streamed to stdout (KV cache).",
        options=GenerateOptions,
        inputs=("model",),
    ),
    Verb(
        "chat",
        "talk to a model in the terminal (multi-turn, streamed)",
        chat,
        "A terminal conversation with a chat model. Commands: /reset, /system TEXT, /help, /quit.",
        options=ChatOptions,
        inputs=("model",),
    ),
    Verb(
        "serve",
        "an OpenAI-compatible HTTP API and a web chat page",
        run_serve,
        dedent("""\
            Serve a model on FastAPI + uvicorn, OpenAI's wire format (docs at /docs).
            A causal LM: POST /v1/chat/completions and /v1/completions (stream=true for
            server-sent events), GET /v1/models, and a web chat at /. Concurrent requests
            decode together (--max-batch), each in its own KV-cache slot.
            A classifier run: POST /v1/classify {"input": [texts]} -> labels and probabilities
            after the temperature calibrated on its val split; texts that arrive while a
            forward pass runs share the next one.
            Binds 127.0.0.1 unless --host says otherwise; no authentication.
              lmforge serve runs/demo/dpo --port 8000
              lmforge serve runs/demo/cls-encoder-full --port 8001
              python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); ..."
            """),
        options=ServeOptions,
        inputs=("model",),
    ),
]
