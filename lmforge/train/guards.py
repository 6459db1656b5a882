"""The training loop's guards: a loss spike (rolled back to the last checkpoint) and early
stopping on an eval metric (the best evaluation's weights restored). Their settings are
TrainerConfig's `spike` and `early_stop` sections."""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

from pydantic import Field

from lmforge.config import Section


class SpikeConfig(Section):
    enabled: bool = True
    # A loss above mean + sigma * std of the last `window` losses (or a non-finite loss) is a spike.
    sigma: float = Field(6.0, gt=0)
    window: int = Field(50, ge=2)
    min_history: int = Field(20, ge=2)  # too few losses give a meaningless std
    max_rollbacks: int = Field(5, ge=0)  # more than this many spikes means the run is broken: stop


class EarlyStopConfig(Section):
    # Stop when this eval metric (a key the stage's eval returns, e.g. "val_macro_f1") has not
    # improved for `patience` evaluations, and restore the weights of the best evaluation.
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class SpikeDetector:
    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)

    def is_spike(self, loss: float) -> bool:
        if not self.cfg.enabled:
            return False
        if not math.isfinite(loss):
            return True
        if len(self.history) < self.cfg.min_history:
            return False
        mean = sum(self.history) / len(self.history)
        std = (sum((x - mean) ** 2 for x in self.history) / len(self.history)) ** 0.5
        return loss > mean + self.cfg.sigma * max(std, 1e-3 * abs(mean))

    def add(self, loss: float) -> None:
        self.history.append(loss)
