"""Building a model from a config: the one place that maps an artifact kind, a ModelConfig and
its head settings (an artifact's model.json, or what a Hugging Face import derived) to an
nn.Module. Weights are loaded separately."""

from __future__ import annotations

from torch import nn

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.heads import Encoder, HeadConfig, MaskedLM, SequenceClassifier
from lmforge.model.transformer import LanguageModel

KINDS = ("causal_lm", "masked_lm", "sequence_classifier", "encoder")


def build_model(kind: str, cfg: ModelConfig, meta: dict | None = None) -> nn.Module:
    """A fresh model of an artifact kind (weights are loaded separately)."""
    meta = meta or {}
    if kind == "causal_lm":
        return LanguageModel(cfg)
    if kind == "masked_lm":
        return MaskedLM(cfg, **meta.get("mlm_head", {}))
    if kind == "sequence_classifier":
        return SequenceClassifier(cfg, HeadConfig.model_validate(meta.get("head", {})))
    if kind == "encoder":
        return Encoder(cfg, pooler=meta.get("pooler", False))
    raise CheckpointError(f"unknown model kind '{kind}' (known: {', '.join(KINDS)})")
