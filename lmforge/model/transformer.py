"""One Transformer for every family: causal or bidirectional, RoPE or learned positions,
RMSNorm or LayerNorm, SwiGLU / GeGLU / GELU, grouped-query attention, local/global windows,
and a KV cache for generation.

Parameter names follow Hugging Face's Llama/Qwen2 modules (``model.layers.0.self_attn.q_proj``),
so importing those checkpoints is a rename-free copy and PEFT adapter keys line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.model.config import ModelConfig

# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


def rope_frequencies(cfg: ModelConfig, theta: float) -> torch.Tensor:
    """Inverse frequencies for RoPE (Su et al. 2021), with optional context-extension scaling.

    "linear" is position interpolation (Chen et al. 2023): positions are divided by the factor.
    "ntk" raises the base (theta * s^(d/(d-2)), bloc97 / Code Llama style) so high frequencies
    are kept and low ones stretched.
    """
    dim = cfg.dim_per_head
    s = cfg.rope_scaling_factor
    if cfg.rope_scaling == "ntk" and s != 1.0:
        theta = theta * s ** (dim / (dim - 2))
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if cfg.rope_scaling == "linear" and s != 1.0:
        inv_freq = inv_freq / s
    if cfg.rope_scaling == "llama3":
        inv_freq = _llama3_scaling(cfg, inv_freq)
    return inv_freq.float()


def _llama3_scaling(cfg: ModelConfig, inv_freq: torch.Tensor) -> torch.Tensor:
    """Llama 3.1: wavelengths longer than original_len / low_freq_factor are divided by the
    factor, shorter than original_len / high_freq_factor kept, those between blended."""
    factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_len = cfg.rope_original_max_len
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (*positions.shape, head_dim), halves duplicated (HF's rotate_half
    layout): (T, head_dim) for one sequence, (B, 1, head_dim) for one position per row."""
    angles = positions.float()[..., None] * inv_freq  # (..., head_dim/2)
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D). Rotates the two halves of D (rotate_half convention)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back, as Llama/Qwen2 do: bf16 squares lose too much.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.norm_bias)


def activation(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    return lambda x: F.gelu(x, approximate="tanh")


# On the CPU, PyTorch's fused attention kernel (flash) is built for long sequences; for the
# short ones we train on, the plain maths (two batched matmuls and a softmax, which
# torch.compile fuses) runs ~1.6x faster forward + backward (benchmarks/pretrain_throughput.py).
# Above this many keys the T x S score matrix gets large, and SDPA's kernels win again.
CPU_MATH_ATTENTION_MAX_LEN = 512


def attention(q, k, v, mask, is_causal: bool, dropout_p: float) -> torch.Tensor:
    """Scaled dot-product attention. q: (B, H, T, D); k, v: (B, Hkv, S, D); mask: bool, True = attend.

    Same result as ``F.scaled_dot_product_attention`` (tested), but a fully masked query row
    (a padding position) attends uniformly instead of giving NaN, as HF's eager attention does.
    """
    T, S = q.shape[-2], k.shape[-2]
    gqa = k.shape[1] != q.shape[1]
    if q.device.type != "cpu" or S > CPU_MATH_ATTENTION_MAX_LEN or T == 1:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, enable_gqa=gqa
        )
    if gqa:  # each key/value head serves n_head / n_kv_head query heads
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if is_causal:
        mask = _causal(T, S, q.device)
    return _math_attention(q, k, v, mask, dropout_p)


