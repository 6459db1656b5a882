"""The model: one Transformer, its config and presets, heads, LoRA, quantizers, HF mappings."""

# model/quant.py's methods, here so that `lmforge quantize --help` lists them without torch
QUANT_METHODS = ("int8", "int8-weight", "int4", "bf16", "fp16")
# model/onnx_export.py's: a classifier exported to ONNX and run with ONNX Runtime, in fp32 or
# with ORT's int8 weights. Kept apart from QUANT_METHODS, which quant.py accepts.
ONNX_METHODS = ("onnx", "onnx-int8")
