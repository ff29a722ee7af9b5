"""A wall-clock training budget that the learning-rate schedule follows.

With ``train.max_time_min`` Lightning stops training when the time is up, whatever step it has
reached. A cosine schedule laid out over ``train.max_steps`` would then stop half-way down, at a
learning rate far above its floor. :class:`TimeBudget` measures the elapsed share of the budget
at every step (rank 0's clock, broadcast to every rank under DDP so that all ranks use the same
learning rate), and :func:`cytogen.tasks.common.lr_lambda` decays by whichever budget, steps or
time, is further spent. The elapsed time is saved in checkpoints, so ``--resume`` continues the
schedule where it was.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

__all__ = ["TimeBudget"]


class TimeBudget(L.Callback):
    """Share of a wall-clock budget spent so far, updated before every training step.

    Parameters
    ----------
    minutes : float
        The budget (``train.max_time_min``), > 0.

    Attributes
    ----------
    fraction : float
        Elapsed time over the budget, clipped to [0, 1]; the same on every rank.
    """

    def __init__(self, minutes: float) -> None:
        if not minutes > 0:
            raise ValueError(f"the time budget must be > 0 minutes, got {minutes!r}")
        self.seconds = float(minutes) * 60.0
        self.fraction = 0.0
        self._before = 0.0  # seconds spent in earlier (resumed) runs
        self._t0: float | None = None

    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs of a resumed training included."""
        now = time.monotonic() - self._t0 if self._t0 is not None else 0.0
        return self._before + now

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        fraction = min(1.0, self.elapsed() / self.seconds)
        if trainer.world_size > 1:
            fraction = float(trainer.strategy.broadcast(fraction, src=0))
        self.fraction = fraction

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._before = float(state_dict.get("elapsed_s", 0.0))
