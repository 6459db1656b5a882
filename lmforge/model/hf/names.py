"""Parameter and module names: each family's name table maps every lmforge parameter to the
transformers tensor holding it (and its slot, when several are fused along dim 0). Import and
export both read the tables, so they cannot drift apart."""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.model.build import build_model
from lmforge.model.config import ModelConfig
from lmforge.model.hf.families import FAMILIES, export_family


def backbone_prefix(family: str, kind: str) -> str:
    """The backbone's prefix inside the transformers class (a bare *Model has none)."""
    return FAMILIES[family].PREFIX.get(kind, "")


def name_map(model: nn.Module, family: str, prefix: str) -> dict[str, list[str]]:
    """HF tensor name -> the lmforge parameter names stored in it, in slot order."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    table = FAMILIES[family].NAMES
    for name in _unique_state_names(model):
        for pattern, target, slot in table:
            m = re.match(pattern, name)
            if m:
                hf_name = m.expand(target.replace("{p}", prefix)) + name[m.end() :]
                groups[hf_name].append((slot, name))
                break
        else:
            raise CheckpointError(f"no {family} name for lmforge parameter '{name}'")
    return {hf: [n for _, n in sorted(v)] for hf, v in groups.items()}


def _unique_state_names(model: nn.Module) -> list[str]:
    """State-dict names with tied tensors listed once (the first name, as safetensors keeps)."""
    seen, names = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        names.append(name)
    return names


def transposed(family: str, hf_name: str, tensor_ndim: int) -> bool:
    """Whether transformers stores this weight (in, out): GPT-2's Conv1D."""
    pattern = FAMILIES[family].TRANSPOSED
    return pattern is not None and tensor_ndim == 2 and pattern.search(hf_name) is not None


def module_names(cfg: ModelConfig, kind: str, meta: dict) -> dict[str, str]:
    """lmforge module path -> transformers module path, for modules stored one to one (a module
    fused into a bigger HF tensor, like ModernBERT's q/k/v in Wqkv, is absent). Used to write
    PEFT adapters whose keys and target modules fit the exported model."""
    with torch.device("meta"):
        model = build_model(kind, cfg, meta)
    family = export_family(cfg)
    out: dict[str, str] = {}
    for hf, ours in name_map(model, family, backbone_prefix(family, kind)).items():
        if len(ours) != 1:
            continue
        o, h = ours[0].split("."), hf.split(".")
        while o and h and o[-1] == h[-1]:  # strip the shared leaf, then record each parent
            o, h = o[:-1], h[:-1]
            if o and h:
                out.setdefault(".".join(o), ".".join(h))
    return out


def rename_with(names: dict[str, str]):
    """A function renaming a module path or parameter name by its longest mapped prefix."""

    def rename(key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if head in names:
                return ".".join([names[head], *parts[i:]])
        return key

    return rename
