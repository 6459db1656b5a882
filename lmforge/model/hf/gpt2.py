"""The GPT-2 mapping: learned positions, LayerNorm with biases, a GELU MLP, and Conv1D layers
that store their weights transposed (in, out) with q, k and v fused in one ``c_attn``."""

from __future__ import annotations

import re

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.hf.common import ACT_TO_HF, LAYER, act

ARCHITECTURES = {
    "GPT2LMHeadModel": ("gpt2", "causal_lm"),
    "GPT2ForSequenceClassification": ("gpt2", "sequence_classifier"),
}
NAMES = [
    (r"model\.embed_tokens\.", "{p}wte.", 0),
    (r"model\.embed_positions\.", "{p}wpe.", 0),
    (LAYER + r"input_layernorm\.", r"{p}h.\1.ln_1.", 0),
    (LAYER + r"self_attn\.q_proj\.", r"{p}h.\1.attn.c_attn.", 0),
    (LAYER + r"self_attn\.k_proj\.", r"{p}h.\1.attn.c_attn.", 1),
    (LAYER + r"self_attn\.v_proj\.", r"{p}h.\1.attn.c_attn.", 2),
    (LAYER + r"self_attn\.o_proj\.", r"{p}h.\1.attn.c_proj.", 0),
    (LAYER + r"post_attention_layernorm\.", r"{p}h.\1.ln_2.", 0),
    (LAYER + r"mlp\.up_proj\.", r"{p}h.\1.mlp.c_fc.", 0),
    (LAYER + r"mlp\.down_proj\.", r"{p}h.\1.mlp.c_proj.", 0),
    (r"model\.norm\.", "{p}ln_f.", 0),
    (r"classifier\.", "score.", 0),
    (r"lm_head\.", "lm_head.", 0),
]
PREFIX = {"causal_lm": "transformer.", "sequence_classifier": "transformer."}
# Conv1D weights, stored (in, out)
TRANSPOSED = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")


def config_from_hf(hf: dict, where: str) -> dict:
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
        activation=act(hf.get("activation_function", "gelu_new"), where),
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def heads_from_hf(hf: dict, where: str) -> dict:
    """transformers' decoder classifiers: one Linear, no bias, on the last token."""
    return {"classifier_defaults": dict(head="linear", pooling="last", bias=False)}


def config_to_hf(cfg: ModelConfig, meta: dict, family: str) -> dict:
    return dict(
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.intermediate_size,
        n_positions=cfg.max_seq_len,
        layer_norm_epsilon=cfg.norm_eps,
        activation_function=ACT_TO_HF[cfg.activation],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
