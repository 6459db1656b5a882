"""What each stage promises in its summary.json: one typed schema per stage.

A stage writes its summary through its schema (stages/frame.py validates it at the finish);
everything that reads a run back (the CLI's closing table, the pipeline's report card, the
trade-off table, a scaling fit, a quantized copy) reads it through the same schema, so a key
is spelled in one place. Each schema names ``SHOWN``, the keys the CLI prints when the stage
ends; report/headlines.py turns each schema's ``variant`` into the line that stands for the run.

Schemas list the keys other code reads; a stage may write more (``extra="allow"``: plots'
data, samples, diagnostics) without declaring them. Every declared key is optional, because
a key that depends on the recipe (val_bpb for a decoder, test for a run with a test split)
is absent rather than null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from lmforge.errors import CheckpointError
from lmforge.utils import read_json

Number = int | float


class Summary(BaseModel):
    model_config = ConfigDict(extra="allow")

    STAGE: ClassVar[str] = ""  # the value of `stage` this schema reads
    SHOWN: ClassVar[tuple[str, ...]] = ()

    stage: str | None = None
    stage_seconds: Number | None = None

    @classmethod
    def read(cls, run_dir: str | Path):
        """The summary of a finished run, or a clear error where there is none."""
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            raise CheckpointError(f"{run_dir} has no summary.json: the run has not finished")
        return cls.model_validate(read_json(path))

    def dump(self) -> dict[str, Any]:
        """The dict written to summary.json: what the stage set, in the order it set it."""
        return self.model_dump(exclude_unset=True)

    def written(self) -> dict[str, Any]:
        """The keys as written, without serialising (a lenient read may hold damaged values)."""
        return {k: getattr(self, k) for k in self.model_fields_set} | (self.model_extra or {})

    def shown(self) -> dict[str, Any]:
        """What the CLI prints at the end of the stage (absent keys omitted)."""
        data = self.dump()
        return {k: data[k] for k in self.SHOWN if k in data}

    @classmethod
    def lenient(cls, data: dict):
        """The summary as written, unvalidated: for a reader that reports a damaged value
        (the report shows it as text) instead of refusing the whole run."""
        return cls.model_construct(**data)

    def variant(self) -> str:
        """What kind of run this is, where one stage makes several (the report groups by it)."""
        return self.STAGE


class Trained(Summary):
    """What the Trainer's fit() returns, merged into every training stage's summary."""

    steps: int | None = None
    stopped_early: bool | None = None
    final_train_loss: Number | None = None
    val_loss: Number | None = None
    tokens_seen: int | None = None
    tokens_per_second: Number | None = None
    wall_seconds: Number | None = None
    mfu: Number | None = None
    precision: str | None = None
    optimizer: str | None = None
    world_size: int | None = None
    activation_checkpointing: bool | None = None


class PretrainSummary(Trained):
    STAGE = "pretrain"
    SHOWN = (
        "steps",
        "final_train_loss",
        "val_loss",
        "val_bpb",
        "val_masked_accuracy",
        "tokens_seen",
        "tokens_per_second",
        "mfu",
        "wall_seconds",
    )

    val_bpb: Number | None = None
    val_masked_accuracy: Number | None = None
    params: int | None = None
    params_non_embedding: int | None = None
    flops_per_token: Number | None = None
    distill: dict | None = None  # a student's teacher and its val bpb
    samples: list[dict] | None = None

    def variant(self) -> str:
        if self.val_masked_accuracy is not None:
            return "encoder"
        return "lm-distill" if self.distill is not None else "pretrain"


class FineTuned(Trained):
    """A run that starts from another model: where from, and how it trained (full, LoRA)."""

    init: str | None = None
    method: str | None = None


class MidtrainSummary(FineTuned):
    STAGE = "midtrain"
    SHOWN = ("steps", "before", "after", "forgetting_bpb", "loss_by_position", "wall_seconds")

    params: int | None = None
    before: dict | None = None
    after: dict | None = None
    forgetting_bpb: Number | None = None
    context: dict | None = None
    loss_by_position: dict | None = None
    realised_mix: dict | None = None
    samples: list[dict] | None = None


class SFTSummary(FineTuned):
    STAGE = "sft"
    SHOWN = ("steps", "val_loss", "answers_before", "answers", "wall_seconds")

    answers: dict | None = None
    answers_before: dict | None = None
    samples: list[dict] | None = None


class RewardSummary(FineTuned):
    STAGE = "reward"
    SHOWN = ("steps", "before", "val_accuracy", "val_margin", "wall_seconds")

    before: dict | None = None
    val_accuracy: Number | None = None
    val_margin: Number | None = None


class DPOSummary(FineTuned):
    STAGE = "dpo"
    SHOWN = (
        "steps",
        "before",
        "val_reward_accuracy",
        "val_margin",
        "val_policy_prefers_chosen",
        "win_rate_over_init",
        "wall_seconds",
    )

    beta: Number | None = None
    before: dict | None = None
    val_reward_accuracy: Number | None = None
    val_margin: Number | None = None
    val_policy_prefers_chosen: Number | None = None
    win_rate_over_init: Number | None = None
    win_rate_ci95: list[Number] | None = None
    win_rate_n: int | None = None
    samples: list[dict] | None = None


class SplitScores(BaseModel):
    """A classifier's metrics on one split (eval/classification.py's headline)."""

    model_config = ConfigDict(extra="allow")

    accuracy: Number | None = None
    macro_f1: Number | None = None
    weighted_f1: Number | None = None
    zero_f1_classes: int | None = None
    tier_macro_f1: dict[str, Number | None] | None = None
    ece: Number | None = None
    ece_after_temperature: Number | None = None
    temperature: Number | None = None
    unknown_label_examples: int | None = None


class ClassifierSummary(Summary):
    """Every classifier run (classify, baseline, a quantized or distilled copy): each eval
    split's scores, the first split's also at the top level, and speed and size measured with
    eval/bench.py's one protocol. `lmforge tradeoff` compares runs by these keys."""

    SHOWN = (
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "zero_f1_classes",
        "tier_macro_f1",
        "ece",
        "ece_after_temperature",
        "latency_ms_p50",
        "throughput_per_s",
        "checkpoint_mb",
        "test",
    )
    # The keys that describe the run (speed, size, parameters), beside its scores.
    RUN_KEYS: ClassVar[tuple[str, ...]] = (
        "latency_ms_p50",
        "latency_ms_p95",
        "throughput_per_s",
        "peak_memory_mb",
        "checkpoint_mb",
        "params_trainable",
    )

    method: str | None = None
    source: str | None = None
    task: str | None = None
    num_labels: int | None = None
    params_total: int | None = None
    params_trainable: int | None = None
    val: SplitScores | None = None
    test: SplitScores | None = None
    accuracy: Number | None = None
    macro_f1: Number | None = None
    weighted_f1: Number | None = None
    zero_f1_classes: int | None = None
    tier_macro_f1: dict[str, Number | None] | None = None
    ece: Number | None = None
    ece_after_temperature: Number | None = None
    temperature: Number | None = None
    latency_ms_p50: Number | None = None
    latency_ms_p95: Number | None = None
    throughput_per_s: Number | None = None
    peak_memory_mb: Number | None = None
    checkpoint_mb: Number | None = None
    speed_note: str | None = None

    def held_out(self) -> tuple[dict, str]:
        """The held-out scores a headline quotes: test when the run was evaluated there (as
        `lmforge tradeoff` does), else val, and the split's name."""
        for name in ("test", "val"):
            scores = getattr(self, name, None)
            if isinstance(scores, SplitScores):
                scores = scores.model_dump(exclude_unset=True)
            if isinstance(scores, dict) and "macro_f1" in scores:
                return scores, name
        return self.written(), "val"

    def split(self, name: str) -> SplitScores | None:
        """The scores on one eval split (val and test are declared; another is an extra)."""
        value = getattr(self, name, None)
        if isinstance(value, dict):
            value = SplitScores.model_validate(value)
        return value if isinstance(value, SplitScores) else None


