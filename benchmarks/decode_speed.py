"""Batch-1 greedy decoding against the memory-bandwidth limit: lmforge (fp32, bf16, int8, int4)
against transformers' ``generate`` (fp32, bf16) and, when ``llama_cpp`` is importable and
lmforge can write GGUF, llama.cpp, side by side in one process with interleaved repeats.

At batch 1 every weight is read once per token, so a decoder cannot beat
``bandwidth / bytes read per token`` tokens/s; efficiency = tok/s x bytes / bandwidth.

- The model: Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate
  4864, vocab 151,936, tied embeddings, bias on q/k/v) with transformers' random init, built by
  ``Qwen2ForCausalLM(config).save_pretrained`` once into ``--workdir`` (cached there).
- Bandwidth: the best of 5 sums of a 1 GiB fp32 buffer (filled first, so its pages exist) with
  the benchmark's threads, before and after the rounds (the higher is used: other jobs on a
  shared machine only lower it); a copy is reported too (it reads and writes).
- Bytes read per token: the parameters the decode step reads, in the form its kernels read
  them (int8 codes and their scales, int4 packed codes and bf16 scales / zero points); the
  tied embedding counts once, as the LM head (a lookup reads one row); the KV cache (< 2 MB at
  these lengths) is left out.
- Decode tokens/s: a ``--prompt``-token prompt (random text ids, seeded), ``--new`` greedy
  tokens, timed from the first new token to the last (prefill excluded), per contender per
  round; ``--rounds`` rounds after a warm-up round, contenders in a rotated order each round;
  the median is reported (best too).
- Greedy agreement: how many of the first 16 tokens equal lmforge fp32's (the bf16 path must
  match all 16).

Contenders. lmforge: ``lmforge.artifact.load`` of the directory (fp32; bf16 via its dtype),
``quantize_model`` for int8 / int4 (int4: group 128), generation by
``lmforge.infer.generate.generate_tokens`` (KV cache). int8 runs with each decode kernel
(fbgemm's W8A8 dynamic linear, ATen's weight-only ``_weight_int8pack_mm``) and, as the
"before" point, with the LM head left in fp32. transformers: ``AutoModelForCausalLM``, sdpa,
``generate(do_sample=False)`` under ``torch.inference_mode``, its dynamic KV cache;
``--peer-compile`` adds a static cache + ``torch.compile`` contender. Same threads and glibc
malloc settings for all (one process).

    python benchmarks/decode_speed.py                     # the JSON here
    python benchmarks/decode_speed.py --layers 2 --rounds 1 --out /tmp/smoke.json

The table goes to stderr, the JSON to ``--out`` (default benchmarks/results-decode_speed.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

SHAPE = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TEXT_IDS = 151643  # ids below this are text tokens (Qwen2.5's first special token)
GOALS = {"efficiency": 0.8, "int8_tok_s": 35.0, "bf16_vs_peer_bf16": 1.6, "int8_vs_peer_fp32": 3.0}
AGREE = 16


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def bandwidth(threads: int) -> dict:
    """GB/s of a 2-thread sum and copy over 1 GiB buffers whose pages exist (filled first)."""
    torch.set_num_threads(threads)
    n = 1 << 28
    a = torch.ones(n)
    b = torch.zeros(n)

    def best(fn) -> float:
        fn()
        out = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t)
        return out

    read = n * 4 / best(a.sum) / 1e9
    copy = n * 4 / best(lambda: b.copy_(a)) / 1e9
    return {
        "read_gb_s": round(read, 1),
        "copy_read_gb_s": round(copy, 1),
        "copy_read_plus_write_gb_s": round(2 * copy, 1),
        "how": f"best of 5: sum of a 1 GiB fp32 buffer (filled first), {threads} threads; "
        "copy: the same buffer into another (reads + writes)",
    }


def machine_facts() -> dict:
    import transformers
    from provenance import git_state

    from lmforge.machine import cpu_flags, cpu_model
    from lmforge.model.quant import int8_decode_kernel, int8_kernel

    cpu = cpu_model()
    git = git_state()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": sorted(
            f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
        ),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "l3_cache": _l3(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "lmforge_int8_kernel": int8_kernel(),
        "lmforge_int8_decode_kernel": int8_decode_kernel(),
        "load_average_at_start": os.getloadavg(),
        **git,
    }


def _l3() -> str | None:
    p = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    return p.read_text().strip() if p.is_file() else None


# --------------------------------------------------------------------------------------------
# The checkpoint and the contenders
# --------------------------------------------------------------------------------------------


def build_checkpoint(workdir: Path, layers: int) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = workdir / f"qwen2.5-0.5b-shape-{layers}l"
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    cfg = Qwen2Config(**{**SHAPE, "num_hidden_layers": layers}, torch_dtype="float32")
    model = Qwen2ForCausalLM(cfg)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def bytes_read(model: nn.Module) -> int:
    """Bytes of parameters one decode step reads, as its kernels read them (module docstring)."""
    from lmforge.model.quant import Int8Head, QuantEmbedding, QuantLinear, int4pack_fits

    total, seen = 0, set()
    for m in model.modules():
        if isinstance(m, Int8Head):
            q = m._int8()
            total += q.qweight.numel() + q.scale.numel() * 4
            seen.add(id(m.weight))
        elif isinstance(m, QuantLinear):
            if m.method == "int4" and int4pack_fits(m.out_features, m.group_size):
                total += m.qweight.numel() + m.scale.numel() * 2 * 2  # bf16 scale and zero
            elif m.method == "int4":
                total += m.qweight.numel() + m.scale.numel() * 8
            else:
                total += m.qweight.numel() + m.scale.numel() * 4
            total += 0 if m.bias is None else m.bias.numel() * m.bias.element_size()
        elif isinstance(m, QuantEmbedding):
            total += m.qweight.shape[1] + 4  # one row
        elif isinstance(m, nn.Embedding):
            if id(m.weight) not in seen and not _tied_to_head(model, m.weight):
                total += m.weight.shape[1] * m.weight.element_size()
        else:
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total


def _tied_to_head(model, w) -> bool:
    head = getattr(model, "lm_head", None)
    return head is not None and head.weight is w


def lmforge_model(ckpt: Path, variant: str):
    from lmforge.artifact import load
    from lmforge.model.quant import quantize_model

    if variant == "bf16":
        return load(ckpt, dtype=torch.bfloat16).model.eval()
    model = load(ckpt).model.eval()
    if variant.startswith("int8"):
        quantize_model(model, "int8")
    elif variant == "int4":
        quantize_model(model, "int4", 128)
    if variant == "int8-head-fp32":  # the head as it was before issue 21: fp32, tied
        head = nn.Linear(model.cfg.n_embd, model.cfg.vocab_size, bias=False, device="meta")
        head.weight = model.model.embed_tokens.weight
        model.lm_head = head
    return model


def lmforge_runner(model, decode_kernel: str | None):
    from lmforge.infer.generate import SamplingConfig, generate_tokens
    from lmforge.model import quant

    def run(prompt: list[int], new: int) -> tuple[list[int], list[float]]:
        saved = quant.int8_decode_kernel
        if decode_kernel:
            quant.int8_decode_kernel = lambda: decode_kernel
        try:
            cfg = SamplingConfig(max_new_tokens=new, temperature=0, top_k=None)
            ids, stamps = [], []
            with torch.inference_mode():
                for tok in generate_tokens(model, prompt, cfg):
                    stamps.append(time.perf_counter())
                    ids.append(tok)
            return ids, stamps
        finally:
            quant.int8_decode_kernel = saved

    return run


class _Stamps:
    """A transformers streamer that notes when each new token arrives."""

    def __init__(self):
        self.first, self.stamps = True, []

    def put(self, value):
        if self.first:  # the prompt
            self.first = False
            return
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def peer_model(ckpt: Path, dtype: torch.dtype, compiled: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    if compiled:
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, fullgraph=False)
    return model


def peer_runner(model):
    def run(prompt: list[int], new: int) -> tuple[list[int], list[float]]:
        s = _Stamps()
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=0,
                streamer=s,
            )
        return out[0, len(prompt) :].tolist(), s.stamps

    return run


def llama_cpp_contenders(ckpt: Path, workdir: Path, threads: int) -> tuple[dict, list[str]]:
    """llama.cpp on lmforge's GGUF export of the same weights (`write_gguf`), or why not.

    The checkpoint has no tokenizer and the GGUF file needs one: a 300-token byte-level BPE is
    trained for it (the vocabulary is padded to the model's; the prompt is token ids, so the
    tokenizer is never used)."""
    try:
        import llama_cpp
    except ImportError:
        return {}, ["llama.cpp: llama_cpp (llama-cpp-python) is not importable: not measured"]
    try:
        from lmforge.model.gguf_export import write_gguf
    except ImportError:
        return {}, ["llama.cpp: lmforge/model/gguf_export.py does not exist: not measured"]
    from lmforge.artifact import load
    from lmforge.tokenizer import train_tokenizer

    out, notes = {}, []
    for file_type in ("f16", "q8_0"):
        path = workdir / f"{ckpt.name}-{file_type}.gguf"
        try:
            if not path.is_file():
                loaded = load(ckpt)
                tok = train_tokenizer(
                    ["the quick brown fox jumps over the lazy dog"] * 50, 300, progress=False
                )
                write_gguf(loaded.model, loaded.kind, loaded.meta, tok, path, file_type)
                del loaded
            llm = llama_cpp.Llama(
                str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False
            )
        except Exception as e:  # an export or load problem skips the contender, says why
            notes.append(f"llama.cpp {file_type}: {type(e).__name__}: {e}")
            continue
        out[f"llama.cpp-{file_type}"] = {
            "run": _llama_runner(llm),
            "bytes": path.stat().st_size,
            "version": llama_cpp.__version__,
        }
    return out, notes


def _llama_runner(llm):
    """Greedy decoding on llama.cpp's own calls (`eval`: llama_decode; argmax over its logits):
    llama-cpp-python's `generate` adds ~0.2 s of Python sampling per token here (3.4 vs 72
    tok/s on a 2-layer model), which is not llama.cpp's speed."""
    import llama_cpp
    import numpy as np

    def run(prompt: list[int], new: int) -> tuple[list[int], list[float]]:
        llm.reset()
        ids, stamps = [], []
        llm.eval(prompt)
        for _ in range(new):
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))
            stamps.append(time.perf_counter())
            ids.append(tok)
            llm.eval([tok])
        return ids, stamps

    return run


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-compile", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "lmforge-benchmarks"))
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-decode_speed.json")))
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    from lmforge.train.device import tune_cpu_allocator

    bw = bandwidth(args.threads)
    print(f"[decode] bandwidth: read {bw['read_gb_s']} GB/s", file=sys.stderr)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(workdir, args.layers)
    machine = machine_facts()

    contenders: dict[str, dict] = {}
    for variant in ("fp32", "bf16", "int8", "int8-head-fp32", "int4"):
        model = lmforge_model(ckpt, variant)
        kernels = [None]
        if variant == "int8":
            kernels = ["fbgemm", "int8pack"]
        for k in kernels:
            name = f"lmforge-{variant}" + (f"-{k}" if k else "")
            contenders[name] = {"run": lmforge_runner(model, k), "model": model}
        print(f"[decode] built lmforge {variant}", file=sys.stderr)
    for dtype in (torch.float32, torch.bfloat16):
        tag = "fp32" if dtype == torch.float32 else "bf16"
        model = peer_model(ckpt, dtype, False)
        contenders[f"transformers-{tag}"] = {"run": peer_runner(model), "model": model}
        if args.peer_compile:
            model = peer_model(ckpt, dtype, True)
            contenders[f"transformers-{tag}-static-compiled"] = {
                "run": peer_runner(model),
                "model": model,
            }
    llama, notes = llama_cpp_contenders(ckpt, workdir, args.threads)
    contenders.update(llama)
    for c in contenders.values():
        if "bytes" not in c:
            c["bytes"] = bytes_read(c["model"])

    # After building: the tuned malloc keeps what building freed (fp32 copies) in the process.
    allocator = tune_cpu_allocator()
    gen = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, TEXT_IDS, (args.prompt,), generator=gen).tolist()
    names = list(contenders)
    samples = {n: [] for n in names}
    tokens = {}
    for r in range(args.rounds + 1):  # round 0 warms up (first packs, compiles, page-ins)
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            gc.collect()
            ids, stamps = contenders[n]["run"](prompt, args.new)
            tokens.setdefault(n, ids)
            if r and len(stamps) > 1:
                samples[n].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        print(f"[decode] round {r} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    # Other jobs on a shared machine lower both the bandwidth and the decode speeds: measured
    # again after the rounds, and the higher of the two kept as the machine's.
    bw_end = bandwidth(args.threads)
    bw = {
        **max(bw, bw_end, key=lambda b: b["read_gb_s"]),
        "read_gb_s_start_end": [bw["read_gb_s"], bw_end["read_gb_s"]],
    }
    ref = tokens["lmforge-fp32"][:AGREE]
    margins = greedy_margins(contenders["lmforge-fp32"]["model"], prompt, ref)
    results = {}
    for n in names:
        tok_s = statistics.median(samples[n]) if samples[n] else None
        b = contenders[n]["bytes"]
        results[n] = {
            "tok_s": _r(tok_s),
            "tok_s_best": _r(max(samples[n])) if samples[n] else None,
            "tok_s_rounds": [_r(x) for x in samples[n]],
            "bytes_per_token": b,
            "mb_per_token": _r(b / 1e6, 1),
            "limit_tok_s": _r(bw["read_gb_s"] * 1e9 / b),
            "efficiency": _r(tok_s * b / (bw["read_gb_s"] * 1e9)) if tok_s else None,
            "greedy_agree_first16_vs_lmforge_fp32": sum(
                a == c for a, c in zip(tokens[n][:AGREE], ref, strict=False)
            ),
            "first_disagreement": next(
                (i for i, (a, c) in enumerate(zip(tokens[n][:AGREE], ref, strict=False)) if a != c),
                None,
            ),
            "tokens_first16": tokens[n][:AGREE],
        }
    result = {
        "benchmark": "decode_speed",
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "runtime_s": round(time.perf_counter() - t0, 1),
        "machine": {
            **machine,
            "bandwidth": bw,
            "glibc_malloc_tuned": allocator,
            "load_average_at_end": os.getloadavg(),
        },
        "settings": {
            "shape": {**SHAPE, "num_hidden_layers": args.layers},
            "weights": "transformers' random init (Qwen2ForCausalLM(config).save_pretrained), fp32",
            "prompt_tokens": args.prompt,
            "new_tokens": args.new,
            "rounds": args.rounds,
            "warmup_rounds": 1,
            "threads": args.threads,
            "tok_s": "decode only: (new - 1) / (time of the last new token - time of the first), "
            "median over rounds",
            "bytes_per_token": "parameters read per decode step, as the kernels read them; "
            "the tied embedding once (as the LM head); KV cache left out",
            "efficiency": "tok_s x bytes_per_token / machine.bandwidth.read_gb_s",
            "int4_group_size": 128,
            "peer": "AutoModelForCausalLM, sdpa, generate(do_sample=False), inference_mode, "
            "dynamic cache" + ("; + static cache and torch.compile" if args.peer_compile else ""),
            "llama_cpp": "llama-cpp-python's Llama on lmforge's GGUF export (write_gguf: f16, "
            "q8_0), n_threads = threads, greedy by argmax over llama_get_logits_ith after each "
            "Llama.eval (its generate() adds Python sampling overhead)",
        },
        "goals": GOALS,
        "contenders": results,
        "lmforge_fp32_logit_margins_first16": margins,
        "headlines": headlines(results),
        "notes": notes,
    }
    print_table(result)
    text = json.dumps(result, indent=2)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text + "\n")


