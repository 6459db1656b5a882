"""ModelConfig: one description for every model family lmforge runs.

Qwen2, Llama, GPT-2, ModernBERT and BERT differ by flags and sizes, not by classes (litgpt's
lesson): adding a family is adding a preset. Field names follow the Hugging Face configs where
one exists, so the mapping in ``model/hf/`` stays a table.
"""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, model_validator

from lmforge.config import Section
from lmforge.errors import ConfigError


class ModelConfig(Section):
    # --- shape -------------------------------------------------------------------------
    vocab_size: int = Field(8192, ge=1)
    n_layer: int = Field(6, ge=1)
    n_embd: int = Field(384, ge=1)
    n_head: int = Field(6, ge=1)
    # Grouped-query attention: n_head query heads share n_kv_head key/value heads.
    # None means n_kv_head = n_head (multi-head attention).
    n_kv_head: int | None = Field(None, ge=1)
    # None means n_embd // n_head.
    head_dim: int | None = Field(None, ge=1)
    intermediate_size: int = Field(1024, ge=1)
    max_seq_len: int = Field(256, ge=1)

    # --- behaviour flags -----------------------------------------------------------------
    causal: bool = True  # decoder (next token) or encoder (bidirectional, masked tokens)
    pos_embedding: Literal["rope", "learned"] = "rope"
    rope_theta: float = Field(10000.0, gt=0)
    # ModernBERT: local-window layers use their own RoPE base.
    rope_theta_local: float | None = None
    # Context extension (mid-training): "none", base scaling ("ntk") or position interpolation.
    # "llama3": Llama 3.1+'s frequency-dependent interpolation (the three fields below).
    rope_scaling: Literal["none", "linear", "ntk", "llama3"] = "none"
    rope_scaling_factor: float = Field(1.0, gt=0)
    rope_original_max_len: int = 8192
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    norm_bias: bool = False  # LayerNorm bias (GPT-2 and BERT have it, ModernBERT does not)
    post_norm: bool = False  # BERT normalises after the residual add
    final_norm: bool = True  # a norm after the last block (not in BERT)
    embed_norm: bool = False  # a norm right after the embeddings (BERT, ModernBERT)
    # ModernBERT skips the first layer's attention norm: the embedding norm just ran.
    first_attn_norm: bool = True
    mlp: Literal["swiglu", "geglu", "gelu"] = "swiglu"
    activation: Literal["silu", "gelu", "gelu_tanh"] = "silu"
    attn_qkv_bias: bool = False  # Qwen2 has biases on q/k/v only
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    type_vocab_size: int = Field(0, ge=0)  # BERT's token-type embeddings; 0 means none
    # ModernBERT-style alternating attention: every `global_every`-th layer (0, N, 2N, ...)
    # attends globally, the others within +-local_window/2 tokens. 0 disables windows.
    global_every: int = Field(0, ge=0)
    local_window: int = Field(0, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)

    # --- special tokens the model itself must know about ----------------------------------
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # --- provenance --------------------------------------------------------------------
    family: str = "lmforge"  # "llama", "qwen2", "gpt2", "modernbert", "bert", "lmforge"
    name: str = ""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        kv = self.kv_heads
        if self.n_head % kv != 0:
            raise ValueError(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({kv}) for grouped-query attention"
            )
        if self.head_dim is None and self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) is not divisible by n_head ({self.n_head}); set head_dim explicitly"
            )
        if self.pos_embedding == "rope" and self.dim_per_head % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.dim_per_head}")
        if self.global_every and not self.local_window:
            raise ValueError("global_every is set but local_window is 0; set both or neither")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def is_global_layer(self, i: int) -> bool:
        return not self.global_every or i % self.global_every == 0

    def flops_per_token(
        self, seq_len: int | None = None, non_embedding_params: int | None = None
    ) -> float:
        """Training FLOPs per token: 6N plus attention's 12 * L * H * Q * T (PaLM, App. B).

        N counts non-embedding parameters plus the output projection (it is a matmul that runs
        for every token); H * Q is the attention width; T the sequence length.
        """
        t = seq_len or self.max_seq_len
        n = (
            non_embedding_params
            if non_embedding_params is not None
            else self.count_params()["matmul"]
        )
        return 6 * n + 12 * self.n_layer * self.n_head * self.dim_per_head * t

    def count_params(self) -> dict[str, int]:
        """Parameter counts from the shape alone (no model needed)."""
        d, hd, L = self.n_embd, self.dim_per_head, self.n_layer
        q, kv = self.n_head * hd, self.kv_heads * hd
        attn = d * q + 2 * d * kv + q * d
        attn += (q + 2 * kv) * self.attn_qkv_bias + d * self.attn_out_bias
        n_mats = 3 if self.mlp in ("swiglu", "geglu") else 2
        mlp = n_mats * d * self.intermediate_size
        if self.mlp_bias:
            mlp += self.intermediate_size * (n_mats - 1) + d
        norm_p = d * (2 if self.norm == "layernorm" and self.norm_bias else 1)
        block = attn + mlp + 2 * norm_p
        skipped = 0 if self.first_attn_norm else norm_p
        embed = self.vocab_size * d
        if self.pos_embedding == "learned":
            embed += self.max_seq_len * d
        embed += self.type_vocab_size * d
        extra = norm_p * (int(self.final_norm) + int(self.embed_norm))
        backbone = L * block - skipped + embed + extra
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return {
            "total": backbone + head,  # with an LM head; encoders without one subtract it
            "embedding": embed,
            "non_embedding": L * block - skipped + extra,
            # what runs as a matmul per token: blocks + the output projection
            "matmul": L * block - skipped + self.vocab_size * d,
        }


