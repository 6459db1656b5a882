"""The Llama and Qwen2 (Qwen2.5) mapping: Qwen2 is Llama with biases on q, k and v (and none on
the output projection or the MLP). lmforge's decoder keeps transformers' module names, so the
name table is the identity but for the classifier (transformers' ``score``)."""

from __future__ import annotations

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.hf.common import ACT_TO_HF, act

ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "causal_lm"),
    "LlamaForSequenceClassification": ("llama", "sequence_classifier"),
    "Qwen2ForCausalLM": ("qwen2", "causal_lm"),
    "Qwen2ForSequenceClassification": ("qwen2", "sequence_classifier"),
}
NAMES = [(r"classifier\.", "score.", 0), (r"", "", 0)]
PREFIX: dict[str, str] = {}
TRANSPOSED = None


def rope_from_hf(hf: dict, where: str, params: dict | None = None) -> dict:
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


def config_from_hf(hf: dict, where: str) -> dict:
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
        **rope_from_hf(hf, where),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        activation=act(hf.get("hidden_act", "silu"), where),
        attn_qkv_bias=True if family == "qwen2" else bias,
        attn_out_bias=False if family == "qwen2" else bias,
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def heads_from_hf(hf: dict, where: str) -> dict:
    """transformers' decoder classifiers: one Linear, no bias, on the last token."""
    return {"classifier_defaults": dict(head="linear", pooling="last", bias=False)}


def config_to_hf(cfg: ModelConfig, meta: dict, family: str) -> dict:
    out = dict(
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.dim_per_head,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        hidden_act=ACT_TO_HF[cfg.activation],
        rope_theta=cfg.rope_theta,
        rope_scaling=rope_to_hf(cfg),
    )
    if family == "llama":
        out.update(attention_bias=cfg.attn_qkv_bias, mlp_bias=cfg.mlp_bias)
    else:
        out.update(use_sliding_window=False)
    return out


def rope_to_hf(cfg: ModelConfig) -> dict | None:
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
