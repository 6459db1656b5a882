"""Checkpoints across the border with Hugging Face, both ways.

    lmforge convert --from-hf /path/to/Qwen2.5-0.5B --out runs/qwen     # or hf:Qwen/Qwen2.5-0.5B
    lmforge convert --to-hf runs/demo/pretrain --out export/pretrain    # AutoModelForCausalLM loads it
    lmforge convert --to-gguf runs/demo/sft --out sft.gguf --gguf-type q8_0   # llama.cpp loads it

--to-hf on a LoRA classification run also writes the adapter in PEFT's format and the base
model it was trained on, so both ways of loading it work:

    export/cls/            the merged classifier   (AutoModelForSequenceClassification)
    export/cls/base/       the backbone            (the base PEFT loads the adapter onto)
    export/cls/adapter/    adapter_config.json + adapter_model.safetensors
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.artifact import Loaded, load, save_model_artifact
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model import gguf_export, hf
from lmforge.model.transformer import count_parameters
from lmforge.stages.summaries import ClassifySummary, ConvertSummary
from lmforge.utils import read_json, staging_dir, write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def from_hf(src: str, out: str | os.PathLike, dtype: str | None = None) -> dict:
    """A transformers checkpoint (directory or hf:<repo>) -> an lmforge artifact directory."""
    loaded = load(src, dtype=_dtype(dtype))
    if not hf.is_hf_dir(loaded.path):
        raise CheckpointError(
            f"{src} is already an lmforge artifact (it has model.json); nothing to convert"
        )
    with staging_dir(out) as tmp:
        save_model_artifact(tmp, loaded.model, kind=loaded.kind)
        meta = read_json(tmp / "model.json")
        meta.update({k: v for k, v in loaded.meta.items() if k not in meta})
        write_json(tmp / "model.json", meta)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save(tmp)
        summary = ConvertSummary(
            source=str(src),
            architecture=loaded.meta.get("hf_architecture"),
            kind=loaded.kind,
            params=count_parameters(loaded.model)["total"],
        ).dump()
        write_json(tmp / "summary.json", summary)
    return summary


def to_hf(src: str | os.PathLike, out: str | os.PathLike, dtype: str | None = None) -> dict:
    """An lmforge artifact (any kind) -> a transformers checkpoint directory (+ PEFT adapter)."""
    loaded = load(src)
    with staging_dir(out) as tmp:
        config = hf.write_hf(
            loaded.model, loaded.kind, loaded.meta, loaded.tokenizer, tmp, _dtype(dtype)
        )
        result = {"out": str(out), "architecture": config["architectures"][0]}
        adapter = Path(src) / "adapter"
        if (adapter / "adapter_config.json").is_file():
            result.update(_export_adapter(loaded, adapter, tmp, Path(out), _dtype(dtype)))
    return result


def to_gguf(src: str | os.PathLike, out: str | os.PathLike, gguf_type: str = "f16") -> dict:
    """A decoder (an lmforge artifact or a transformers checkpoint) -> one GGUF file with its
    tokenizer and chat template, for llama.cpp and the runtimes built on it."""
    loaded = load(src)
    return gguf_export.write_gguf(
        loaded.model,
        loaded.kind,
        loaded.meta,
        loaded.tokenizer,
        out,
        gguf_type,
        name=loaded.config.name or Path(src).name,
    )


def _export_adapter(
    loaded: Loaded, adapter: Path, tmp: Path, final: Path, dtype: torch.dtype | None
) -> dict:
    """Copy the run's PEFT adapter and write the base it applies to (the run's `init`)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    init = config.get("base_model_name_or_path")
    tensors = None
    summary = loaded.path / "summary.json"
    if summary.is_file() and ClassifySummary.read(loaded.path).adapter_hf_names is False:
        # saved in lmforge's names: fuse into the family's layers (ModernBERT's Wqkv, ...)
        tensors, config = hf.adapter_to_hf(
            load_file(str(adapter / "adapter_model.safetensors")),
            config,
            loaded.config,
            loaded.kind,
            loaded.meta,
        )
    base = load(init)
    # PEFT finds the last token through the base config's pad id, as the classifier did
    base.model.cfg = base.model.cfg.model_copy(update={"pad_token_id": loaded.config.pad_token_id})
    hf.write_hf(base.model, base.kind, base.meta, base.tokenizer, tmp / "base", dtype)
    base_ref = str((final / "base").resolve())
    shutil.copytree(adapter, tmp / "adapter")
    if tensors is not None:
        save_file(tensors, str(tmp / "adapter" / "adapter_model.safetensors"), {"format": "pt"})
    config["base_model_name_or_path"] = base_ref
    (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"adapter": str(final / "adapter"), "base": base_ref}
