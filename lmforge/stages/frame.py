"""The stage frame: what every training stage does at its start and at its finish.

    run = frame.begin(cfg)                 # seeded; the clock for stage_seconds started
    ...resolve what the config leaves open (the model's vocabulary, steps from epochs)...
    with run.open(overwrite):              # out_dir: a new run, a resumed one, or refused
        ...load the data, build the Trainer...
    result = trainer.fit()                 # the Trainer owns its checkpoints and resume
    ...write the artifact into run.out...
    return run.finish(PretrainSummary(...), plot="pretrain d6")

`open` decides from what out_dir holds, before anything is written, whether this is a new
run, a resumed one or a refusal (train/checkpoint.py's rules), comparing the config in force
(hence after the recipe has filled in what it derives); bad input raised inside the block
leaves nothing half-made, and a block that completes writes config.yaml (rank 0). `finish`
writes summary.json last, atomically (its presence marks a finished run), after the loss
curves, and then discards the Trainer's resumable state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.stages.summaries import Summary
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as dp
from lmforge.train.plots import plot_training_curves
from lmforge.utils import seed_everything, write_json


@dataclass
class Run:
    cfg: object  # the stage's config (a pydantic model with out_dir and trainer.seed)
    out: Path
    is_main: bool  # rank 0 of a torchrun launch (or the only process): it writes the artifact
    started: float  # perf_counter() at begin(): the summary's stage_seconds

    @contextlib.contextmanager
    def open(self, overwrite: bool = False) -> Iterator[Run]:
        """out_dir as a new, resumed or refused run, around the stage's preparation."""
        with ckpt.preparing_run(self.out, self.cfg, overwrite, is_main=self.is_main):
            yield self

    def finish(self, summary: Summary, plot: str | None = None) -> dict:
        """The loss curves (titled ``plot``), summary.json (last: it marks completion) and the
        Trainer's resumable state discarded. Returns the summary as written."""
        if plot is not None:
            plot_training_curves(self.out / "metrics.jsonl", self.out / "loss.png", title=plot)
        summary.stage_seconds = time.perf_counter() - self.started
        data = summary.dump()
        write_json(self.out / "summary.json", data)
        ckpt.discard_training_state(self.out)
        return data


def begin(cfg) -> Run:
    """A stage's first line: seed every generator from trainer.seed and start the clock."""
    started = time.perf_counter()
    seed_everything(cfg.trainer.seed)
    return Run(cfg, Path(cfg.out_dir), dp.world_from_env()[0] == 0, started)
