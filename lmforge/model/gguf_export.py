"""One GGUF file that llama.cpp (and what runs on it: llama-cpp-python, Ollama, LM Studio) loads:
a Llama- or Qwen2-family decoder with its tokenizer and chat template, in F16 or Q8_0.

What follows llama.cpp's own converter (convert_hf_to_gguf.py: `LlamaModel`, `Qwen2Model`,
`ModelBase.prepare_tensors`, `TextModel.get_vocab_base`) and its loaders (src/models/llama.cpp,
qwen2.cpp, llama-vocab.cpp), read, not guessed:

- Tensor names: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
  ffn_gate, ffn_up, ffn_down}, output_norm, output. Tied embeddings write no `output`: both
  loaders fall back to token_embd.
- RoPE layout. transformers (and lmforge) rotate the two halves of each head (NEOX style);
  llama.cpp's "llama" rotates interleaved pairs (Meta's original layout), so the converter
  permutes the rows of Q and K (weights and biases) back, per head. Its "qwen2" uses the NEOX
  rotation itself: nothing is permuted.
- Types: 1-D tensors, norms and biases stay F32 in every file; every other weight (the
  embeddings and the output matrix too) is F16 or Q8_0 (32 weights share one fp16 scale);
  a row whose length is not a multiple of 32 cannot be Q8_0 and stays F16.
- The vocabulary: tokenizer.ggml.model "gpt2" (byte-level BPE) with the tokens in id order,
  padded to the model's vocab_size with "[PADi]" (UNUSED), added special tokens CONTROL,
  other added tokens USER_DEFINED; the merges as "a b" strings; `tokenizer.ggml.pre` names the
  pre-tokenizer regex llama.cpp must split text with (it has no regex of its own).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.hf.families import export_family
from lmforge.model.hf.names import name_map
from lmforge.model.transformer import rope_frequencies

Q = gguf.GGMLQuantizationType
FILE_TYPES = {
    "f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
}

# transformers' (and lmforge's) module names -> llama.cpp's
TOP_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# The pre-tokenizer regexes of the tokenizer.json files llama.cpp knows, by its name for each.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE = {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe"}


# --------------------------------------------------------------------------------------------
# What can be exported
# --------------------------------------------------------------------------------------------


def gguf_architecture(cfg: ModelConfig, kind: str, meta: dict) -> str:
    """llama.cpp's architecture for this model ("llama" or "qwen2"), or a ConfigError saying
    why there is none and what to do instead."""
    if kind != "causal_lm":
        what = {
            "sequence_classifier": "a classifier (llama.cpp has no classification head)",
            "masked_lm": "an encoder (masked LM)",
            "encoder": "an encoder",
        }.get(kind, f"a {kind}")
        raise ConfigError(
            f"GGUF export writes text-generating decoders; this run is {what}. Serve it with "
            "`lmforge serve`, or export it for transformers with `lmforge convert --to-hf`"
        )
    method = meta.get("quantization", {}).get("method")
    if method not in (None, "bf16", "fp16"):  # a cast is plain weights; int8/int4 layers are not
        raise ConfigError(
            f"this run is quantized ({method}); llama.cpp cannot read lmforge's quantized "
            "layers. Export the run it was quantized from, with --gguf-type q8_0 for 8 bits"
        )
    try:
        family = export_family(cfg)
    except CheckpointError as e:
        raise ConfigError(f"no llama.cpp architecture fits this model: {e}") from None
    if family not in ("llama", "qwen2"):
        raise ConfigError(
            f"this model is of the {family} family; lmforge writes GGUF for Llama and Qwen2 "
            "decoders only. Export it with `lmforge convert --to-hf` and convert that directory "
            "with llama.cpp's convert_hf_to_gguf.py"
        )
    if cfg.activation != "silu":
        raise ConfigError(
            f"llama.cpp's {family} runs SwiGLU with SiLU; this model's MLP uses "
            f"{cfg.activation}, so llama.cpp would compute a different function"
        )
    if family == "qwen2":
        # llama.cpp's qwen2 sizes its attention output n_embd x n_embd and reads no rope_freqs
        if cfg.n_head * cfg.dim_per_head != cfg.n_embd:
            raise ConfigError(
                f"llama.cpp's qwen2 needs n_head * head_dim == n_embd; this model has "
                f"{cfg.n_head} x {cfg.dim_per_head} != {cfg.n_embd}"
            )
        if cfg.rope_scaling == "llama3":
            raise ConfigError("llama.cpp's qwen2 has no Llama 3 RoPE scaling")
    return family


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (`tokenizer.ggml.pre`)."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(
            f"llama.cpp's gpt2 tokenizer is byte-level BPE; this tokenizer is {model.get('type')}"
        )
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex") and not pre.get("add_prefix_space"):
        return "gpt-2"  # lmforge's own tokenizers: GPT-2's regex inside ByteLevel
    parts = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(parts) == 2:
        split, byte_level = parts
        regex = (split.get("pattern") or {}).get("Regex")
        if (
            split.get("type") == "Split"
            and byte_level.get("type") == "ByteLevel"
            and not byte_level.get("use_regex")
            and regex in SPLIT_PRE
        ):
            return SPLIT_PRE[regex]
    raise ConfigError(
        f"llama.cpp has no pre-tokenizer known to match this tokenizer's ({json.dumps(pre)[:200]}); "
        "it would split text differently from training. lmforge's own tokenizers and Qwen2's "
        "and Llama 3's are supported"
    )


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a transformers tensor name of a Llama/Qwen2 decoder."""
    module, _, leaf = hf_name.rpartition(".")
    if module in TOP_NAMES:
        return f"{TOP_NAMES[module]}.{leaf}"
    parts = module.split(".")
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in BLOCK_NAMES:
        return f"blk.{parts[2]}.{BLOCK_NAMES['.'.join(parts[3:])]}.{leaf}"
    raise ConfigError(f"no llama.cpp tensor for '{hf_name}'")


