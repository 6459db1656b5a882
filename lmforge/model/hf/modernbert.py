"""The ModernBERT mapping: an encoder with RoPE, GeGLU, bias-free LayerNorms, local attention
with a global layer every N, fused ``Wqkv`` and ``Wi`` (input and gate) tensors, and its own
dense + norm heads for masked LM and classification."""

from __future__ import annotations

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.hf.common import ACT_TO_HF, LAYER, act, first

ARCHITECTURES = {
    "ModernBertModel": ("modernbert", "encoder"),
    "ModernBertForMaskedLM": ("modernbert", "masked_lm"),
    "ModernBertForSequenceClassification": ("modernbert", "sequence_classifier"),
}
NAMES = [
    (r"model\.embed_tokens\.", "{p}embeddings.tok_embeddings.", 0),
    (r"model\.embed_norm\.", "{p}embeddings.norm.", 0),
    (LAYER + r"input_layernorm\.", r"{p}layers.\1.attn_norm.", 0),
    (LAYER + r"self_attn\.q_proj\.", r"{p}layers.\1.attn.Wqkv.", 0),
    (LAYER + r"self_attn\.k_proj\.", r"{p}layers.\1.attn.Wqkv.", 1),
    (LAYER + r"self_attn\.v_proj\.", r"{p}layers.\1.attn.Wqkv.", 2),
    (LAYER + r"self_attn\.o_proj\.", r"{p}layers.\1.attn.Wo.", 0),
    (LAYER + r"post_attention_layernorm\.", r"{p}layers.\1.mlp_norm.", 0),
    # ModernBERT's Wi holds [input, gate] and computes act(input) * gate
    (LAYER + r"mlp\.gate_proj\.", r"{p}layers.\1.mlp.Wi.", 0),
    (LAYER + r"mlp\.up_proj\.", r"{p}layers.\1.mlp.Wi.", 1),
    (LAYER + r"mlp\.down_proj\.", r"{p}layers.\1.mlp.Wo.", 0),
    (r"model\.norm\.", "{p}final_norm.", 0),
    (r"(head|decoder|classifier)\.", r"\1.", 0),
]
PREFIX = {"masked_lm": "model.", "sequence_classifier": "model."}
TRANSPOSED = None


def config_from_hf(hf: dict, where: str) -> dict:
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
        activation=act(hf.get("hidden_activation", "gelu"), where),
        attn_qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        # Layers 1.. are local whenever every > 1 (also with fewer layers than `every`: only
        # layer 0 is global then); 0 says every layer is global.
        global_every=every if every > 1 and n > 1 else 0,
        local_window=hf.get("local_attention", 128) if every > 1 and n > 1 else 0,
        dropout=hf.get("mlp_dropout", 0.0),
        # ModernBERT names its BOS and EOS cls and sep
        bos_token_id=hf.get("cls_token_id", first(hf.get("bos_token_id"))),
        eos_token_id=hf.get("sep_token_id", first(hf.get("eos_token_id"))),
    )


def heads_from_hf(hf: dict, where: str) -> dict:
    """The masked-LM head (dense, norm, decoder) and the classifier's (dense, norm, Linear)."""
    head = dict(
        head="dense_norm",
        pooling=hf.get("classifier_pooling", "cls"),
        activation=act(hf.get("classifier_activation", "gelu"), where),
        dense_bias=hf.get("classifier_bias", False),
        bias=True,
        dropout=hf.get("classifier_dropout", 0.0),
    )
    mlm_head = dict(
        head_activation=head["activation"],
        head_bias=head["dense_bias"],
        decoder_bias=hf.get("decoder_bias", True),
    )
    return {"mlm_head": mlm_head, "classifier_defaults": head}


def config_to_hf(cfg: ModelConfig, meta: dict, family: str) -> dict:
    head, mlm = meta.get("head", {}), meta.get("mlm_head", {})
    pooling = head.get("pooling")
    return dict(
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_seq_len,
        norm_eps=cfg.norm_eps,
        norm_bias=cfg.norm_bias,
        attention_bias=cfg.attn_qkv_bias,
        mlp_bias=cfg.mlp_bias,
        hidden_activation=ACT_TO_HF[cfg.activation],
        global_attn_every_n_layers=cfg.global_every or cfg.n_layer,
        local_attention=cfg.local_window or cfg.max_seq_len,
        global_rope_theta=cfg.rope_theta,
        local_rope_theta=cfg.rope_theta_local or cfg.rope_theta,
        cls_token_id=cfg.bos_token_id,
        sep_token_id=cfg.eos_token_id,
        classifier_pooling=head.get("pooling", "mean") if pooling in ("cls", "mean") else "mean",
        classifier_activation=head.get("activation", mlm.get("head_activation", "gelu")),
        classifier_bias=head.get("dense_bias", mlm.get("head_bias", False)),
        decoder_bias=mlm.get("decoder_bias", True),
    )
