"""LoRA (Hu et al. 2021): low-rank adapters on frozen linear layers, in PEFT's file format.

    y = W0 x + (alpha / r) * B(A(dropout(x)))        # rsLoRA: alpha / sqrt(r)

A is kaiming-uniform (a = sqrt(5)) and B is zero, so a fresh adapter changes nothing. The
module layout mirrors PEFT's (``q_proj.base_layer``, ``q_proj.lora_A.<name>``), so adapter
files are a key rename away from ``adapter_model.safetensors``: the adapter name is dropped and
``base_model.model.`` is prefixed. Several adapters can live on one base and be switched.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import Section
from lmforge.errors import CheckpointError, ConfigError
from lmforge.utils import atomic_write_text

PEFT_PREFIX = "base_model.model."


class LoraConfig(Section):
    """A recipe's `lora:` section (classify, sft, reward, dpo)."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    # Names (or name suffixes) of the Linear layers that get adapters.
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r


# Target names from the transformers models, as recipes (and the course) write them, -> ours.
# ModernBERT's "Wo" names both the attention output and the MLP output, as in PEFT.
HF_TARGETS = {
    "Wqkv": ["q_proj", "k_proj", "v_proj"],
    "Wo": ["o_proj", "down_proj"],
    "Wi": ["gate_proj", "up_proj"],
    "query": ["q_proj"],
    "key": ["k_proj"],
    "value": ["v_proj"],
    "c_attn": ["q_proj", "k_proj", "v_proj"],
    "c_proj": ["o_proj", "down_proj"],
    "c_fc": ["up_proj"],
}


def lora_targets(names: list[str]) -> list[str]:
    out = []
    for n in names:
        out += [t for t in HF_TARGETS.get(n, [n]) if t not in out]
    return out


class LoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active: str | None = None
        self.merged: list[str] = []

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (e.g. tied heads) keeps working
        return self.base_layer.weight

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def add_adapter(
        self, name: str, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False
    ) -> None:
        if r <= 0:
            raise ConfigError(f"LoRA rank r must be positive, got {r}")
        w = self.base_layer.weight
        a = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        b = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / (math.sqrt(r) if rslora else r)
        self.active = name

    def delta_weight(self, name: str) -> torch.Tensor:
        """B @ A * scaling, in fp32 (as PEFT merges)."""
        a = self.lora_A[name].weight.float()
        b = self.lora_B[name].weight.float()
        return (b @ a) * self.scaling[name]

    def merge(self) -> None:
        if self.active is None or self.active in self.merged:
            return
        w = self.base_layer.weight
        w.data = (w.data.float() + self.delta_weight(self.active)).to(w.dtype)
        self.merged.append(self.active)

    def unmerge(self) -> None:
        w = self.base_layer.weight
        while self.merged:
            name = self.merged.pop()
            w.data = (w.data.float() - self.delta_weight(name)).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        name = self.active
        if name is None or name in self.merged:
            return y
        a, b = self.lora_A[name], self.lora_B[name]
        return (
            y + b(a(self.lora_dropout[name](x.to(a.weight.dtype)))).to(y.dtype) * self.scaling[name]
        )


def _matches(name: str, patterns: list[str]) -> bool:
    """A module matches a target if its last name component equals the pattern, or the
    pattern (a regex) matches the full dotted name - PEFT's rule for target_modules."""
    last = name.rsplit(".", 1)[-1]
    return any(last == p or re.fullmatch(p, name) for p in patterns)


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def inject_lora(
    model: nn.Module,
    targets: list[str],
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    adapter_name: str = "default",
    rslora: bool = False,
    modules_to_save: list[str] = (),
) -> list[str]:
    """Wrap every nn.Linear whose name matches ``targets``, freeze everything else except
    ``modules_to_save`` (e.g. a classification head). Returns the wrapped module names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            if _matches(name, targets):
                module.add_adapter(adapter_name, r, alpha, dropout, rslora)
                wrapped.append(name)
            continue
        if isinstance(module, nn.Linear) and _matches(name, targets) and ".base_layer" not in name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            lora = LoRALinear(module)
            lora.add_adapter(adapter_name, r, alpha, dropout, rslora)
            setattr(parent, child, lora)
            wrapped.append(name)
    if not wrapped:
        linear_names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"LoRA targets {targets} match no linear layer. Linear layers in this model: {', '.join(linear_names)}"
        )
    for name, p in model.named_parameters():
        trainable = f".lora_A.{adapter_name}." in name or f".lora_B.{adapter_name}." in name
        trainable |= any(name == m or name.startswith(m + ".") for m in modules_to_save)
        p.requires_grad_(trainable)
    return wrapped


def apply_lora(model: nn.Module, cfg: LoraConfig, modules_to_save: list[str] = ()) -> list[str]:
    """Adapters on the layers a recipe's `lora:` section names (transformers' names translated
    by lora_targets), everything else frozen but ``modules_to_save``. The one way every stage
    and the memory estimate put LoRA on a model."""
    return inject_lora(
        model,
        lora_targets(cfg.target_modules),
        r=cfg.r,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        rslora=cfg.rslora,
        modules_to_save=modules_to_save,
    )


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Switch every LoRA layer to adapter ``name`` (None: the bare base model)."""
    for _, m in lora_modules(model):
        if name is not None and name not in m.lora_A:
            raise ConfigError(f"no adapter named '{name}' (have: {', '.join(m.lora_A)})")
        m.unmerge()
        m.active = name


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model without adapters, e.g. DPO's reference (one model in memory)."""
    layers = list(lora_modules(model))
    saved = [(m, m.active) for _, m in layers]
    for _, m in layers:
        if m.merged:
            raise RuntimeError("unmerge adapters before disabling them")
        m.active = None
    try:
        yield model
    finally:
        for m, active in saved:
            m.active = active


