"""Hugging Face checkpoints in and out: Llama, Qwen2 (Qwen2.5), GPT-2, ModernBERT, BERT.

A Hugging Face model directory (config.json + *.safetensors + tokenizer files) becomes an
lmforge model by two tables per family, each family in a module of its own (llama, gpt2,
modernbert, bert; `families` lists them):

- a config map: HF config keys -> ModelConfig flags (``config_from_hf`` / ``config_to_hf``);
- a name map: each lmforge parameter -> (HF tensor name, slot) (``NAMES``). Several lmforge
  tensors can live in one HF tensor (ModernBERT's fused ``Wqkv`` and ``Wi``, GPT-2's
  ``c_attn``): the slot says which part along dim 0. GPT-2's Conv1D weights are stored
  transposed (in, out).

The same tables run backwards for export (`export`), so import (`load`) and export cannot drift
apart. `hub` finds a checkpoint; `configs` converts config.json; `names` maps parameter and
module names. This module re-exports what the rest of lmforge uses.
"""

from lmforge.model.hf.configs import config_from_hf, config_to_hf
from lmforge.model.hf.export import adapter_to_hf, write_hf
from lmforge.model.hf.families import ARCHITECTURES, MODEL_TYPES, export_family
from lmforge.model.hf.hub import HUB_FILES, is_hf_dir, resolve
from lmforge.model.hf.load import load_hf, sentence_transformers_pooling
from lmforge.model.hf.names import module_names, name_map, rename_with

__all__ = [
    "ARCHITECTURES",
    "HUB_FILES",
    "MODEL_TYPES",
    "adapter_to_hf",
    "config_from_hf",
    "config_to_hf",
    "export_family",
    "is_hf_dir",
    "load_hf",
    "module_names",
    "name_map",
    "rename_with",
    "resolve",
    "sentence_transformers_pooling",
    "write_hf",
]