def _causal(T: int, S: int, device) -> torch.Tensor:
    """(T, S) bool: the T queries are the last T of the S positions."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


def _math_attention(q, k, v, mask, dropout_p: float) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


@dataclass
class KVCache:
    """Pre-allocated keys and values for every layer: (n_layer, B, n_kv_head, max_len, head_dim).

    Two ways to fill it. `length`: every row holds the same number of tokens (one generation,
    or a batch padded alike). `lengths`, a (B,) tensor: each row is a different sequence at its
    own position (the server's batched decoding, infer/engine.py); a forward pass then takes
    one new token per row, writes it at that row's position, attends to that row's tokens
    only, and advances `lengths` by one.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    lengths: torch.Tensor | None = None

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> KVCache:
        shape = (cfg.n_layer, batch, cfg.kv_heads, max_len, cfg.dim_per_head)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.dim_per_head
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, q_dim, bias=cfg.attn_qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, kv_dim, bias=cfg.attn_qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, kv_dim, bias=cfg.attn_qkv_bias)
        self.o_proj = nn.Linear(q_dim, cfg.n_embd, bias=cfg.attn_out_bias)
        self.is_global = cfg.is_global_layer(layer_idx)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = (
            self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        )  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if (
            cache is not None and cache.lengths is not None
        ):  # one token per row, each at its own place
            rows, at = torch.arange(B, device=x.device), cache.lengths
            cache.k[self.layer_idx][rows, :, at] = k[:, :, 0]
            cache.v[self.layer_idx][rows, :, at] = v[:, :, 0]
            end = int(at.max()) + 1  # the mask hides each row's keys beyond its own position
            k, v = cache.k[self.layer_idx, :, :, :end], cache.v[self.layer_idx, :, :, :end]
        elif cache is not None:
            start = cache.length
            cache.k[self.layer_idx, :, :, start : start + T] = k
            cache.v[self.layer_idx, :, :, start : start + T] = v
            k = cache.k[self.layer_idx, :, :, : start + T]
            v = cache.v[self.layer_idx, :, :, : start + T]
        # With no mask and a causal model, SDPA's is_causal lets it pick the fused kernel.
        is_causal = mask is None and self.cfg.causal and T > 1
        dropout_p = self.cfg.dropout if self.training else 0.0
        y = attention(q, k, v, mask, is_causal, dropout_p)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.mlp in ("swiglu", "geglu")
        self.act = activation(cfg.activation)
        if self.gated:
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:  # SwiGLU / GeGLU (Shazeer 2020)
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.post_norm = cfg.post_norm
        skip = layer_idx == 0 and not cfg.first_attn_norm and not cfg.post_norm
        self.input_layernorm = nn.Identity() if skip else make_norm(cfg)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache=None):
        if self.post_norm:  # BERT: normalise after each residual add
            x = self.input_layernorm(x + self.drop(self.self_attn(x, rope, mask, cache)))
            return self.post_attention_layernorm(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.self_attn(self.input_layernorm(x), rope, mask, cache))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


