"""Heads on the one Transformer: masked-LM, sequence classification (probe / full / LoRA),
and a scalar reward. Module names follow Hugging Face's so checkpoints map by table:

    SequenceClassifier: model.*  [head.dense, head.norm]  classifier      (ModernBERT, BERT, Qwen2 "score")
    MaskedLM:           model.*  head.dense, head.norm    decoder          (ModernBertForMaskedLM)
    Encoder:            model.*  [head.dense]                              (ModernBertModel, BertModel)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import Section
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer, activation


class HeadConfig(Section):
    num_labels: int = 2
    # "last": the rightmost non-pad token (decoders; transformers' *ForSequenceClassification);
    # "cls": the first token; "mean": the mean over non-pad tokens, CLS/SEP included (ModernBERT).
    pooling: Literal["last", "cls", "mean"] = "last"
    # "linear": one Linear (Qwen2's `score`, bias-free); "dense_norm": ModernBERT's
    # LayerNorm(act(Linear)) then Linear; "pooler_tanh": BERT's tanh(Linear) pooler then Linear.
    head: Literal["linear", "dense_norm", "pooler_tanh"] = "linear"
    bias: bool = False  # bias of the final Linear
    dense_bias: bool = False  # bias of the dense layer in dense_norm / pooler_tanh
    activation: Literal["silu", "gelu", "gelu_tanh"] = "gelu"
    dropout: float = 0.0
    label_names: list[str] = []


def last_non_pad_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """transformers' rule for *ForSequenceClassification: the rightmost token that is not the pad
    token, so left and right padding both work; an all-pad row gives 0; attention_mask is not used.
    """
    if pad_token_id is None:
        if input_ids.shape[0] > 1:
            raise ValueError(
                "no pad token is defined, so the last token of each row cannot be found in a batch; "
                "set model.pad_token_id (for Qwen2.5 recipes, the tokenizer's pad token)"
            )
        return torch.full((1,), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
    non_pad = (input_ids != pad_token_id).int()
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * non_pad).argmax(-1)


def pool(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pooling: str,
    pad_token_id: int | None,
) -> torch.Tensor:
    """(B, T, H) -> (B, H)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = (
            attention_mask
            if attention_mask is not None
            else (input_ids != pad_token_id)
            if pad_token_id is not None
            else torch.ones_like(input_ids)
        )
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    idx = last_non_pad_index(input_ids, pad_token_id)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class PredictionHead(nn.Module):
    """ModernBERT's head: LayerNorm(act(Linear(h)))."""

    def __init__(self, cfg: ModelConfig, bias: bool, act: str):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.act = activation(act)
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.norm_bias)

    def forward(self, x):
        return self.norm(self.act(self.dense(x)))


class Pooler(nn.Module):
    """BERT's pooler: tanh(Linear(h_cls))."""

    def __init__(self, cfg: ModelConfig, bias: bool = True):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)

    def forward(self, x):
        return torch.tanh(self.dense(x))


def _init(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SequenceClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, head: HeadConfig):
        super().__init__()
        self.cfg, self.head_cfg = cfg, head
        self.model = Transformer(cfg)
        if head.head == "dense_norm":
            self.head = PredictionHead(cfg, head.dense_bias, head.activation)
        elif head.head == "pooler_tanh":
            self.head = Pooler(cfg, head.dense_bias)
        self.drop = nn.Dropout(head.dropout)
        self.classifier = nn.Linear(cfg.n_embd, head.num_labels, bias=head.bias)
        _init(self, cfg.init_std)  # a fresh model; loading a checkpoint overwrites the backbone

    def artifact_meta(self) -> dict:
        return {"head": self.head_cfg.model_dump(mode="json")}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, num_labels)."""
        hidden = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        pooled = pool(
            hidden, input_ids, attention_mask, self.head_cfg.pooling, self.cfg.pad_token_id
        )
        if self.head_cfg.head != "linear":
            pooled = self.head(pooled)
        return self.classifier(self.drop(pooled))


class MaskedLM(nn.Module):
    """Encoder + ModernBERT-style MLM head; the decoder shares the token embedding."""

    def __init__(
        self,
        cfg: ModelConfig,
        head_activation: str = "gelu",
        head_bias: bool = False,
        decoder_bias: bool = True,
    ):
        super().__init__()
        self.cfg = cfg
        self.head_options = dict(
            head_activation=head_activation, head_bias=head_bias, decoder_bias=decoder_bias
        )
        self.model = Transformer(cfg)
        self.head = PredictionHead(cfg, bias=head_bias, act=head_activation)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=decoder_bias)
        _init(self, cfg.init_std)
        for m in self.model.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.decoder.weight = self.model.embed_tokens.weight

    def artifact_meta(self) -> dict:
        return {"mlm_head": self.head_options}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.decoder(
            self.head(
                self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            )
        )

    def loss(self, input_ids, labels, attention_mask=None) -> torch.Tensor:
        logits = self(input_ids, attention_mask)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


class Encoder(nn.Module):
    """A bare backbone (transformers' BertModel / ModernBertModel): hidden states out. BERT's
    pooler is kept as ``head.dense`` so a classifier built from this encoder starts from it."""

    def __init__(self, cfg: ModelConfig, pooler: bool = False):
        super().__init__()
        self.cfg = cfg
        self.model = Transformer(cfg)
        if pooler:
            self.head = Pooler(cfg)
        _init(self, cfg.init_std)

    def artifact_meta(self) -> dict:
        return {"pooler": hasattr(self, "head")}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