def interleave_rope_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a Q or K projection (weight or bias) from rotate-half order to interleaved pairs.

    Within each head, transformers pairs dimension i with i + d/2; llama.cpp's "llama" pairs
    2i with 2i+1. Row i of the first half goes to 2i, row i of the second half to 2i+1 (the
    permutation of convert_hf_to_gguf.py's LlamaModel.permute)."""
    rows = t.shape[0]
    # (n_head, 2 halves, d/2, ...) -> (n_head, d/2, 2, ...): half h, index i -> position 2i + h
    return t.reshape(n_head, 2, rows // n_head // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def gguf_tensors(model: nn.Module, arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array in llama.cpp's layout) for every tensor of the model."""
    cfg: ModelConfig = model.cfg
    state = model.state_dict()
    for hf_name, ours in name_map(model, arch, "").items():
        (source,) = ours  # Llama/Qwen2 fuse nothing: one lmforge tensor per transformers one
        t = state[source].detach().float().cpu()
        if arch == "llama" and ".self_attn.q_proj." in hf_name:
            t = interleave_rope_rows(t, cfg.n_head)
        if arch == "llama" and ".self_attn.k_proj." in hf_name:
            t = interleave_rope_rows(t, cfg.kv_heads)
        yield gguf_name(hf_name), t.numpy()
    if cfg.rope_scaling == "llama3":
        # llama.cpp divides each rotation frequency by its factor in `rope_freqs`
        plain = rope_frequencies(cfg.model_copy(update={"rope_scaling": "none"}), cfg.rope_theta)
        yield "rope_freqs.weight", (plain / rope_frequencies(cfg, cfg.rope_theta)).numpy()


def encode_tensor(name: str, array: np.ndarray, file_type: str) -> tuple[np.ndarray, Q]:
    """The array as stored, and its GGML type (as convert_hf_to_gguf.py's prepare_tensors)."""
    if array.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return array.astype(np.float32), Q.F32
    qtype = FILE_TYPES[file_type][1]
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:  # Q8_0 needs rows of whole 32-weight blocks
        return gguf.quants.quantize(array, Q.F16), Q.F16


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _write_hparams(w: gguf.GGUFWriter, cfg: ModelConfig, arch: str, file_type: str) -> None:
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_key_length(cfg.dim_per_head)
    w.add_value_length(cfg.dim_per_head)
    w.add_rope_dimension_count(cfg.dim_per_head)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    theta = cfg.rope_theta
    if cfg.rope_scaling == "ntk":  # lmforge's NTK is a static raised base: write that base
        d = cfg.dim_per_head
        theta = theta * cfg.rope_scaling_factor ** (d / (d - 2))
    w.add_rope_freq_base(theta)
    if cfg.rope_scaling == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling_factor)
    if arch == "llama":
        w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(FILE_TYPES[file_type][0])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for ids 0..vocab_size-1."""
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{vocab_size}; they do not belong together"
        )
    added = tokenizer.hf.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            tokens.append(token)
            special = added[i].special or looks_special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def merges(tokenizer_json: dict) -> list[str]:
    """BPE merges as "left right" (a space inside a part written as U+0120 + 256, as gguf's
    SpecialVocab does; byte-level vocabularies have none)."""
    out = []
    for m in tokenizer_json["model"].get("merges") or []:
        pair = m.split(" ", 1) if isinstance(m, str) else m
        out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in pair))
    return out


def _write_tokenizer(w: gguf.GGUFWriter, tokenizer, cfg: ModelConfig) -> None:
    data = json.loads(tokenizer.hf.to_str())
    tokens, types = vocabulary(tokenizer, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(data))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges(data))
    # The tokenizer's own ids, else the model config's (llama.cpp's converter reads
    # config.json too: Qwen2.5 names <|endoftext|> its BOS there, and never adds it).
    ids = {
        "bos": tokenizer.bos_id if tokenizer.bos_id is not None else cfg.bos_token_id,
        "eos": tokenizer.eos_id if tokenizer.eos_id is not None else cfg.eos_token_id,
        "pad": tokenizer.pad_id if tokenizer.pad_id is not None else cfg.pad_token_id,
        "eot": tokenizer.im_end_id,  # a chat turn ends generation
    }
    for role, i in ids.items():
        if i is not None:
            getattr(w, f"add_{role}_token_id")(i)
    # lmforge prompts start with BOS when the tokenizer has one (data/chat.py), never else
    w.add_add_bos_token(tokenizer.bos_id is not None)
    w.add_add_eos_token(False)
    if tokenizer.chat_template is not None:
        w.add_chat_template(tokenizer.chat_template)


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that replaces it only when the body succeeds: a crash
    midway leaves the previous file (or none), never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(
    model: nn.Module,
    kind: str,
    meta: dict,
    tokenizer,
    out: str | os.PathLike,
    file_type: str = "f16",
    name: str = "",
) -> dict:
    """Write `model` and `tokenizer` as one GGUF file at `out`. Returns what was written."""
    if file_type not in FILE_TYPES:
        raise ConfigError(f"unknown GGUF type '{file_type}'; use one of {', '.join(FILE_TYPES)}")
    cfg: ModelConfig = model.cfg
    arch = gguf_architecture(cfg, kind, meta)
    if tokenizer is None:
        raise ConfigError(
            "this run has no tokenizer.json; llama.cpp needs the vocabulary inside the GGUF file. "
            "Copy the tokenizer the model was trained with into the run directory"
        )
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; --out names the .gguf file to write")
    # Everything is built in memory first, so a refusal (a vocabulary that does not fit, a
    # pre-tokenizer llama.cpp lacks) touches no file.
    w = gguf.GGUFWriter(None, arch)
    w.add_name(name or cfg.name or out.stem)
    _write_hparams(w, cfg, arch, file_type)
    _write_tokenizer(w, tokenizer, cfg)
    counts: dict[str, int] = {}
    for tensor_name, array in gguf_tensors(model, arch):
        data, qtype = encode_tensor(tensor_name, array, file_type)
        w.add_tensor(tensor_name, data, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(out) as tmp:
        try:
            w.write_header_to_file(tmp)
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return {
        "out": str(out),
        "architecture": arch,
        "gguf_type": file_type,
        "tensors_by_type": counts,
        "size_mb": round(out.stat().st_size / 2**20, 2),
    }
