"""The verbs that talk to a model: generate, chat, serve."""

from __future__ import annotations

import sys
from textwrap import dedent

from lmforge.utils import LazyModule
from lmforge.verbs.options import Call, Options, Verb, opt

# Imported when a verb runs (utils.LazyModule): the registry alone imports no model code.
artifact = LazyModule("lmforge.artifact")
chat_cli = LazyModule("lmforge.infer.chat_cli")
generation = LazyModule("lmforge.infer.generate")
server = LazyModule("lmforge.infer.serve")

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
    model: str = opt(help="a run directory, an HF directory or hf:<repo>", positional=True)
    host: str = opt("127.0.0.1")
    port: int = opt(8000)
    max_concurrent: int = opt(2, "generations at once")
    max_tokens_cap: int = opt(512, "max_tokens above it: 400")
    max_body_bytes: int = opt(1_000_000, "larger bodies: 413")
    queue_timeout_s: float = opt(5.0, "slot wait, then 429")


def run_serve(call: Call) -> int:
    options = call.opts.model_dump()
    server.serve(options.pop("model"), **options)
    return 0


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
            Serve a model: POST /v1/chat/completions and /v1/completions (OpenAI wire format,
            stream=true for server-sent events), GET /v1/models, and a web chat at /.
            Binds 127.0.0.1 unless --host says otherwise.
              lmforge serve runs/demo/dpo --port 8000
              python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); ..."
            """),
        options=ServeOptions,
        inputs=("model",),
    ),
]
