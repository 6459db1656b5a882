"""Reading a transformers checkpoint directory into an lmforge model. Tensors are read one at a
time from memory-mapped safetensors into a model built on the meta device, in the requested
dtype: loading needs the model's size in memory, not twice it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.model.build import build_model
from lmforge.model.config import ModelConfig
from lmforge.model.hf.configs import config_from_hf
from lmforge.model.hf.names import backbone_prefix, name_map, transposed
from lmforge.utils import read_json

# Buffers some checkpoints carry that lmforge computes instead.
_IGNORED = re.compile(r".*(position_ids|attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


class _Tensors:
    """Memory-mapped safetensors files (one or sharded); a tensor is read when asked for."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(read_json(index)["weight_map"].values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            found = [p.name for p in folder.glob("*.bin")]
            why = f"{folder} has no model.safetensors"
            if found:
                why += (
                    f" (only {found[0]}: a pickle, which lmforge does not load; re-save with "
                    "save_pretrained(..., safe_serialization=True))"
                )
            raise CheckpointError(why)
        self.where: dict[str, object] = {}
        self.handles = []
        for f in files:
            h = safe_open(str(folder / f), framework="pt")
            self.handles.append(h)
            for k in h.keys():
                self.where[_legacy(k)] = (h, k)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        h, k = self.where[name]
        return h.get_tensor(k)

    def keys(self):
        return self.where.keys()


def _legacy(name: str) -> str:
    """Old BERT checkpoints call LayerNorm parameters gamma/beta."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


def load_hf(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
):
    """A transformers checkpoint directory -> (model, kind, ModelConfig, meta), weights in dtype."""
    folder = Path(path)
    where = str(folder / "config.json")
    try:
        hf = read_json(folder / "config.json")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot read it ({e})") from None
    kind, cfg, meta = config_from_hf(hf, where)
    pooling = sentence_transformers_pooling(folder)
    if pooling and kind == "encoder":
        # A sentence-transformers model was trained to be read through its pooling module, not
        # BERT's [CLS] pooler (left as pretrained): a classifier on it pools the same way and
        # adds one Linear, as SetFit does. On the demo task 0.20 -> 0.56 macro F1 (docs/LOG.md).
        meta["classifier_defaults"] = dict(head="linear", pooling=pooling, bias=True)
    family = cfg.family
    tensors = _Tensors(folder)
    if family == "bert" and kind == "encoder":  # BertModel(add_pooling_layer=False) has none
        meta["pooler"] = any(k.endswith("pooler.dense.weight") for k in tensors.keys())
    with torch.device("meta"):
        model = build_model(kind, cfg, meta)
    mapping = name_map(model, family, _find_prefix(model, family, kind, tensors))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    dtype = dtype or torch.float32
    for hf_name, ours in mapping.items():
        if hf_name not in tensors:
            raise CheckpointError(
                f"{folder}: tensor '{hf_name}' is missing (needed for {ours}); the checkpoint does "
                "not match its config.json"
            )
        t = tensors.get(hf_name)
        if transposed(family, hf_name, t.ndim):
            t = t.t()
        sizes = [shapes[n][0] for n in ours]
        want = (sum(sizes), *shapes[ours[0]][1:])
        if tuple(t.shape) != want:
            raise CheckpointError(
                f"{folder}: '{hf_name}' has shape {tuple(t.shape)}, but config.json implies {want}"
            )
        for n, part in zip(ours, t.split(sizes, dim=0)):
            # parts of a fused tensor get storage of their own (safetensors refuses shared views)
            state[n] = part.to(dtype).clone() if len(ours) > 1 else part.to(dtype).contiguous()
    tied_head = ("lm_head.weight", "decoder.weight")
    unknown = [
        k
        for k in tensors.keys()
        if k not in mapping
        and not _IGNORED.match(k)
        and not (cfg.tie_embeddings and k.endswith(tied_head))
    ]
    if unknown:
        raise CheckpointError(
            f"{folder}: {len(unknown)} tensors lmforge does not know, e.g. {unknown[:3]}; this "
            f"{family} checkpoint has parts the mapping does not cover"
        )
    model.load_state_dict(state, strict=False, assign=True)
    _retie_and_materialise(model, cfg)
    return model.to(device).eval(), kind, cfg, meta


def sentence_transformers_pooling(folder: Path) -> str | None:
    """ "mean" or "cls" when ``folder`` is a sentence-transformers model whose Pooling module
    (named in modules.json) uses that alone; None otherwise (no file, other modes)."""
    try:
        modules = read_json(folder / "modules.json")
        path = next(m["path"] for m in modules if m.get("type", "").endswith("models.Pooling"))
        cfg = read_json(folder / path / "config.json")
    except (OSError, ValueError, StopIteration, TypeError, KeyError, AttributeError):
        return None
    modes = {k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True}
    return {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(
        next(iter(modes)) if len(modes) == 1 else ""
    )


def _find_prefix(model: nn.Module, family: str, kind: str, tensors: _Tensors) -> str:
    """The backbone prefix this file uses: the class default, or whichever finds the embedding
    (a BertModel saved by sentence-transformers has none, one cut from a BertFor* has 'bert.')."""
    default = backbone_prefix(family, kind)
    if family in ("llama", "qwen2"):
        return default
    for p in (default, "", "bert.", "model.", "transformer."):
        embed = [
            hf
            for hf, ours in name_map(model, family, p).items()
            if ours == ["model.embed_tokens.weight"]
        ]
        if embed and embed[0] in tensors:
            return p
    return default


def _retie_and_materialise(model: nn.Module, cfg: ModelConfig) -> None:
    if cfg.tie_embeddings:
        if hasattr(model, "lm_head"):
            model.lm_head.weight = model.model.embed_tokens.weight
        if hasattr(model, "decoder"):
            model.decoder.weight = model.model.embed_tokens.weight
    model.model.reset_rope(device="cpu")
    left = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left:
        raise CheckpointError(f"these tensors were not found in the checkpoint: {left[:5]}")
