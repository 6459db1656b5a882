"""Load on `lmforge serve` (lmforge/infer/serve.py), run as a user runs it: the server in its own
process (`python -m lmforge serve ARTIFACT --port P ...`), talked to over 127.0.0.1 HTTP only.

Three sections (``--sections``, all by default):

load      Streaming chat completions (stream=true, stream_options.include_usage) at
          temperature 0, ``--max-tokens`` 32 each, one user message of 5 to 120 words of
          English (Python's own documentation, pydoc_data), against the same model served two
          ways, both with --max-queue 32 (above the most clients, so nothing is refused):
            one-at-a-time   --max-batch 1: requests decode in turn (the "before": a server
                            without batched decoding)
            batched         --max-batch 16: up to 16 requests share each decode pass
          At 1, 4 and 16 concurrent clients (``--clients``), in a closed loop: each client sends
          its next request when its last one has answered; ``--requests`` per cell shared
          between the clients (the same prompts in both modes; a client sends no new request
          after ``--seconds``). Both servers run at once and their cells alternate, the one
          going first swapping, for ``--rounds`` rounds, so a change in the machine's other load
          falls on both. Per cell: aggregate completion tokens/s (the usage chunks' counts over
          the cell's wall time; the median of the rounds), request latency p50/p95 and time to
          first token p50/p95 (to the first chunk with content; the role chunk before it is
          sent before any model work), over all rounds' requests; decode tokens per decode pass
          (/health's decode_steps: how full the batches were); and CPU seconds of the server's
          event loop (its main thread: HTTP, validation, detokenizing, the events), its other
          threads (the decode engine, torch's workers) and the client process.
          Then the engine alone, no HTTP (``--engine-requests`` of the prompts submitted at once
          to DecodeEngine in a worker process, per mode): the ceiling HTTP is measured against.
          Headline: batched / one-at-a-time tokens/s at 16 clients (issue 21's goal: >= 3x),
          with p95 TTFT beside it.
classify  POST /v1/classify, one text per request (5 to 50 words), at 1 and 16 clients, a
          classifier served batched (--max-batch 16; the texts that arrive during a pass share
          the next one) and --max-batch 1: examples/s and latency p50/p95, in the same
          alternating rounds.
bad       Bad input against `lmforge serve` with its default limits (--max-batch 8,
          --max-queue 16, --max-body-bytes 1 MB, a 2 s body timeout): an unknown model, no
          messages, non-string content, n=2, a negative temperature, max_tokens above the cap,
          no Content-Type, 10 MB bodies (with Content-Length, and chunked), malformed JSON, a
          body shorter than its Content-Length, a client that leaves mid-stream (then /health is
          polled until `active` is back to 0), 16 long streamed answers at once, 100 requests
          at once (the 429s counted, and how soon they came back against the ones served).
          Each row: the status and error code, and whether the server then answered a good
          request.

Models (``--model``, repeatable; random weights unless a path is given, built once into
``--workdir``):
  demo       (default) the demo's chat model: lmforge-d3 (3 layers, width 192, 3 heads, SwiGLU
             512, 4.5M parameters, untied), vocab 8192, context 256, with a byte-level BPE
             tokenizer of 8192 trained on pydoc_data (`lmforge tokenizer train`'s trainer),
             saved as an lmforge artifact. The classifier is the demo's encoder shape
             (cls-encoder-full: lmforge-d3 ModernBERT-style, GeGLU 384, mean pooling, 45
             labels, max_length 64).
  qwen0.5b   Qwen2.5-0.5B's shape (24 layers, hidden 896, 14/2 heads, MLP 4864, vocab 151,936,
             tied embeddings) saved by transformers' save_pretrained (fp32), with a ChatML
             tokenizer: the same BPE padded to Qwen's 151,643 ids, then <|endoftext|>,
             <|im_start|>, <|im_end|> at Qwen's ids 151643-151645.
  PATH       any run directory or Hugging Face directory `lmforge serve` takes.
``--classifier PATH`` serves a classify run instead of the random demo-shaped classifier.

A random-weight model can end its turn early: the tokens reported are the ones produced. The
clients and the server share the machine's cores (as when one runs both on a laptop); each
round of each cell records the 1-minute load average before and after it, since the machine
may be shared.

    python benchmarks/serve_load.py                                 # demo, all sections, ~4 min
    python benchmarks/serve_load.py --model qwen0.5b --sections load --requests 32 --rounds 1 \\
        --seconds 150 --engine-requests 16 --merge             # + Qwen2.5-0.5B's load, ~20 min
    python benchmarks/serve_load.py --model runs/demo/dpo --classifier runs/demo/cls-encoder-full

Prints markdown tables; writes ``--out`` (default benchmarks/results-serve_load.json;
``--merge`` adds this run's measurements to what the file holds).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODES = {  # the two ways one model is served in the load section
    "one-at-a-time": ["--max-batch", "1"],
    "batched": ["--max-batch", "16"],
}
LOAD_QUEUE = 32  # --max-queue of the load servers: above the most clients, so no 429
CLASSIFY_MODES = {
    "one-at-a-time": ["--max-batch", "1"],
    "batched": ["--max-batch", "16"],
}
GOAL_SPEEDUP = 3.0  # issue 21: batched >= 3x one-at-a-time tokens/s at 16 clients
QWEN = {  # Qwen2.5-0.5B(-Instruct)'s shape and special ids
    "vocab": 151936,
    "text_ids": 151643,
    "hidden": 896,
    "layers": 24,
    "heads": 14,
    "kv_heads": 2,
    "mlp": 4864,
}
DEMO_VOCAB = 8192
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------------------------
# Building the random-weight models (in a worker process: torch stays out of the client's)
# --------------------------------------------------------------------------------------------


def corpus_texts() -> list[str]:
    """English prose any Python has: the documentation topics behind `help()` (~465 KB)."""
    import pydoc_data.topics

    return [t for _, t in sorted(pydoc_data.topics.topics.items())]


def build_demo(out: Path) -> dict:
    """The demo-shaped chat model and classifier as lmforge artifacts, sharing a tokenizer."""
    import torch

    from lmforge.artifact import save_model_artifact
    from lmforge.model.config import preset_from_depth
    from lmforge.model.heads import HeadConfig, SequenceClassifier
    from lmforge.model.transformer import LanguageModel
    from lmforge.tokenizer import train_tokenizer

    # min_frequency 1: 465 KB of text holds 8192 merges only if pairs seen once count
    tok = train_tokenizer(corpus_texts(), DEMO_VOCAB, min_frequency=1, progress=False)
    special = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    # configs/pipeline/demo.yaml's pretrain: preset=lmforge-d3, max_seq_len 256, untied
    lm_cfg = preset_from_depth(
        3, vocab_size=tok.vocab_size, max_seq_len=256, tie_embeddings=False, **special
    )
    torch.manual_seed(0)
    lm = LanguageModel(lm_cfg)
    save_model_artifact(out / "lm", lm, kind="causal_lm")
    tok.save(out / "lm")
    # the demo's encoder stage (encoder.yaml + preset=lmforge-d3 model.intermediate_size=384)
    # and cls-encoder-full's head (stages/classify.py's encoder defaults) on 45 labels
    enc_cfg = preset_from_depth(
        3,
        vocab_size=tok.vocab_size,
        max_seq_len=256,
        causal=False,
        norm="layernorm",
        mlp="geglu",
        activation="gelu",
        intermediate_size=384,
        embed_norm=True,
        first_attn_norm=False,
        global_every=3,
        local_window=128,
        rope_theta=160000.0,
        rope_theta_local=10000.0,
        tie_embeddings=True,
        **special,
    )
    labels = [f"category_{i:02d}" for i in range(45)]
    head = HeadConfig(
        num_labels=45, pooling="mean", head="dense_norm", bias=True, label_names=labels
    )
    cls = SequenceClassifier(enc_cfg, head)
    save_model_artifact(out / "cls", cls, kind="sequence_classifier")
    tok.save(out / "cls")
    # what `lmforge serve` reads of a classify run: max_length and padding (config.yaml)
    (out / "cls" / "config.yaml").write_text("task:\n  max_length: 64\npadding_side: right\n")
    return {
        "lm": {
            "path": str(out / "lm"),
            "shape": "lmforge-d3 (configs/pipeline/demo.yaml's chat model)",
            "params": sum(p.numel() for p in lm.parameters()),
            "config": {
                k: getattr(lm_cfg, k)
                for k in ("n_layer", "n_embd", "n_head", "intermediate_size", "vocab_size")
            }
            | {"max_seq_len": lm_cfg.max_seq_len, "tie_embeddings": False},
        },
        "cls": {
            "path": str(out / "cls"),
            "shape": "lmforge-d3 encoder, GeGLU 384 (the demo's cls-encoder-full), 45 labels",
            "params": sum(p.numel() for p in cls.parameters()),
            "max_length": 64,
        },
        "tokenizer": f"byte-level BPE, vocab {tok.vocab_size}, trained on pydoc_data",
    }


def build_qwen(out: Path) -> dict:
    """Qwen2.5-0.5B's shape with random weights (transformers' save_pretrained, fp32) and a
    ChatML tokenizer whose ids match Qwen's: BPE text tokens padded to 151,643, then
    <|endoftext|> <|im_start|> <|im_end|> at 151643-151645 (ids above are unused, as in Qwen)."""
    import torch
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=QWEN["vocab"],
        hidden_size=QWEN["hidden"],
        intermediate_size=QWEN["mlp"],
        num_hidden_layers=QWEN["layers"],
        num_attention_heads=QWEN["heads"],
        num_key_value_heads=QWEN["kv_heads"],
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=DEMO_VOCAB,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(corpus_texts(), trainer=trainer)
    spec = json.loads(hf.to_str())
    vocab = spec["model"]["vocab"]
    trained = len(vocab)
    # filler tokens (never produced by the merges; "Ġt123" decodes to " t123") give every id
    # a random model may pick some text
    vocab.update({f"\u0120t{i}": i for i in range(trained, QWEN["text_ids"])})
    hf = HFTokenizer.from_str(json.dumps(spec))
    hf.add_special_tokens(
        [AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    )
    assert hf.token_to_id("<|im_end|>") == 151645, hf.token_to_id("<|im_end|>")
    hf.save(str(out / "tokenizer.json"))
    roles = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    (out / "tokenizer_config.json").write_text(json.dumps(roles))
    return {
        "lm": {
            "path": str(out),
            "shape": "Qwen2.5-0.5B (random weights, transformers save_pretrained, fp32)",
            "params": sum(p.numel() for p in model.parameters()),
            "config": {
                "n_layer": QWEN["layers"],
                "n_embd": QWEN["hidden"],
                "n_head": QWEN["heads"],
                "n_kv_head": QWEN["kv_heads"],
                "intermediate_size": QWEN["mlp"],
                "vocab_size": QWEN["vocab"],
                "tie_embeddings": True,
            },
        },
        "tokenizer": f"byte-level BPE ({trained} trained tokens on pydoc_data) padded to "
        "151,643 ids, + ChatML specials at Qwen's ids",
    }


def engine_ceiling(spec: dict) -> dict:
    """The decode engine alone, no HTTP: the load's prompts (in the chat template) submitted
    at once to DecodeEngine at each --max-batch, as the server's engine thread runs them.
    What the model can do on this machine; the load cells show what is left over HTTP."""
    import threading

    from lmforge.artifact import load_causal_lm
    from lmforge.data.chat import encode_prompt
    from lmforge.infer.engine import DecodeEngine, Request
    from lmforge.infer.generate import SamplingConfig, end_token_ids

    lm = load_causal_lm(spec["path"])
    context = min(2048, lm.model.cfg.max_seq_len)  # `lmforge serve`'s default --context
    room = context - min(spec["max_tokens"], context // 2)
    prompts = [
        encode_prompt(lm.tokenizer, [{"role": "user", "content": t}], room)[0]
        for t in spec["prompts"]
    ]
    cfg = SamplingConfig(spec["max_tokens"], temperature=0, top_k=None)  # as the server's
    cfg = end_token_ids(lm.tokenizer, cfg)
    warm = dataclasses.replace(cfg, max_new_tokens=4)
    out = {}
    for mode, max_batch in spec["modes"].items():
        engine = DecodeEngine(lm.model, max_batch, context, len(prompts) + max_batch)
        finished = threading.Semaphore(0)
        tokens = [0]

        def emit(kind: str, value, tokens=tokens, finished=finished) -> None:
            if kind == "token":
                tokens[0] += 1
            else:
                finished.release()

        # a warm-up at this batch size first (first passes allocate)
        for p in prompts[:max_batch]:
            engine.submit(Request(p, warm, emit))
        for _ in prompts[:max_batch]:
            finished.acquire()
        tokens[0], steps = 0, engine.steps
        t0 = time.perf_counter()
        for p in prompts:
            engine.submit(Request(p, cfg, emit))
        for _ in prompts:
            finished.acquire()
        wall = time.perf_counter() - t0
        engine.shutdown()
        out[mode] = {
            "max_batch": max_batch,
            "requests": len(prompts),
            "completion_tokens": tokens[0],
            "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens[0] / wall, 1),
            "decode_steps": engine.steps - steps,
        }
    return out


def worker(kind: str, arg: str) -> None:
    """`--worker build-demo|build-qwen DIR`, `--worker engine SPEC.json`, `--worker facts -`:
    one JSON line on stdout."""
    if kind == "facts":
        print(json.dumps(server_side_facts()))
        return
    if kind == "engine":
        print(json.dumps(engine_ceiling(json.loads(Path(arg).read_text()))))
        return
    out_dir = Path(arg)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    info = build_demo(staging) if kind == "build-demo" else build_qwen(staging)
    staging.rename(out_dir)  # complete or absent: a killed build is redone next time
    print(json.dumps(json.loads(json.dumps(info).replace(str(staging), str(out_dir)))))


def call_worker(kind: str, out: Path, threads: int | None = None) -> dict:
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_model(name: str, work: Path) -> dict:
    """{"lm": {"path", ...}, ...} of a --model value, built once into the work directory."""
    if name in ("demo", "qwen0.5b"):
        out = work / name
        info_file = work / f"{name}.json"
        if not (out.is_dir() and info_file.is_file()):
            t0 = time.perf_counter()
            print(f"building {name} (random weights) in {out} ...", file=sys.stderr, flush=True)
            info = call_worker(f"build-{name.removesuffix('0.5b')}", out)
            info["build_s"] = round(time.perf_counter() - t0, 1)
            info_file.write_text(json.dumps(info, indent=2))
        return json.loads(info_file.read_text())
    if not Path(name).is_dir():
        raise SystemExit(f"--model {name}: not demo, qwen0.5b, or a directory")
    return {"lm": {"path": name, "shape": "given"}}


# --------------------------------------------------------------------------------------------
# The server, in its own process
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m lmforge serve ARTIFACT --port P FLAGS...`, ready once GET /health answers."""

    def __init__(
        self,
        artifact: str,
        flags: list[str],
        log: Path,
        threads: int | None = None,
        timeout_s: float = 900,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = ["lmforge", "serve", artifact, *flags]
        env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        if threads:  # torch's intra-op threads (its default: one per core)
            env["OMP_NUM_THREADS"] = str(threads)
            self.command.insert(0, f"OMP_NUM_THREADS={threads}")
        self.log = log
        self.log_file = open(log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmforge", "serve", artifact, "--port", str(self.port), *flags],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise SystemExit(f"the server did not answer within {timeout_s:.0f} s; see {log}")
            time.sleep(0.2)
        self.startup_s = round(time.perf_counter() - t0, 1)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: the server's graceful stop
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def make_prompts(n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """n passages of lo..hi words (lengths spread evenly over the range, then shuffled)."""
    words = " ".join(corpus_texts()).split()
    rng = random.Random(seed)
    lengths = [lo + round(i * (hi - lo) / max(1, n - 1)) for i in range(n)]
    rng.shuffle(lengths)
    out = []
    for k in lengths:
        at = rng.randrange(len(words) - k)
        out.append(" ".join(words[at : at + k]))
    return out


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation between ranks), None of nothing."""
    if not values:
        return None
    v = sorted(values)
    at = (len(v) - 1) * q / 100
    lo = int(at)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (at - lo)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


async def chat_stream(client: httpx.AsyncClient, body: dict) -> dict:
    """One streaming chat completion: status, latency, TTFT, the usage chunk's counts."""
    t0 = time.perf_counter()
    out = {"status": None, "ttft_s": None, "completion_tokens": 0, "error": None, "done": False}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["error"] = json.loads(await r.aread())["error"]["code"]
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        out["done"] = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        out["error"] = chunk["error"]["code"]
                    for c in chunk.get("choices", ()):
                        if out["ttft_s"] is None and c["delta"].get("content"):
                            out["ttft_s"] = time.perf_counter() - t0
                        if c.get("finish_reason"):
                            out["finish_reason"] = c["finish_reason"]
                    if chunk.get("usage"):
                        out["completion_tokens"] = chunk["usage"]["completion_tokens"]
                        out["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
    except httpx.HTTPError as e:
        out["error"] = type(e).__name__
    out["latency_s"] = time.perf_counter() - t0
    return out


async def classify_once(client: httpx.AsyncClient, text: str) -> dict:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/classify", json={"input": text, "top_k": 1})
        out = {"status": r.status_code, "error": None if r.status_code == 200 else r.text[:200]}
    except httpx.HTTPError as e:
        out = {"status": None, "error": type(e).__name__}
    out["latency_s"] = time.perf_counter() - t0
    return out


async def closed_loop(url: str, clients: int, per_client: int, seconds: float, send) -> tuple:
    """`clients` clients, each sending its next request when the last one answered, until it
    has sent `per_client` (or `seconds` have passed). `send(client, c, i)` makes request i of
    client c. All results, and the wall time from the first send to the last answer."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        results: list[dict] = []
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def one_client(c: int) -> None:
            for i in range(per_client):
                if i and time.perf_counter() > deadline:
                    return
                results.append(await send(client, c, i))

        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def cpu_seconds(pid: int) -> dict:
    """CPU seconds a process has used: its main thread (in the server: the event loop, which
    parses HTTP, validates, detokenizes and writes the events) and all its threads together
    (the decode engine and torch's workers besides)."""

    def read(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    try:
        return {"main": read(f"/proc/{pid}/task/{pid}/stat"), "total": read(f"/proc/{pid}/stat")}
    except OSError:  # not Linux
        return {"main": 0.0, "total": 0.0}


def timed_cell(server: ServerProcess, clients: int, per_client: int, seconds: float, send) -> dict:
    """One closed-loop run against a server, with its counters (/health) and the CPU seconds
    the server and this client process used meanwhile."""
    h0, cpu0, me0 = server.health(), cpu_seconds(server.proc.pid), time.process_time()
    load0 = os.getloadavg()[0]
    results, wall = asyncio.run(closed_loop(server.url, clients, per_client, seconds, send))
    h1, cpu1, me1 = server.health(), cpu_seconds(server.proc.pid), time.process_time()
    return {
        "results": results,
        "wall_s": wall,
        "counters": {k: h1[k] - h0[k] for k in ("decode_steps", "batches") if k in h1},
        "cpu_s": {
            "server_event_loop": cpu1["main"] - cpu0["main"],
            "server_other_threads": (cpu1["total"] - cpu1["main"]) - (cpu0["total"] - cpu0["main"]),
            "client": me1 - me0,
        },
        "loadavg": [load0, os.getloadavg()[0]],
    }


def pooled(runs: list[dict], clients: int, count) -> dict:
    """What every cell reports, over its rounds: the throughput (`count(ok results)` per second)
    as the median of the rounds, latency percentiles over all rounds' requests pooled, the
    server's and the client's CPU, and the load average around each round."""
    results = [r for run in runs for r in run["results"]]
    ok = [r for r in results if r["status"] == 200 and r["error"] is None and r.get("done", True)]
    per_round = []
    for run in runs:
        good = [r for r in run["results"] if r in ok]
        per_round.append(count(good) / run["wall_s"])
    lat = [r["latency_s"] for r in ok]
    cpu = {k: round(sum(run["cpu_s"][k] for run in runs), 2) for k in runs[0]["cpu_s"]}
    return {
        "clients": clients,
        "rounds": len(runs),
        "requests": len(results),
        "ok": len(ok),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "errors": dict(Counter(r["error"] for r in results if r["error"])),
        "wall_s": round(sum(run["wall_s"] for run in runs), 2),
        "per_s": round(statistics.median(per_round), 1),
        "per_s_rounds": [round(x, 1) for x in per_round],
        "latency_ms_p50": ms(pct(lat, 50)),
        "latency_ms_p95": ms(pct(lat, 95)),
        "latency_ms_max": ms(max(lat, default=None)),
        "cpu_s": cpu,
        "loadavg_1min_before_after": [[round(x, 2) for x in run["loadavg"]] for run in runs],
        "_ok": ok,
    }


def load_cell(runs: list[dict], clients: int) -> dict:
    cell = pooled(runs, clients, lambda ok: sum(r["completion_tokens"] for r in ok))
    ok = cell.pop("_ok")
    tokens = sum(r["completion_tokens"] for r in ok)
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    steps = sum(run["counters"]["decode_steps"] for run in runs)
    # each request's first token comes from its prefill; the rest from shared decode passes
    decoded = sum(max(0, r["completion_tokens"] - 1) for r in ok)
    cell["tokens_per_s"] = cell.pop("per_s")
    cell["tokens_per_s_rounds"] = cell.pop("per_s_rounds")
    return cell | {
        "completion_tokens": tokens,
        "tokens_per_request_mean": round(tokens / max(1, len(ok)), 1),
        "finish_reasons": dict(Counter(r.get("finish_reason") for r in ok)),
        "prompt_tokens_range": [
            min((r.get("prompt_tokens", 0) for r in ok), default=0),
            max((r.get("prompt_tokens", 0) for r in ok), default=0),
        ],
        "ttft_ms_p50": ms(pct(ttfts, 50)),
        "ttft_ms_p95": ms(pct(ttfts, 95)),
        "no_content": len(ok) - len(ttfts),
        "decode_steps": steps,
        "decode_tokens_per_step": round(decoded / steps, 2) if steps else None,
        "server_event_loop_us_per_token": round(
            cell["cpu_s"]["server_event_loop"] / max(1, tokens) * 1e6
        ),
    }


def chat_body(text: str, max_tokens: int) -> dict:
    return {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def warm_up(server: ServerProcess, clients: int, prompts: list[str], max_tokens: int) -> None:
    """Untimed: the first passes at each batch size allocate; no cell should pay for that."""

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=900) as client:
            for n in sorted({1, clients}):
                bodies = [chat_body(prompts[i], max_tokens) for i in range(n)]
                await asyncio.gather(*(chat_stream(client, b) for b in bodies))

    asyncio.run(go())


def interleaved(modes: list[str], rounds: int, clients: list[int]):
    """(round, clients, mode) in the order the cells run: each round goes through the client
    counts, and at each count through both servers, the one that goes first alternating, so
    that a change in the machine's other load falls on both modes alike."""
    for rnd in range(rounds):
        for i, n in enumerate(clients):
            for mode in modes if (rnd + i) % 2 == 0 else modes[::-1]:
                yield rnd, n, mode


def load_section(model: str, info: dict, args, work: Path) -> dict:
    prompts = make_prompts(max(args.requests, 16), 5, 120)
    servers: dict[str, ServerProcess] = {}
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        # both servers up at once (an idle one costs nothing), so their cells can alternate
        for mode, mode_flags in MODES.items():
            flags = [*mode_flags, "--max-queue", str(LOAD_QUEUE), *args.server_flag]
            print(f"[load] {model} {mode}: lmforge serve ... {' '.join(flags)}", file=sys.stderr)
            log = work / f"server-{model}-{mode}.log"
            servers[mode] = ServerProcess(
                info["lm"]["path"], flags, log, threads=args.server_threads
            )
            warm_up(servers[mode], max(args.clients), prompts, min(8, args.max_tokens))
        for rnd, clients, mode in interleaved(list(MODES), args.rounds, args.clients):
            per_client = max(1, args.requests // clients)

            async def send(client, c, i, per_client=per_client):
                text = prompts[(c * per_client + i) % len(prompts)]
                return await chat_stream(client, chat_body(text, args.max_tokens))

            run = timed_cell(servers[mode], clients, per_client, args.seconds, send)
            runs.setdefault((mode, clients), []).append(run)
            tokens = sum(r["completion_tokens"] for r in run["results"] if r["done"])
            print(
                f"[load] {model} round {rnd + 1}/{args.rounds} {mode:>13} {clients:>2} clients: "
                f"{tokens / run['wall_s']:8.1f} tok/s ({run['wall_s']:.1f} s, load "
                f"{run['loadavg'][1]:.1f})",
                file=sys.stderr,
                flush=True,
            )
        modes = {
            mode: {
                "server": " ".join(srv.command),
                "startup_s": srv.startup_s,
                "alive_after": srv.alive(),
                "cells": {str(n): load_cell(runs[(mode, n)], n) for n in args.clients},
            }
            for mode, srv in servers.items()
        }
    finally:
        for srv in servers.values():
            srv.stop()
    ceiling = None
    if args.engine_requests:
        print(f"[load] {model}: the engine alone (no HTTP) ...", file=sys.stderr, flush=True)
        spec = {
            "path": info["lm"]["path"],
            "prompts": prompts[: args.engine_requests],
            "max_tokens": args.max_tokens,
            "modes": {m: int(f[f.index("--max-batch") + 1]) for m, f in MODES.items()},
        }
        spec_file = work / f"engine-{model}.json"
        spec_file.write_text(json.dumps(spec))
        ceiling = call_worker("engine", spec_file, args.server_threads)
    top = str(max(args.clients))
    one, batched = modes["one-at-a-time"]["cells"][top], modes["batched"]["cells"][top]
    speedup = batched["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else None
    engine_ratio = None
    if ceiling:
        engine_ratio = round(
            ceiling["batched"]["tokens_per_s"] / ceiling["one-at-a-time"]["tokens_per_s"], 2
        )
    return {
        "model": info,
        "modes": modes,
        "engine_ceiling": ceiling,
        "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "run": {  # this model's settings (a --merge'd file holds runs of different settings)
            "requests_per_cell": args.requests,
            "seconds_per_cell_cap": args.seconds,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "clients": args.clients,
            "engine_requests": args.engine_requests,
            "server_threads": args.server_threads or "torch's default",
        },
        "headline": {
            "clients": int(top),
            "batched_tokens_per_s": batched["tokens_per_s"],
            "one_at_a_time_tokens_per_s": one["tokens_per_s"],
            "speedup": round(speedup, 2) if speedup else None,
            "speedup_per_round": [
                round(b / o, 2)
                for b, o in zip(batched["tokens_per_s_rounds"], one["tokens_per_s_rounds"])
                if o
            ],
            "goal": GOAL_SPEEDUP,
            "met": bool(speedup and speedup >= GOAL_SPEEDUP),
            "ttft_ms_p95": {"batched": batched["ttft_ms_p95"], "one-at-a-time": one["ttft_ms_p95"]},
            "engine_alone_speedup": engine_ratio,
        },
    }


def classify_section(path: str, args, work: Path) -> dict:
    texts = make_prompts(64, 5, 50, seed=1)
    servers: dict[str, ServerProcess] = {}
    runs: dict[tuple[str, int], list[dict]] = {}

    def sender(per_client: int):
        async def send(client, c, i):
            return await classify_once(client, texts[(c * per_client + i) % len(texts)])

        return send

    try:
        for mode, mode_flags in CLASSIFY_MODES.items():
            flags = [*mode_flags, "--max-queue", str(LOAD_QUEUE)]
            print(f"[classify] {mode}: lmforge serve ... {' '.join(flags)}", file=sys.stderr)
            log = work / f"server-classify-{mode}.log"
            servers[mode] = ServerProcess(path, flags, log, threads=args.server_threads)
            n = max(args.classify_clients)  # an untimed warm-up at the most clients
            asyncio.run(closed_loop(servers[mode].url, n, 2, 60, sender(2)))
        for rnd, clients, mode in interleaved(
            list(CLASSIFY_MODES), args.rounds, args.classify_clients
        ):
            per_client = max(1, args.classify_requests // clients)
            run = timed_cell(servers[mode], clients, per_client, args.seconds, sender(per_client))
            runs.setdefault((mode, clients), []).append(run)
            ok = sum(r["status"] == 200 for r in run["results"])
            print(
                f"[classify] round {rnd + 1}/{args.rounds} {mode:>13} {clients:>2} clients: "
                f"{ok / run['wall_s']:7.1f} examples/s ({run['wall_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        modes = {}
        for mode, srv in servers.items():
            cells = {}
            for n in args.classify_clients:
                cell = pooled(runs[(mode, n)], n, len)
                ok = cell.pop("_ok")
                batches = sum(run["counters"]["batches"] for run in runs[(mode, n)])
                cell["examples_per_s"] = cell.pop("per_s")
                cell["examples_per_s_rounds"] = cell.pop("per_s_rounds")
                cell["texts_per_forward_pass"] = round(len(ok) / batches, 2) if batches else None
                cells[str(n)] = cell
            modes[mode] = {"server": " ".join(srv.command), "cells": cells}
    finally:
        for srv in servers.values():
            srv.stop()
    top = str(max(args.classify_clients))
    one, batched = modes["one-at-a-time"]["cells"][top], modes["batched"]["cells"][top]
    return {
        "classifier": path,
        "texts": "5 to 50 words of pydoc_data prose, one per request",
        "modes": modes,
        "headline": {
            "clients": int(top),
            "speedup": round(batched["examples_per_s"] / one["examples_per_s"], 2)
            if one["examples_per_s"]
            else None,
        },
    }


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "What does the import statement do?"}]


def raw_request(
    url: str, head: bytes, chunks, linger_s: float = 0.0, timeout_s: float = 30
) -> dict:
    """Send a request's bytes by hand (what httpx will not send: a lying Content-Length, a
    body that stops): the head, then each body chunk while the server has not answered yet,
    then wait `linger_s`, and read the answer. Status, error code, body bytes sent, time."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    sent, note = 0, None
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                if select.select([s], [], [], 0)[0]:  # the server answered: stop sending
                    break
                s.sendall(chunk)
                sent += len(chunk)
        except OSError as e:  # the server closed while we were still sending
            note = f"{type(e).__name__} after {sent:,} body bytes"
        if linger_s:
            time.sleep(linger_s)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or not _complete(reply):
                part = s.recv(65536)
                if not part:
                    break
                reply += part
        except OSError as e:
            note = (note + "; " if note else "") + f"reading: {type(e).__name__}"
    elapsed = time.perf_counter() - t0
    status = int(reply.split()[1]) if reply.startswith(b"HTTP/") else None
    code = None
    if status:
        try:
            code = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"]
        except (ValueError, KeyError, TypeError):
            pass
    return {
        "status": status,
        "code": code,
        "body_bytes_sent": sent,
        "ms": ms(elapsed),
        "note": note,
    }


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
    return m is not None and len(body) >= int(m.group(1))


def http_head(url: str, extra: str) -> bytes:
    host = url.removeprefix("http://")
    return (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


def good_request(url: str) -> int | None:
    try:
        r = httpx.post(
            url + CHAT,
            json={"messages": HELLO, "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        return r.status_code
    except httpx.HTTPError:
        return None


def posted(url: str, **kw) -> dict:
    t0 = time.perf_counter()
    r = httpx.post(url + CHAT, timeout=60, **kw)
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    return {"status": r.status_code, "code": code, "ms": ms(time.perf_counter() - t0)}


def long_answer_prompt(url: str, max_tokens: int) -> tuple[list[dict], float]:
    """A conversation the model answers with all `max_tokens` tokens (a random model may end its
    turn early on some prompts), and how long that whole answer takes unstreamed."""
    candidates = ["What is a list?", HELLO[0]["content"], *make_prompts(8, 3, 12, seed=2)]
    for text in candidates:
        messages = [{"role": "user", "content": text}]
        t0 = time.perf_counter()
        r = httpx.post(
            url + CHAT,
            json={"messages": messages, "max_tokens": max_tokens, "temperature": 0},
            timeout=300,
        )
        if r.json()["choices"][0]["finish_reason"] == "length":
            return messages, time.perf_counter() - t0
    return messages, time.perf_counter() - t0


def disconnect_mid_stream(srv: ServerProcess) -> dict:
    """Stream a long answer, leave after its first token, and poll /health until the slot is
    free; the decode passes run after leaving show whether the server noticed."""
    messages, full_s = long_answer_prompt(srv.url, 200)
    body = {"messages": messages, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        with c.stream("POST", CHAT, json=body) as r:
            status = r.status_code
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {") and any(
                    ch["delta"].get("content") for ch in json.loads(line[6:]).get("choices", ())
                ):
                    break  # the first token arrived
            # still connected here: closing `lines` (or leaving the block) would close it
            h = srv.health()
            active_before, steps_before = h["active"], h["decode_steps"]
            lines.close()  # an unread response's connection is closed, not reused
    t0 = time.perf_counter()
    h = srv.health()
    while (h["active"] or h["waiting"]) and time.perf_counter() - t0 < 30:
        time.sleep(0.005)
        h = srv.health()
    freed_s = time.perf_counter() - t0
    steps = h["decode_steps"] - steps_before
    return {
        "status": status,
        "code": None,
        "ms": ms(freed_s),
        "active_while_streaming": active_before,
        "active_after": h["active"],
        "decode_steps_after_leaving": steps,
        "whole_answer_ms": ms(full_s),
        "note": f"max_tokens 200; /health active {active_before} while streaming, "
        f"{h['active']} {ms(freed_s)} ms after leaving ({steps} decode passes after leaving; "
        f"the whole answer takes {ms(full_s)} ms)",
    }


def long_streams(url: str, n: int = 16, max_tokens: int = 200) -> dict:
    """n long streamed answers at once (the later ones queue): each should end with [DONE]."""
    messages, _ = long_answer_prompt(url, max_tokens)
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}

    async def go():
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(chat_stream(client, body) for _ in range(n)))

    results = asyncio.run(go())
    cut = [r for r in results if not r["done"]]
    whole = [r for r in results if r["done"]]
    note = f"{len(whole)}/{n} ended with [DONE]"
    if whole:
        note += f" (the longest in {ms(max(r['latency_s'] for r in whole))} ms)"
    if cut:
        errors = ", ".join(sorted({str(r["error"]) for r in cut}))
        note += (
            f"; {len(cut)} cut mid-stream ({errors}) after "
            f"{ms(min(r['latency_s'] for r in cut))}-{ms(max(r['latency_s'] for r in cut))} ms"
        )
    return {
        "status": "/".join(sorted({str(r["status"]) for r in results})),
        "code": None,
        "ms": ms(max(r["latency_s"] for r in results)),
        "completed": len(whole),
        "cut": len(cut),
        "note": note,
    }


def burst(url: str, n: int = 100) -> dict:
    """n non-streaming requests at once (max_tokens 64): how many are served, how many get 429,
    and how soon the 429s came back against the served answers."""

    async def go():
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

            async def one(i: int) -> dict:
                t0 = time.perf_counter()
                r = await client.post(
                    CHAT,
                    json={
                        "messages": [{"role": "user", "content": f"{i}: what is a list?"}],
                        "max_tokens": 64,
                        "temperature": 0,
                    },
                )
                return {
                    "status": r.status_code,
                    "s": time.perf_counter() - t0,
                    "retry_after": r.headers.get("retry-after"),
                    "code": (r.json().get("error") or {}).get("code")
                    if r.status_code != 200
                    else None,
                }

            return await asyncio.gather(*(one(i) for i in range(n)))

    results = asyncio.run(go())
    refused = [r["s"] for r in results if r["status"] == 429]
    served = [r["s"] for r in results if r["status"] == 200]
    return {
        "status": "200 / 429",
        "code": ", ".join(sorted({r["code"] for r in results if r["code"]})) or None,
        "requests": n,
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "retry_after": sorted({r["retry_after"] for r in results if r["retry_after"]}),
        "ms": ms(max(r["s"] for r in results)),
        "refused_ms_min": ms(min(refused, default=None)),
        "refused_ms_p50": ms(pct(refused, 50)),
        "refused_ms_max": ms(max(refused, default=None)),
        "served_ms_p50": ms(pct(served, 50)),
        "served_ms_max": ms(max(served, default=None)),
        "note": f"{len(served)} served (p50 {ms(pct(served, 50))} ms, max "
        f"{ms(max(served, default=None))} ms); {len(refused)} refused with 429 "
        f"(first {ms(min(refused, default=None))} ms, p50 {ms(pct(refused, 50))} ms, max "
        f"{ms(max(refused, default=None))} ms)",
    }


def bad_section(path: str, work: Path) -> dict:
    big = 10 * 2**20
    piece = b"x" * 2**16
    opening = b'{"messages": [{"role": "user", "content": "'
    with ServerProcess(path, [], work / "server-bad.log") as srv:
        url = srv.url
        limits = {k: v for k, v in srv.health().items() if k.startswith(("max_", "body_"))}

        def body_10mb_chunks():
            yield opening
            for _ in range(big // len(piece)):
                yield piece

        def chunked(parts):
            for p in parts:
                yield f"{len(p):x}\r\n".encode() + p + b"\r\n"
            yield b"0\r\n\r\n"

        cases = [
            (
                "unknown model name",
                lambda: posted(url, json={"model": "gpt-4o", "messages": HELLO}),
            ),
            ("empty message list", lambda: posted(url, json={"messages": []})),
            (
                "non-string content (5)",
                lambda: posted(url, json={"messages": [{"role": "user", "content": 5}]}),
            ),
            ("n = 2", lambda: posted(url, json={"messages": HELLO, "n": 2})),
            (
                "negative temperature (-0.5)",
                lambda: posted(url, json={"messages": HELLO, "temperature": -0.5}),
            ),
            (
                "max_tokens above the cap (100000)",
                lambda: posted(url, json={"messages": HELLO, "max_tokens": 100000}),
            ),
            (
                "no Content-Type",
                lambda: posted(
                    url,
                    content=json.dumps({"messages": HELLO}).encode(),
                    headers={"Content-Type": ""},
                ),
            ),
            (
                "10 MB body with Content-Length",
                lambda: raw_request(
                    url,
                    http_head(url, f"Content-Length: {big + len(opening)}\r\n"),
                    body_10mb_chunks(),
                ),
            ),
            (
                "10 MB body, chunked (no Content-Length)",
                lambda: raw_request(
                    url,
                    http_head(url, "Transfer-Encoding: chunked\r\n"),
                    chunked(body_10mb_chunks()),
                ),
            ),
            (
                "malformed JSON",
                lambda: posted(
                    url,
                    content=b'{"messages": [{"role": "user", "content": "hi"}',
                    headers={"Content-Type": "application/json"},
                ),
            ),
            (
                "body shorter than its Content-Length (60 of 200 bytes, then silence)",
                lambda: raw_request(
                    url,
                    http_head(url, "Content-Length: 200\r\n"),
                    [json.dumps({"messages": HELLO}).encode()[:60]],
                ),
            ),
            ("client disconnects mid-stream", lambda: disconnect_mid_stream(srv)),
            (
                "16 long streamed answers at once (max_tokens 200; the later ones queue)",
                lambda: long_streams(url),
            ),
            ("100 requests at once (max_queue 16)", lambda: burst(url)),
        ]
        rows = []
        for sent, case in cases:
            try:
                row = case()
            except Exception as e:  # a case that breaks is a finding, not a crash
                row = {"status": None, "code": None, "note": f"{type(e).__name__}: {e}"}
            row = {"sent": sent, **row, "good_request_after": good_request(url)}
            rows.append(row)
            print(
                f"[bad] {sent}: {row['status']} {row['code']} -> good request after: "
                f"{row['good_request_after']}",
                file=sys.stderr,
                flush=True,
            )
        alive = srv.alive()
    return {"server": " ".join(srv.command), "limits": limits, "rows": rows, "alive_after": alive}


# --------------------------------------------------------------------------------------------
# Facts, tables, main
# --------------------------------------------------------------------------------------------


def server_side_facts() -> dict:
    """The machine as the server process sees it (torch's threads, ISA, precision)."""
    import importlib.util

    import fastapi
    import torch
    import uvicorn

    from lmforge.machine import cpu_flags

    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    has = {m: importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools")}
    return {
        "summary": f"{os.cpu_count()} cores, {isa}, {'AMX' if 'amx_bf16' in flags else 'no AMX'}",
        "uvicorn": uvicorn.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn_loop_and_http": ("uvloop" if has["uvloop"] else "asyncio")
        + " + "
        + ("httptools" if has["httptools"] else "h11 (pure Python)"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "amx": "amx_bf16" in flags,
    }


def machine_facts() -> dict:
    from provenance import git_state

    from lmforge.machine import cpu_model

    cpu = cpu_model()
    git = git_state()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        **call_worker("facts", Path(".")),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "note": "server and clients share the cores; the machine is shared with other work, "
        "so each cell records the 1-minute load average before and after it",
        **git,
    }


def _f(x, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def print_tables(result: dict) -> None:
    p = print
    for model, entry in result.get("load", {}).items():
        p()
        p(
            f"### load: {model} ({entry['model']['lm'].get('shape', '')}), streaming chat, "
            f"max_tokens {entry['run']['max_tokens']}, temperature 0, "
            f"{entry['run']['requests_per_cell']} requests per cell"
        )
        p()
        p(
            "| server | clients | requests | tokens/s | tokens/request | latency p50 / p95 ms | "
            "TTFT p50 / p95 ms | decode tokens/pass | event loop CPU us/token |"
        )
        p("|---|---|---|---|---|---|---|---|---|")
        for mode, m in entry["modes"].items():
            for c in m["cells"].values():
                p(
                    f"| {mode} | {c['clients']} | {c['ok']}/{c['requests']} | "
                    f"{c['tokens_per_s']:,.1f} | {c['tokens_per_request_mean']} | "
                    f"{_f(c['latency_ms_p50'])} / {_f(c['latency_ms_p95'])} | "
                    f"{_f(c['ttft_ms_p50'])} / {_f(c['ttft_ms_p95'])} | "
                    f"{_f(c['decode_tokens_per_step'], '.2f')} | "
                    f"{c['server_event_loop_us_per_token']} |"
                )
        for mode, e in (entry.get("engine_ceiling") or {}).items():
            p(
                f"| {mode}: the engine alone, no HTTP | {e['requests']} submitted at once | "
                f"{e['requests']}/{e['requests']} | {e['tokens_per_s']:,.1f} | "
                f"{e['completion_tokens'] / e['requests']:.1f} | - | - | "
                f"{(e['completion_tokens'] - e['requests']) / max(1, e['decode_steps']):.2f} | - |"
            )
    if result.get("classify"):
        entry = result["classify"]
        p()
        p(f"### classify: {entry['classifier']}, one text per request")
        p()
        p("| server | clients | requests | examples/s | latency p50 / p95 ms | texts/pass |")
        p("|---|---|---|---|---|---|")
        for mode, m in entry["modes"].items():
            for c in m["cells"].values():
                p(
                    f"| {mode} | {c['clients']} | {c['ok']}/{c['requests']} | "
                    f"{c['examples_per_s']:,.1f} | {_f(c['latency_ms_p50'], ',.1f')} / "
                    f"{_f(c['latency_ms_p95'], ',.1f')} | "
                    f"{_f(c['texts_per_forward_pass'], '.2f')} |"
                )
    if result.get("bad"):
        p()
        p(f"### bad input: `{result['bad']['server']}` (default limits)")
        p()
        p("| sent | status | error code | time ms | good request after | note |")
        p("|---|---|---|---|---|---|")
        for r in result["bad"]["rows"]:
            p(
                f"| {r['sent']} | {r['status']} | {r['code'] or '-'} | {_f(r.get('ms'), ',.1f')} | "
                f"{r['good_request_after']} | {r.get('note') or ''} |"
            )
    p()
    for line in result["headlines"]:
        p(f"- {line}")


def headlines(result: dict) -> list[str]:
    lines = []
    for model, entry in result.get("load", {}).items():
        h = entry["headline"]
        lines.append(
            f"{model}: batched {h['batched_tokens_per_s']:,.1f} tok/s vs one-at-a-time "
            f"{h['one_at_a_time_tokens_per_s']:,.1f} at {h['clients']} clients = "
            f"{h['speedup']}x (goal >= {h['goal']}x: {'met' if h['met'] else 'NOT met'}; per "
            f"round {h['speedup_per_round']}); p95 TTFT {h['ttft_ms_p95']['batched']} ms batched "
            f"vs {h['ttft_ms_p95']['one-at-a-time']} ms one-at-a-time; the engine alone, no "
            f"HTTP: {h['engine_alone_speedup']}x"
        )
    if result.get("classify"):
        h = result["classify"]["headline"]
        lines.append(
            f"classify: batched / one-at-a-time examples/s at {h['clients']} clients = "
            f"{h['speedup']}x"
        )
    if result.get("bad"):
        rows = result["bad"]["rows"]
        good = sum(r["good_request_after"] == 200 for r in rows)
        lines.append(
            f"bad input: {len(rows)} cases, a good request answered after {good} of them; "
            f"server alive after: {result['bad']['alive_after']}"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        action="append",
        help="demo (default), qwen0.5b, or a run/HF directory; repeat for several",
    )
    ap.add_argument("--classifier", help="a classify run directory (default: the demo-shaped one)")
    ap.add_argument("--sections", default="load,classify,bad", help="any of load,classify,bad")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients per load cell")
    ap.add_argument(
        "--requests",
        type=int,
        default=64,
        help="requests per load cell and round, shared between its clients (64: 1 client "
        "sends 64, 16 send 4 each)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=120,
        help="a cell's clients send no new request after this long (bounds slow models)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="each cell is run this many times, the two servers' cells alternating; "
        "throughput is the median of the rounds, percentiles pool their requests",
    )
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    ap.add_argument(
        "--engine-requests",
        type=int,
        default=32,
        help="also time the decode engine alone (no HTTP, in a worker process) on this many of "
        "the prompts submitted at once, per mode: the ceiling HTTP is measured against (0: skip)",
    )
    ap.add_argument("--classify-clients", default="1,16", help="concurrent clients per cell")
    ap.add_argument(
        "--classify-requests",
        type=int,
        default=320,
        help="requests per classify cell and round, shared between its clients",
    )
    ap.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="an extra `lmforge serve` flag for the load servers, e.g. --server-flag=--context "
        "--server-flag=512",
    )
    ap.add_argument(
        "--server-threads",
        type=int,
        help="OMP_NUM_THREADS for the load and classify servers (default: torch's, one per core)",
    )
    ap.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "lmforge-serve_load"),
        help="where the random-weight models are built once and the server logs go",
    )
    ap.add_argument(
        "--out",
        default=str(Path(__file__).with_name("results-serve_load.json")),
        help="the JSON written (the tables go to stdout, progress to stderr)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep what --out holds for models and sections this run does not measure",
    )
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    args.model = args.model or ["demo"]
    args.clients = [int(c) for c in args.clients.split(",")]
    args.classify_clients = [int(c) for c in args.classify_clients.split(",")]
    sections = set(args.sections.split(","))
    if sections - {"load", "classify", "bad"}:
        ap.error(f"unknown section: {', '.join(sorted(sections - {'load', 'classify', 'bad'}))}")

    t_start = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    infos = {m: prepare_model(m, work) for m in args.model}
    result = {
        "benchmark": "serve_load",
        "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "machine": machine_facts(),
        "settings": {
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": "true, stream_options.include_usage (tokens counted from the usage chunk)",
            "clients": args.clients,
            "requests_per_cell": args.requests,
            "seconds_per_cell_cap": args.seconds,
            "rounds": args.rounds,
            "closed_loop": "each client sends its next request when its last one answered",
            "prompts": "one user message of 5 to 120 words (pydoc_data), each once per cell, "
            "the same ones in every mode",
            "modes": {m: [*f, "--max-queue", str(LOAD_QUEUE)] for m, f in MODES.items()},
            "extra_server_flags": args.server_flag,
            "ttft": "from sending the request to the first chunk with content",
            "percentiles": "linear interpolation between ranks",
            "classify_clients": args.classify_clients,
            "classify_requests_per_cell": args.classify_requests,
            "classify_modes": {
                m: [*f, "--max-queue", str(LOAD_QUEUE)] for m, f in CLASSIFY_MODES.items()
            },
        },
        "load": {},
    }
    if "load" in sections:
        for model, info in infos.items():
            result["load"][model] = load_section(model, info, args, work)
    if "classify" in sections:
        path = args.classifier or prepare_model("demo", work)["cls"]["path"]
        result["classify"] = classify_section(path, args, work)
    if "bad" in sections:
        result["bad"] = bad_section(infos[args.model[0]]["lm"]["path"], work)
    if "load" in sections and all(m in result["load"] for m in ("demo",)):
        d = result["load"]["demo"]["modes"]["one-at-a-time"]["cells"]
        result["before"] = {
            "what": "the one-at-a-time server (--max-batch 1): requests decode in turn, as a "
            "server without batched decoding does; the 'after' is the batched server",
            "tokens_per_s": {k: c["tokens_per_s"] for k, c in d.items()},
            "ttft_ms_p95": {k: c["ttft_ms_p95"] for k, c in d.items()},
        }
    result["wall_seconds"] = round(time.perf_counter() - t_start)
    if args.merge and Path(args.out).is_file():
        # the earlier file stays the frame (its command, settings, machine); what this run
        # measured replaces its counterpart, and each load entry names its own command
        old = json.loads(Path(args.out).read_text())
        merged = old | {"load": old.get("load", {}) | result["load"]}
        merged["machine"] = old.get("machine", {}) | result["machine"]  # the same machine
        merged |= {k: result[k] for k in ("classify", "bad", "before") if k in result}
        merged["merged_runs"] = [
            *old.get("merged_runs", []),
            {"command": result["command"], "wall_seconds": result["wall_seconds"]},
        ]
        result = merged
    result["headlines"] = headlines(result)
    print_tables(result)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