def preset_from_depth(
    depth: int, vocab_size: int = 8192, max_seq_len: int = 256, **overrides
) -> ModelConfig:
    """nanochat's one dial: width = 64 * depth, heads of 64, SwiGLU hidden ~ 8/3 width.

    depth 6 gives the 16.9M-parameter demo decoder (width 384, 6 heads, FFN 1024).
    """
    width = 64 * depth
    ffn = int(round(8 / 3 * width / 64)) * 64
    cfg = dict(
        vocab_size=vocab_size,
        n_layer=depth,
        n_embd=width,
        n_head=max(1, width // 64),
        intermediate_size=ffn,
        max_seq_len=max_seq_len,
        name=f"lmforge-d{depth}",
    )
    cfg.update(overrides)
    return ModelConfig(**cfg)


_QWEN2 = dict(
    family="qwen2",
    norm="rmsnorm",
    norm_eps=1e-6,
    mlp="swiglu",
    activation="silu",
    attn_qkv_bias=True,
    rope_theta=1_000_000.0,
    vocab_size=151936,
    max_seq_len=32768,
    tie_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151643,
)
_MODERNBERT = dict(
    family="modernbert",
    causal=False,
    norm="layernorm",
    norm_eps=1e-5,
    mlp="geglu",
    activation="gelu",
    embed_norm=True,
    first_attn_norm=False,
    final_norm=True,
    global_every=3,
    local_window=128,
    rope_theta=160_000.0,
    rope_theta_local=10_000.0,
    vocab_size=50368,
    max_seq_len=8192,
    tie_embeddings=True,
    pad_token_id=50283,
    bos_token_id=50281,
    eos_token_id=50282,
)
_BERT = dict(
    family="bert",
    causal=False,
    pos_embedding="learned",
    type_vocab_size=2,
    norm="layernorm",
    norm_bias=True,
    norm_eps=1e-12,
    post_norm=True,
    final_norm=False,
    embed_norm=True,
    mlp="gelu",
    activation="gelu",
    attn_qkv_bias=True,
    attn_out_bias=True,
    mlp_bias=True,
    tie_embeddings=True,
    vocab_size=30522,
    max_seq_len=512,
    pad_token_id=0,
    dropout=0.1,
)

PRESETS: dict[str, dict] = {
    # decoders built by depth (width 64*d); the demo uses d6.
    **{f"lmforge-d{d}": {"depth": d} for d in (1, 2, 3, 4, 5, 6, 8, 10, 12)},
    # The real models' exact shapes (random weights until a checkpoint is loaded); the
    # parameter counts are tested against the published ones.
    "qwen2.5-0.5b": {
        **_QWEN2,
        "n_layer": 24,
        "n_embd": 896,
        "n_head": 14,
        "n_kv_head": 2,
        "intermediate_size": 4864,
    },
    "qwen2.5-1.5b": {
        **_QWEN2,
        "n_layer": 28,
        "n_embd": 1536,
        "n_head": 12,
        "n_kv_head": 2,
        "intermediate_size": 8960,
    },
    "llama-3.2-1b": dict(
        family="llama",
        vocab_size=128256,
        n_layer=16,
        n_embd=2048,
        n_head=32,
        n_kv_head=8,
        intermediate_size=8192,
        max_seq_len=131072,
        rope_theta=500_000.0,
        rope_scaling="llama3",
        rope_scaling_factor=32.0,
        rope_original_max_len=8192,
        norm="rmsnorm",
        norm_eps=1e-5,
        tie_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "gpt2": dict(
        family="gpt2",
        vocab_size=50257,
        n_layer=12,
        n_embd=768,
        n_head=12,
        intermediate_size=3072,
        max_seq_len=1024,
        pos_embedding="learned",
        norm="layernorm",
        norm_bias=True,
        mlp="gelu",
        activation="gelu_tanh",
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    ),
    "modernbert-base": {
        **_MODERNBERT,
        "n_layer": 22,
        "n_embd": 768,
        "n_head": 12,
        "intermediate_size": 1152,
    },
    "modernbert-large": {
        **_MODERNBERT,
        "n_layer": 28,
        "n_embd": 1024,
        "n_head": 16,
        "intermediate_size": 2624,
    },
    "bert-base-uncased": {
        **_BERT,
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "intermediate_size": 3072,
    },
    "all-minilm-l6-v2": {
        **_BERT,
        "n_layer": 6,
        "n_embd": 384,
        "n_head": 12,
        "intermediate_size": 1536,
    },
}


def from_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown model preset '{name}'.{hint} Known presets: {', '.join(PRESETS)}"
        )
    spec = dict(PRESETS[name])
    if "depth" in spec:
        return preset_from_depth(spec.pop("depth"), **{**spec, **overrides})
    return ModelConfig(**{**spec, **overrides, "name": name})
