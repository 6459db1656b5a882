"""The families: which transformers classes lmforge reads and writes, the module holding each
family's mapping, and which family an lmforge model exports as.

Each family module gives the same names: ``ARCHITECTURES`` (transformers class -> (family,
lmforge kind)), ``config_from_hf`` (config.json -> ModelConfig fields), ``heads_from_hf`` (the
heads' settings for the artifact metadata), ``config_to_hf`` (the family's config.json keys),
``NAMES`` (the parameter name table), ``PREFIX`` (the backbone's prefix inside each class) and
``TRANSPOSED`` (the tensors transformers stores (in, out), or None).
"""

from __future__ import annotations

from types import ModuleType

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.hf import bert, gpt2, llama, modernbert

FAMILIES: dict[str, ModuleType] = {
    "llama": llama,
    "qwen2": llama,
    "gpt2": gpt2,
    "modernbert": modernbert,
    "bert": bert,
}
# HF class -> (family, lmforge kind)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    **llama.ARCHITECTURES,
    **gpt2.ARCHITECTURES,
    **modernbert.ARCHITECTURES,
    **bert.ARCHITECTURES,
}
MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "gpt2": "gpt2",
    "modernbert": "modernbert",
    "bert": "bert",
}


def export_family(cfg: ModelConfig) -> str:
    """The transformers family an lmforge model exports as: its own if imported, else by flags."""
    if cfg.family in MODEL_TYPES:
        return cfg.family
    if not cfg.causal:
        if cfg.post_norm or cfg.pos_embedding == "learned":
            return "bert"
        _require(
            cfg,
            "ModernBERT",
            norm="layernorm",
            mlp="geglu",
            first_attn_norm=False,
            embed_norm=True,
            final_norm=True,
            pos_embedding="rope",
        )
        return "modernbert"
    if cfg.pos_embedding == "learned":
        _require(
            cfg,
            "GPT-2",
            norm="layernorm",
            mlp="gelu",
            norm_bias=True,
            attn_qkv_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            global_every=0,
        )
        return "gpt2"
    _require(
        cfg,
        "Llama/Qwen2",
        norm="rmsnorm",
        mlp="swiglu",
        global_every=0,
        post_norm=False,
        embed_norm=False,
        final_norm=True,
        type_vocab_size=0,
    )
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
