"""The BERT mapping (also sentence-transformers' MiniLM): learned absolute and token-type
positions, post-norm blocks, a GELU MLP, and a tanh pooler on [CLS] under the classifier."""

from __future__ import annotations

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.hf.common import ACT_TO_HF, LAYER, act

ARCHITECTURES = {
    "BertModel": ("bert", "encoder"),
    "BertForSequenceClassification": ("bert", "sequence_classifier"),
}
_BLOCK = r"{p}encoder.layer.\1."
NAMES = [
    (r"model\.embed_tokens\.", "{p}embeddings.word_embeddings.", 0),
    (r"model\.embed_positions\.", "{p}embeddings.position_embeddings.", 0),
    (r"model\.embed_token_types\.", "{p}embeddings.token_type_embeddings.", 0),
    (r"model\.embed_norm\.", "{p}embeddings.LayerNorm.", 0),
    (LAYER + r"self_attn\.q_proj\.", _BLOCK + "attention.self.query.", 0),
    (LAYER + r"self_attn\.k_proj\.", _BLOCK + "attention.self.key.", 0),
    (LAYER + r"self_attn\.v_proj\.", _BLOCK + "attention.self.value.", 0),
    (LAYER + r"self_attn\.o_proj\.", _BLOCK + "attention.output.dense.", 0),
    (LAYER + r"input_layernorm\.", _BLOCK + "attention.output.LayerNorm.", 0),
    (LAYER + r"mlp\.up_proj\.", _BLOCK + "intermediate.dense.", 0),
    (LAYER + r"mlp\.down_proj\.", _BLOCK + "output.dense.", 0),
    (LAYER + r"post_attention_layernorm\.", _BLOCK + "output.LayerNorm.", 0),
    (r"head\.dense\.", "{p}pooler.dense.", 0),
    (r"classifier\.", "classifier.", 0),
]
PREFIX = {"sequence_classifier": "bert."}
TRANSPOSED = None


def config_from_hf(hf: dict, where: str) -> dict:
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
        activation=act(hf.get("hidden_act", "gelu"), where),
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("hidden_dropout_prob", 0.0),
    )


def heads_from_hf(hf: dict, where: str) -> dict:
    """BERT's classifier: the tanh pooler on [CLS], then a Linear."""
    dropout = hf.get("classifier_dropout") or hf.get("hidden_dropout_prob", 0.0)
    head = dict(head="pooler_tanh", pooling="cls", dense_bias=True, bias=True, dropout=dropout)
    return {"classifier_defaults": head}


def config_to_hf(cfg: ModelConfig, meta: dict, family: str) -> dict:
    return dict(
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_seq_len,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        hidden_act=ACT_TO_HF[cfg.activation],
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=0.0,
    )