# --------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    """Embeddings -> blocks -> final norm. Returns hidden states (B, T, n_embd)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_embedding == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        if cfg.type_vocab_size:
            self.embed_token_types = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        if cfg.embed_norm:
            self.embed_norm = make_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.activation_checkpointing = False  # set_activation_checkpointing()
        if cfg.final_norm:
            self.norm = make_norm(cfg)
        if cfg.pos_embedding == "rope":
            self.register_buffer(
                "inv_freq", rope_frequencies(cfg, cfg.rope_theta), persistent=False
            )
            local_theta = cfg.rope_theta_local or cfg.rope_theta
            self.register_buffer(
                "inv_freq_local", rope_frequencies(cfg, local_theta), persistent=False
            )

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """Recompute RoPE frequencies after the config's theta or scaling changed (or after
        building on the meta device)."""
        if self.cfg.pos_embedding == "rope":
            dev = device or self.inv_freq.device
            self.inv_freq = rope_frequencies(self.cfg, self.cfg.rope_theta).to(dev)
            local = self.cfg.rope_theta_local or self.cfg.rope_theta
            self.inv_freq_local = rope_frequencies(self.cfg, local).to(dev)

    def _row_masks(self, lengths: torch.Tensor):
        """The masks of a per-row decode step: row b's one query sits at position lengths[b]
        and sees keys 0..lengths[b] (within the local window on local layers)."""
        k_pos = torch.arange(int(lengths.max()) + 1, device=lengths.device)[None, :]
        q_pos = lengths[:, None]
        base = k_pos <= q_pos  # (B, S)
        local = None
        if self.cfg.global_every and self.cfg.local_window:
            local = (base & (q_pos - k_pos <= self.cfg.local_window // 2))[:, None, None]
        return base[:, None, None], local

    def _masks(self, T: int, start: int, total: int, attention_mask, device):
        """Boolean SDPA masks (True = attend), one for global and one for local layers.

        Returns (None, None) when the plain causal/full pattern applies, so SDPA can use
        its fused kernels.
        """
        cfg = self.cfg
        needs_local = bool(cfg.global_every and cfg.local_window)
        needs_causal_offset = cfg.causal and start > 0 and T > 1
        if attention_mask is None and not needs_local and not needs_causal_offset:
            return None, None
        q_pos = torch.arange(start, start + T, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        base = torch.ones(T, total, dtype=torch.bool, device=device)
        if cfg.causal:
            base = k_pos <= q_pos
        base = base[None, None]  # (1, 1, T, S)
        if attention_mask is not None:  # (B, S) with 1 for real tokens
            base = base & attention_mask[:, None, None, :total].bool()
        local = None
        if needs_local:
            half = cfg.local_window // 2
            local = base & ((k_pos - q_pos).abs() <= half)[None, None]
        return base, local

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T = input_ids.shape
        per_row = cache is not None and cache.lengths is not None
        if per_row:
            if T != 1 or attention_mask is not None:
                raise ValueError("a per-row cache (lengths) decodes one token per row, unmasked")
            positions = cache.lengths[:, None]  # (B, 1): each row at its own place
            total = int(cache.lengths.max()) + 1
        else:
            start = cache.length if cache is not None else 0
            total = start + T
            positions = torch.arange(start, total, device=input_ids.device)
        if total > self.cfg.max_seq_len and self.cfg.pos_embedding == "learned":
            raise ValueError(
                f"sequence of {total} tokens exceeds the model's max_seq_len {self.cfg.max_seq_len}"
            )
        x = self.embed_tokens(input_ids)
        if self.cfg.pos_embedding == "learned":
            pos = self.embed_positions(positions)
            x = x + (pos if per_row else pos[None])
        if self.cfg.type_vocab_size:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.embed_token_types(token_type_ids)
        if self.cfg.embed_norm:
            x = self.embed_norm(x)
        x = self.drop(x)

        rope_global = rope_local = None
        if self.cfg.pos_embedding == "rope":
            # per row: (B, 1, D) -> (B, 1, 1, D), to broadcast over the heads
            shape = (B, 1, 1, -1) if per_row else (T, -1)
            cos, sin = rope_cos_sin(self.inv_freq, positions)
            rope_global = (cos.to(x.dtype).view(shape), sin.to(x.dtype).view(shape))
            rope_local = rope_global
            if self.cfg.rope_theta_local and self.cfg.global_every:
                cos_l, sin_l = rope_cos_sin(self.inv_freq_local, positions)
                rope_local = (cos_l.to(x.dtype).view(shape), sin_l.to(x.dtype).view(shape))
        if attention_mask is not None and cache is not None and attention_mask.shape[1] < total:
            raise ValueError("attention_mask must cover cached and new tokens")
        if per_row:
            mask_global, mask_local = self._row_masks(cache.lengths)
        else:
            mask_global, mask_local = self._masks(T, start, total, attention_mask, input_ids.device)

        for i, layer in enumerate(self.layers):
            is_global = self.cfg.is_global_layer(i)
            rope = rope_global if is_global else rope_local
            mask = mask_global if is_global or mask_local is None else mask_local
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # Keep each block's input only; backward runs the block again (about a third
                # more compute) instead of holding its insides: memory for time.
                x = checkpoint(layer, x, rope, mask, cache, use_reentrant=False)
            else:
                x = layer(x, rope, mask, cache)
        if per_row:
            cache.lengths = cache.lengths + 1
        elif cache is not None:
            cache.length = total
        if self.cfg.final_norm:
            x = self.norm(x)
        return x


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Recompute each block in backward instead of keeping its activations, in every
    Transformer inside ``model`` (a head or LoRA around it included). Returns how many."""
    found = [m for m in model.modules() if isinstance(m, Transformer)]
    for m in found:
        m.activation_checkpointing = enabled
    return len(found)


class LanguageModel(nn.Module):
    """Transformer + LM head. State-dict keys match HF's *ForCausalLM (``model.*``, ``lm_head``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Transformer(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab)."""
        return self.lm_head(self.model(input_ids, attention_mask=attention_mask, cache=cache))

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over targets != -100 (computed in fp32)."""
        logits = self(input_ids)
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
        )

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache.empty(self.cfg, batch, max_len or self.cfg.max_seq_len, p.device, p.dtype)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameters (tied weights counted once): total, trainable, embedding, non-embedding."""
    seen, total, trainable, embed = set(), 0, 0, 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        if "embed_" in name or name.startswith("lm_head"):  # input and output embeddings (Kaplan)
            embed += p.numel()
    return {
        "total": total,
        "trainable": trainable,
        "embedding": embed,
        "non_embedding": total - embed,
    }
