"""config.json <-> ModelConfig: a transformers config becomes an lmforge kind, a ModelConfig
and the artifact metadata its heads need (each family's module maps the fields), and back."""

from __future__ import annotations

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.hf.common import first
from lmforge.model.hf.families import ARCHITECTURES, FAMILIES, MODEL_TYPES, export_family

# the transformers class an export writes: the family's class name + the kind's suffix
_CLASS_NAMES = {
    "llama": "Llama",
    "qwen2": "Qwen2",
    "gpt2": "GPT2",
    "modernbert": "ModernBert",
    "bert": "Bert",
}
_SUFFIXES = {
    "causal_lm": "ForCausalLM",
    "masked_lm": "ForMaskedLM",
    "sequence_classifier": "ForSequenceClassification",
    "encoder": "Model",
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
    mapping = FAMILIES[family]
    ids = dict(
        pad_token_id=first(hf.get("pad_token_id")),
        bos_token_id=first(hf.get("bos_token_id")),
        eos_token_id=first(hf.get("eos_token_id")),
    )
    fields = {**ids, **mapping.config_from_hf(hf, where)}  # a family may name its ids otherwise
    cfg = ModelConfig(**fields, family=family, name=hf.get("_name_or_path", "") or arch)
    meta: dict = {"hf_architecture": arch}
    if kind == "encoder":
        meta["pooler"] = family == "bert"
    # classifier_defaults: what a classifier built on this backbone should use
    meta.update(mapping.heads_from_hf(hf, where))
    if kind == "sequence_classifier":
        id2label = hf.get("id2label") or {}
        n = hf.get("num_labels") or len(id2label) or 2
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
        meta["head"] = {**meta["classifier_defaults"], "num_labels": n, "label_names": labels}
    return kind, cfg, meta


def config_to_hf(kind: str, cfg: ModelConfig, meta: dict, torch_dtype: str) -> dict:
    """The transformers config.json for an lmforge model (the inverse of config_from_hf)."""
    family = export_family(cfg)
    head = meta.get("head", {})
    base = dict(
        vocab_size=cfg.vocab_size,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
        torch_dtype=torch_dtype,
    )
    out = FAMILIES[family].config_to_hf(cfg, meta, family)
    suffix = _SUFFIXES[kind]
    if family == "gpt2" and kind == "causal_lm":
        suffix = "LMHeadModel"
    arch = _CLASS_NAMES[family] + suffix
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