def greedy_margins(model, prompt: list[int], ref: list[int]) -> dict:
    """fp32's top-1 minus top-2 logit at each of the first greedy steps: how far a token is
    from flipping (random weights give nearly flat logits, so low precision flips some)."""
    ids = torch.tensor([prompt + ref[:-1]])
    with torch.inference_mode():
        logits = model(ids)[0, len(prompt) - 1 :].float()
    top = logits.topk(2, dim=-1).values
    gaps = (top[:, 0] - top[:, 1]).tolist()
    return {
        "gaps": [round(g, 4) for g in gaps],
        "min": round(min(gaps), 4),
        "median": round(statistics.median(gaps), 4),
        "logit_std": round(logits.std().item(), 4),
    }


def _r(x, nd=3):
    return None if x is None else round(x, nd)


def _best(results: dict, prefix: str) -> tuple[str, float] | None:
    found = [(n, r["tok_s"]) for n, r in results.items() if n.startswith(prefix) and r["tok_s"]]
    return max(found, key=lambda t: t[1]) if found else None


def headlines(results: dict) -> dict:
    out = {}
    peers = {t: _best(results, f"transformers-{t}") for t in ("fp32", "bf16")}
    best_peer = max((p for p in peers.values() if p), key=lambda t: t[1], default=None)
    for tag in ("fp32", "bf16", "int8", "int4"):
        ours = _best(results, f"lmforge-{tag}")
        if not ours:
            continue
        entry = {
            "lmforge": ours[0],
            "tok_s": ours[1],
            "efficiency": results[ours[0]]["efficiency"],
            "efficiency_goal": GOALS["efficiency"] if tag != "fp32" else None,
        }
        for peer in peers.values():
            if peer:
                entry[f"vs_{peer[0]}"] = _r(ours[1] / peer[1], 2)
        if best_peer:
            entry["best_peer"] = best_peer[0]
            entry["speedup_vs_best_peer"] = _r(ours[1] / best_peer[1], 2)
        out[tag] = entry
    if "bf16" in out and peers["bf16"]:
        out["bf16"]["goal_vs_peer_bf16"] = GOALS["bf16_vs_peer_bf16"]
    if "int8" in out:
        out["int8"]["goal_tok_s"] = GOALS["int8_tok_s"]
        if peers["fp32"]:
            out["int8"]["goal_vs_peer_fp32"] = GOALS["int8_vs_peer_fp32"]
    return out


def print_table(result: dict) -> None:
    bw = result["machine"]["bandwidth"]["read_gb_s"]
    lines = [f"bandwidth (read) {bw} GB/s", ""]
    lines.append(
        f"{'contender':38s} {'tok/s':>7s} {'best':>7s} {'MB/tok':>8s} {'limit':>7s} "
        f"{'eff':>6s} {'agree':>6s}"
    )
    for n, r in result["contenders"].items():
        lines.append(
            f"{n:38s} {r['tok_s'] or 0:7.2f} {r['tok_s_best'] or 0:7.2f} {r['mb_per_token']:8.1f} "
            f"{r['limit_tok_s']:7.1f} {r['efficiency'] or 0:6.2f} "
            f"{r['greedy_agree_first16_vs_lmforge_fp32']:>3d}/16"
        )
    lines.append("")
    for tag, h in result["headlines"].items():
        ratios = ", ".join(f"{k[3:]} {v}x" for k, v in h.items() if k.startswith("vs_"))
        lines.append(
            f"{tag}: {h['lmforge']} {h['tok_s']:.1f} tok/s, efficiency {h['efficiency']:.2f}; "
            + ratios
        )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
