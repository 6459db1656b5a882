"""Estimates before spending: parameters, peak memory, FLOPs and time of one training step.

    lmforge estimate --model qwen2.5-0.5b --method full --batch 32 --seq 128 --dtype bf16 [--memory-gb 16]

``--model`` is a preset name, a stage config YAML (``preset:`` + ``model:`` overrides, or
``init:``) or a model directory (an lmforge artifact or a Hugging Face checkpoint): see
`resolve_model`. The CLI calls `resolve_model`, `estimate(..., flops_per_s=calibrate(dtype))`
and prints `format_estimate`. `estimate` is arithmetic on the config: no weights are read, no
tensors allocated. `measure` runs one real step of our own modules (`build_step`) and reports
its peak memory and time, to check the arithmetic against.

`resolve` finds the model, `memory` is the arithmetic (its docstring says what each byte and
FLOP is), `format` prints it, `measured` runs the real step and `calibration` times one. This
module re-exports what the CLI, the pipeline, the tests and the benchmarks use.
"""

from lmforge.eval.estimate.calibration import CALIBRATION, CALIBRATION_SHAPE, calibrate
from lmforge.eval.estimate.format import format_estimate
from lmforge.eval.estimate.measured import build_step, measure
from lmforge.eval.estimate.memory import DTYPES, MB, METHODS, estimate
from lmforge.eval.estimate.resolve import model_from_config, resolve_model

__all__ = [
    "CALIBRATION",
    "CALIBRATION_SHAPE",
    "DTYPES",
    "MB",
    "METHODS",
    "build_step",
    "calibrate",
    "estimate",
    "format_estimate",
    "measure",
    "model_from_config",
    "resolve_model",
]
