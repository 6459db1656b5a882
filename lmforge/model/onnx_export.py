"""ONNX copies of a sequence classifier, run with ONNX Runtime.

    info = export_classifier(model, out / "model.onnx")       # fp32, dynamic batch and length
    quantize_int8(out / "fp32.onnx", out / "model.onnx")       # ORT dynamic quantization
    logits = OnnxClassifier(out / "model.onnx", model.head_cfg)(input_ids, attention_mask)

The graph takes ``input_ids`` and ``attention_mask`` (int64, (batch, length), both dynamic)
and returns ``logits`` (float32, (batch, num_labels)): SequenceClassifier's forward, with the
padding on either side. Token type ids are not an input: they are zeros, as the classifier
eval passes none.

The exporter is torch.onnx's dynamo one (torch.export, then onnxscript). In torch 2.13 the
TorchScript exporter stops at opset 20 and has no aten::rms_norm, so it cannot export a
decoder; the dynamo exporter exports decoders, ModernBERT- and BERT-like encoders with logits
within 1e-7 of ours. It takes seconds even for a tiny model (symbolic shapes), once per copy.

onnx, onnxruntime and onnxscript are the optional `deploy` extra; they are imported here only
when a copy is made or run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.heads import HeadConfig
from lmforge.utils import read_json

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
# A protobuf file holds at most 2 GB: above half of it (the graph and a margin beside), the
# weights go to model.onnx.data next to the graph.
EXTERNAL_DATA_ABOVE_BYTES = 2**30
# ORT dynamic quantization: int8 weights with one scale per output channel (as our int8), and
# 7-bit weights (reduce_range) so that AVX2's 16-bit pair sums cannot saturate (CPUs without
# VNNI); on this AVX2 machine 8-bit weights gave 4x the logit error (0.08 vs 0.02 relative).
INT8_SETTINGS = {"weight_type": "QInt8", "per_channel": True, "reduce_range": True}


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs onnx, onnxruntime and onnxscript ({e.name} is missing): "
            "pip install 'lmforge[deploy]'"
        ) from None


def check_exportable(kind: str, where: str | os.PathLike) -> None:
    """Refuse, before anything is written, what export_classifier cannot make."""
    if kind != "sequence_classifier":
        raise ConfigError(
            f"{where} is a {kind} artifact; the ONNX methods export classifiers (a `lmforge "
            "classify train` run). Quantize a language model with --method int8, int4 or bf16."
        )
    _require_onnx()


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs that torchvision's ops are not registered and warns about its
    own deprecations: noise to a user exporting a text classifier."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def padded_batch(
    vocab_size: int, pad_id: int, lengths: list[int], side: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random non-pad token ids padded to the longest row on ``side``: (input_ids, mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        tokens = torch.randint(0, vocab_size - 1, (n,), generator=g)
        tokens = tokens + (tokens >= pad_id).long()  # every id but the pad's
        at = slice(T - n, T) if side == "left" else slice(0, n)
        ids[row, at], mask[row, at] = tokens, 1
    return ids, mask


def export_classifier(model: nn.Module, path: str | os.PathLike) -> dict:
    """Write a SequenceClassifier (cast to fp32 in place) as an ONNX graph at ``path``, check
    its logits against the model's on batches padded on each side, and return what the copy
    records (exporter, opset, the largest logit difference seen)."""
    _require_onnx()
    import onnx

    path = Path(path)
    model = model.float().eval()
    cfg = model.cfg
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    # Length 2 or more, and batch 2: torch.export specialises a dimension whose example is 1.
    length = max(2, min(8, cfg.max_seq_len))
    example = padded_batch(cfg.vocab_size, pad_id, [length, length], "right")
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_shapes={name: dynamic for name in INPUT_NAMES},
            verbose=False,
        )
    # Each node carries the exporter's debugging notes (the torch module path, the fx node,
    # a stack trace naming this machine's files): as large as a small model's weights, and
    # nothing ONNX Runtime reads.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_ABOVE_BYTES)
    graph = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in graph.graph.input]
    if inputs != list(INPUT_NAMES):  # e.g. an unused mask would be pruned from the graph
        raise CheckpointError(f"the ONNX graph takes {inputs}, not {list(INPUT_NAMES)}")
    diff = max_logit_difference(model, OnnxClassifier(path, model.head_cfg), pad_id)
    return {
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
        "opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": list(INPUT_NAMES),
        "max_abs_logit_diff": diff,
    }


def max_logit_difference(model: nn.Module, onnx_model: OnnxClassifier, pad_id: int) -> float:
    """The largest |logit difference| between the torch model and its ONNX copy on batches of
    three lengths padded on the right and on the left; a CheckpointError above 1e-4 (relative
    to the logits' size), so that a copy that misreads the mask is never kept."""
    cfg = model.cfg
    T = max(2, min(9, cfg.max_seq_len))
    worst = 0.0
    for side in ("right", "left"):
        ids, mask = padded_batch(cfg.vocab_size, pad_id, [T, T // 2, 1], side, seed=1)
        with torch.no_grad():
            want = model(ids, attention_mask=mask).numpy()
        got = onnx_model(ids, attention_mask=mask).numpy()
        diff = float(np.abs(got - want).max())
        if diff > 1e-4 * max(1.0, float(np.abs(want).max())):
            raise CheckpointError(
                f"the ONNX copy's logits differ from the model's by {diff:.3g} on a batch "
                f"padded on the {side}, so it is not kept; this model's layers do not export "
                "faithfully: report it with the run's model.json, and deploy a torch copy"
            )
        worst = max(worst, diff)
    return worst


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """ORT's dynamic quantization of an fp32 graph: int8 weights for MatMul and Gather (the
    embeddings), activations quantized per call at run time. Returns its settings."""
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a hint to pre-process the graph first on the root logger; ORT's
    # pre-processing (symbolic shape inference) fails on these dynamic-length graphs.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=getattr(QuantType, INT8_SETTINGS["weight_type"]),
            per_channel=INT8_SETTINGS["per_channel"],
            reduce_range=INT8_SETTINGS["reduce_range"],
        )
    finally:
        root.setLevel(level)
    return dict(INT8_SETTINGS)


def session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with torch's thread count, so speed compares with torch's."""
    _require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1  # the nodes run in sequence; the threads work inside each
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxClassifier(nn.Module):
    """An ONNX copy behind the interface the classifier eval calls: ``model(input_ids,
    attention_mask=mask)`` returns the logits (B, num_labels) as a torch tensor, and
    ``head_cfg`` names the labels. It has no torch parameters and runs on the CPU."""

    def __init__(self, path: str | os.PathLike, head_cfg: HeadConfig, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.head_cfg = head_cfg
        self.session = session(path, threads)

    @classmethod
    def from_dir(cls, run_dir: str | os.PathLike, threads: int | None = None) -> OnnxClassifier:
        """The copy in a run directory written by `lmforge quantize --method onnx|onnx-int8`."""
        run_dir = Path(run_dir)
        if not (run_dir / ONNX_FILE).is_file():
            raise CheckpointError(f"{run_dir} holds no {ONNX_FILE}")
        head = HeadConfig.model_validate(read_json(run_dir / "model.json")["head"])
        return cls(run_dir / ONNX_FILE, head, threads)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is None:
            # The graph always reads a mask; guessing one (all ones, or non-pad ids) would
            # differ from the torch model's unmasked forward for some pooling.
            raise ValueError("an ONNX classifier needs attention_mask (1 = token, 0 = padding)")
        feeds = {
            "input_ids": input_ids.cpu().numpy().astype(np.int64, copy=False),
            "attention_mask": attention_mask.cpu().numpy().astype(np.int64, copy=False),
        }
        (logits,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(logits)
