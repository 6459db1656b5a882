"""Artifact directories: what every stage writes and every later stage (and ``lmforge.load``) reads.

<dir>/model.safetensors   weights (never pickles)
<dir>/model.json          {"kind": "causal_lm", "model": ModelConfig}
<dir>/tokenizer.json      the tokenizer
<dir>/config.yaml         the resolved stage config that produced it
<dir>/summary.json        the stage's headline numbers
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.data.chat import check_chat_tokenizer
from lmforge.errors import CheckpointError
from lmforge.model import hf
from lmforge.model.build import build_model
from lmforge.model.config import ModelConfig
from lmforge.model.lora import LoraConfig, apply_lora, unwrap_lora
from lmforge.model.quant import quantize_model
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import load_weights, save_weights
from lmforge.utils import read_json, write_json


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    config: ModelConfig
    kind: str
    path: Path
    meta: dict = field(default_factory=dict)  # model.json (or what an HF import derived)


def save_model_artifact(
    out_dir: str | os.PathLike,
    model: nn.Module,
    kind: str = "causal_lm",
    extra_meta: dict | None = None,
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(
        model, out_dir / "model.safetensors", metadata={"format": "pt", "lmforge_kind": kind}
    )
    meta = {"kind": kind, "model": model.cfg.model_dump(mode="json")}
    if hasattr(model, "artifact_meta"):
        meta.update(model.artifact_meta())
    meta.update(extra_meta or {})
    write_json(out_dir / "model.json", meta)


def read_model_meta(path: str | os.PathLike) -> dict:
    return read_json(Path(path) / "model.json")


def read_model_config(path: str | os.PathLike) -> tuple[str, ModelConfig]:
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.is_file():
        hint = ""
        if (path / "config.json").is_file():
            hint = " It looks like a Hugging Face checkpoint (config.json); convert it with `lmforge convert --from-hf`."
        raise CheckpointError(
            f"{path} is not an lmforge artifact: {meta_path.name} is missing.{hint}"
        )
    try:
        meta = read_json(meta_path)
        return meta.get("kind", "causal_lm"), ModelConfig.model_validate(meta["model"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"{meta_path} is damaged or from an incompatible lmforge version: {e}"
        ) from None


def load_causal_lm(
    path: str | os.PathLike, device: str | torch.device = "cpu", purpose: str = "generation"
) -> Loaded:
    """`load` for what needs a decoder and its tokenizer (generation, chat, post-training,
    mid-training, a distillation teacher), or an error naming what the path holds instead."""
    loaded = load(path, device=device)
    if loaded.kind != "causal_lm":
        raise CheckpointError(
            f"{path} is a {loaded.kind} artifact; {purpose} needs a causal LM (the output of "
            "`lmforge pretrain`, `midtrain`, `sft` or `dpo`, or a Hugging Face causal LM)"
        )
    if loaded.tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer.json; {purpose} needs one beside the model")
    return loaded


def load_chat_decoder(init: str, method: str, lora: LoraConfig):
    """A causal LM to train, with LoRA adapters injected when asked."""
    base = load_causal_lm(init, purpose="post-training")
    check_chat_tokenizer(base.tokenizer)
    model = base.model.float().train()
    if method == "lora":
        apply_lora(model, lora)
    return model, base.tokenizer


def save_causal_lm(out: Path, model, tokenizer, extra_meta: dict | None = None) -> None:
    """A plain causal LM artifact (LoRA merged): chat, serve, DPO and convert --to-hf read it."""
    model = unwrap_lora(model).float().eval()
    save_model_artifact(out, model, kind="causal_lm", extra_meta=extra_meta)
    tokenizer.save(out)


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Loaded:
    """The model, tokenizer and config of an lmforge artifact directory, a Hugging Face
    checkpoint directory, or ``hf:<repo id>`` (the hub, or its cache when offline)."""
    path = hf.resolve(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a directory; give the output directory of an lmforge stage or a "
            "Hugging Face checkpoint directory"
        )
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()
    tokenizer = Tokenizer.load(path) if has_tokenizer else None
    if hf.is_hf_dir(path):
        model, kind, cfg, meta = hf.load_hf(path, dtype=dtype, device=device)
        return Loaded(model=model, tokenizer=tokenizer, config=cfg, kind=kind, path=path, meta=meta)
    kind, cfg = read_model_config(path)
    meta = read_model_meta(path)
    if (path / "model.onnx").is_file() and not (path / "model.safetensors").is_file():
        # a classifier copy for ONNX Runtime (`quantize --method onnx`): eval, predict and
        # serve call it as they call ours. Imported here: onnxruntime is the deploy extra.
        from lmforge.model.onnx_export import OnnxClassifier

        model = OnnxClassifier.from_dir(path)
        return Loaded(model=model, tokenizer=tokenizer, config=cfg, kind=kind, path=path, meta=meta)
    model = build_model(kind, cfg, meta)
    if "quantization" in meta:  # quantized layers (or a cast) first, then their weights
        q = meta["quantization"]
        quantize_model(model, q["method"], q.get("group_size", 128), empty=True)
    load_weights(model, path / "model.safetensors")
    model.to(device=device, dtype=dtype)
    model.eval()
    return Loaded(model=model, tokenizer=tokenizer, config=cfg, kind=kind, path=path, meta=meta)