class ClassifySummary(ClassifierSummary):
    STAGE = "classify"

    init: str | None = None
    train: dict | None = None
    distill: dict | None = None
    adapter_mb: Number | None = None
    adapter_hf_names: bool | None = None  # the adapter's keys are transformers' (PEFT loads it)
    plan: dict | None = None  # the estimate before the first step: memory, checkpointing, time
    frozen_dtype: str | None = None  # the dtype the frozen backbone was held in (LoRA, probe)


class BaselineSummary(ClassifierSummary):
    STAGE = "baseline-tfidf"
    SHOWN = tuple(k for k in ClassifierSummary.SHOWN if k != "test")  # the val split's only


class QuantizeSummary(ClassifierSummary):
    """A quantized copy: a classifier's scores, or a decoder's val bpb beside its source's."""

    STAGE = "quantize"  # `lmforge quantize` prints the whole summary

    group_size: int | None = None
    source_checkpoint_mb: Number | None = None
    val_bpb: Number | None = None
    source_val_bpb: Number | None = None
    val_bpb_change: Number | None = None

    def variant(self) -> str:
        return "quantize-lm" if self.val_bpb is not None else "quantize"


class ConvertSummary(Summary):
    """`convert --from-hf`: what was imported (its summary carries no `stage`)."""

    STAGE = "convert"
    SHOWN = ("source", "architecture", "kind", "params")

    source: str | None = None
    architecture: str | None = None
    kind: str | None = None
    params: int | None = None


# summary.json's `stage` -> its schema (a run directory says which stage made it).
SCHEMAS: dict[str, type[Summary]] = {
    s.STAGE: s
    for s in (
        PretrainSummary,
        MidtrainSummary,
        SFTSummary,
        RewardSummary,
        DPOSummary,
        ClassifySummary,
        BaselineSummary,
        QuantizeSummary,
        ConvertSummary,
    )
}


def read_summary(run_dir: str | Path) -> Summary:
    """A finished run's summary, read through the schema of the stage that wrote it."""
    data = read_json(Path(run_dir) / "summary.json")
    return SCHEMAS.get(data.get("stage"), Summary).model_validate(data)