def merge_lora(model: nn.Module) -> None:
    for _, m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, m in lora_modules(model):
        m.unmerge()


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Merge the active adapters and replace each LoRALinear by its plain nn.Linear."""
    for name, m in list(lora_modules(model)):
        m.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.base_layer)
    return model


def hold_frozen_weights(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Keep every frozen Linear weight of ``model`` in ``dtype`` (bf16: QLoRA's frozen-base idea
    without its 4-bit codes). Under bf16 autocast a matmul then reads the weight as it is where an
    fp32 weight is cast again on every forward (autocast caches casts of trainable weights only),
    and the frozen weights take half the memory. Adapters, the head, norms, embeddings and biases
    stay fp32 and train in fp32. Returns the names of the weights the cast rounded (an fp32
    source); an exact merge takes those back from the source (`restore_weights`)."""
    rounded = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not m.weight.requires_grad and m.weight.dtype != dtype:
            w = m.weight.data
            low = w.to(dtype)
            if not torch.equal(low.to(w.dtype), w):
                rounded.append(f"{name}.weight")
            m.weight.data = low
    return rounded


def restore_weights(model: nn.Module, source: dict[str, torch.Tensor], names: list[str]) -> None:
    """Put the ``source`` state's tensors back under ``names`` (a LoRA layer's ``base_layer``
    named as the plain Linear it wraps), in fp32: the frozen weights as they were loaded."""
    params = dict(model.named_parameters())
    for name in names:
        p = params[name]
        p.data = source[name.replace(".base_layer.", ".")].to(p.device, torch.float32)


def adapter_state_dict(
    model: nn.Module, adapter_name: str = "default", modules_to_save: list[str] = (), rename=None
) -> dict[str, torch.Tensor]:
    """PEFT's keys: ``base_model.model.<module path>.lora_A.weight`` (no adapter name).

    ``rename`` maps our module paths to the Hugging Face paths of the target architecture.
    """
    rename = rename or (lambda k: k)
    out = {}
    for name, m in lora_modules(model):
        if adapter_name in m.lora_A:
            out[f"{PEFT_PREFIX}{rename(name)}.lora_A.weight"] = (
                m.lora_A[adapter_name].weight.detach().contiguous()
            )
            out[f"{PEFT_PREFIX}{rename(name)}.lora_B.weight"] = (
                m.lora_B[adapter_name].weight.detach().contiguous()
            )
    params = dict(model.named_parameters())
    for mod in modules_to_save:
        for pname, p in params.items():
            if pname.startswith(mod + "."):
                out[f"{PEFT_PREFIX}{rename(pname)}"] = p.detach().contiguous()
    return out


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    r: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    adapter_name: str = "default",
    modules_to_save: list[str] = (),
    task_type: str | None = None,
    base_model_name_or_path: str | None = None,
    rslora: bool = False,
    rename=None,
    hf_modules_to_save: list[str] | None = None,
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(model, adapter_name, modules_to_save, rename)
    tmp = out_dir / ".adapter_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(set(targets)),
        "bias": "none",
        "use_rslora": rslora,
        "modules_to_save": hf_modules_to_save
        if hf_modules_to_save is not None
        else (list(modules_to_save) or None),
        "base_model_name_or_path": base_model_name_or_path,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }
    atomic_write_text(out_dir / "adapter_config.json", json.dumps(config, indent=2) + "\n")


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, adapter_name: str = "default", rename=None
) -> dict:
    """Inject and fill an adapter saved in PEFT's format; returns its adapter_config."""
    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = (
        adapter_dir / "adapter_config.json",
        adapter_dir / "adapter_model.safetensors",
    )
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{adapter_dir} is not a LoRA adapter: {p.name} is missing")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type") != "LORA":
        raise CheckpointError(
            f"{cfg_path}: peft_type {config.get('peft_type')!r} is not supported (only LORA)"
        )
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    inject_lora(
        model,
        targets,
        config["r"],
        config["lora_alpha"],
        0.0,
        adapter_name,
        config.get("use_rslora", False),
    )
    tensors = load_file(str(w_path))
    rename = rename or (lambda k: k)
    expected = adapter_state_dict(model, adapter_name, [], rename)
    lookup = {}
    for name, m in lora_modules(model):
        lookup[f"{PEFT_PREFIX}{rename(name)}.lora_A.weight"] = m.lora_A[adapter_name].weight
        lookup[f"{PEFT_PREFIX}{rename(name)}.lora_B.weight"] = m.lora_B[adapter_name].weight
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise CheckpointError(
            f"{w_path} lacks {len(missing)} adapter tensors, e.g. {missing[0]}; it was saved for another model"
        )
    params = {f"{PEFT_PREFIX}{rename(n)}": p for n, p in model.named_parameters()}
    with torch.no_grad():
        for key, t in tensors.items():
            target = lookup.get(key, params.get(key))
            if target is None:
                raise CheckpointError(f"{w_path}: tensor {key} matches nothing in this model")
            if target.shape != t.shape:
                raise CheckpointError(
                    f"{w_path}: {key} has shape {tuple(t.shape)}, the model expects {tuple(target.shape)}"
                )
            target.copy_(t)
    return config
