"""Writing an lmforge model as a transformers checkpoint directory (config.json,
model.safetensors, the tokenizer, generation_config.json), and its LoRA adapter as a PEFT
adapter for that model (fused layers' adapters fused exactly)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.model.build import build_model
from lmforge.model.config import ModelConfig
from lmforge.model.hf.configs import config_to_hf
from lmforge.model.hf.families import export_family
from lmforge.model.hf.names import (
    backbone_prefix,
    module_names,
    name_map,
    rename_with,
    transposed,
)
from lmforge.model.lora import PEFT_PREFIX
from lmforge.utils import atomic_write_text, write_json


def _check_head(model: nn.Module, kind: str, family: str) -> None:
    """A classifier exports only with the head its transformers class has."""
    if kind != "sequence_classifier":
        return
    head = model.head_cfg
    if family in ("llama", "qwen2", "gpt2"):
        if head.head != "linear" or head.pooling != "last":
            raise CheckpointError(
                "transformers' decoder classifiers read the last token with one Linear; this model "
                f"uses pooling '{head.pooling}' and head '{head.head}'"
            )
    if family in ("modernbert", "bert"):
        need = ("pooler_tanh", ("cls",)) if family == "bert" else ("dense_norm", ("cls", "mean"))
        if head.head != need[0] or head.pooling not in need[1]:
            raise CheckpointError(
                f"transformers' {family} classifier has head '{need[0]}' with pooling "
                f"{' or '.join(need[1])}; this model uses head '{head.head}' with "
                f"pooling '{head.pooling}' (e.g. a sentence-transformers backbone's "
                f"default). Train with head.head={need[0]} head.pooling={need[1][0]} to export "
                "it to transformers, or serve it with lmforge"
            )


def write_hf(
    model: nn.Module,
    kind: str,
    meta: dict,
    tokenizer,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
) -> dict:
    """Write a transformers checkpoint into out_dir (config.json, model.safetensors, tokenizer).
    The caller stages the directory. Returns the config written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg
    family = export_family(cfg)
    _check_head(model, kind, family)
    state = model.state_dict()
    out_state = {}
    for hf_name, ours in name_map(model, family, backbone_prefix(family, kind)).items():
        t = torch.cat([state[n] for n in ours], dim=0)
        if transposed(family, hf_name, t.ndim):
            t = t.t()
        out_state[hf_name] = t.to(dtype or t.dtype).contiguous()
    if kind == "sequence_classifier" and family in ("modernbert", "bert"):
        # transformers' encoder classifiers always have a bias; a bias-free head exports zeros
        w = out_state["classifier.weight"]
        out_state.setdefault("classifier.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    torch_dtype = str(next(iter(out_state.values())).dtype).replace("torch.", "")
    hf_config = config_to_hf(kind, cfg, meta, torch_dtype)
    save_file(out_state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_text(out_dir / "config.json", json.dumps(hf_config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out_dir)
    if kind == "causal_lm":
        ids = dict(
            bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id,
        )
        write_json(
            out_dir / "generation_config.json", {k: v for k, v in ids.items() if v is not None}
        )
    return hf_config


def adapter_to_hf(tensors: dict, config: dict, cfg: ModelConfig, kind: str, meta: dict):
    """A PEFT adapter saved in lmforge's module names -> the same adapter in the transformers
    model's names, for families that fuse layers lmforge keeps apart (ModernBERT's Wqkv and Wi,
    GPT-2's c_attn). Exact: adapters on q, k, v of rank r with scaling s equal one adapter on the
    fused matrix of rank 3r, A = [A_q; A_k; A_v] and B = blockdiag(B_q, B_k, B_v), with the same
    scaling (alpha raised to match the rank in `alpha_pattern`). Returns (tensors, config)."""
    with torch.device("meta"):
        clean = build_model(kind, cfg, meta)
    family = export_family(cfg)
    mapping = name_map(clean, family, backbone_prefix(family, kind))
    rename = rename_with(module_names(cfg, kind, meta))
    r, alpha, rs = config["r"], config["lora_alpha"], config.get("use_rslora", False)
    lora = {}  # our module path -> (A, B)
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        name = key[len(PEFT_PREFIX) :]
        for part in (".lora_A.weight", ".lora_B.weight"):
            if name.endswith(part):
                lora.setdefault(name[: -len(part)], {})[part[6]] = t
                break
        else:  # a saved module (the head): rename only
            out[PEFT_PREFIX + rename(name)] = t
    targets, ranks, alphas = [], {}, {}
    for hf_name, ours in mapping.items():
        mods = [o.removesuffix(".weight") for o in ours if o.endswith(".weight")]
        if not any(m in lora for m in mods):
            continue
        hf_mod = hf_name.removesuffix(".weight")
        some = next(lora[m] for m in mods if m in lora)
        n_in = some["A"].shape[1]
        shapes = {o.removesuffix(".weight"): clean.state_dict()[o].shape[0] for o in ours}
        a = [lora[m]["A"] if m in lora else torch.zeros(r, n_in) for m in mods]
        b = [lora[m]["B"] if m in lora else torch.zeros(shapes[m], r) for m in mods]
        out[f"{PEFT_PREFIX}{hf_mod}.lora_A.weight"] = torch.cat(a, 0).contiguous()
        out[f"{PEFT_PREFIX}{hf_mod}.lora_B.weight"] = torch.block_diag(*b).contiguous()
        targets.append(hf_mod)
        if len(mods) > 1:  # rank k*r; keep the scaling alpha/r (or alpha/sqrt(r) for rsLoRA)
            k = len(mods)
            ranks[hf_mod] = k * r
            alphas[hf_mod] = alpha * (math.sqrt(k) if rs else k)
    new = {
        **config,
        "target_modules": sorted(targets),
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "modules_to_save": [rename(m) for m in config.get("modules_to_save") or []],
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
    }
    return out, new
