"""The model: one Transformer, its config and presets, heads, LoRA, quantizers, HF mappings."""

# model/quant.py's methods, here so that `lmforge quantize --help` lists them without torch
QUANT_METHODS = ("int8", "int8-weight", "int4", "bf16", "fp16")
