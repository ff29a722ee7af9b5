"""A time-limited run's cosine schedule follows the time budget, not only the step budget."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from cytogen.tasks import time_budget
from cytogen.tasks.common import lr_lambda
from cytogen.tasks.time_budget import TimeBudget

COSINE = {"scheduler": "cosine", "warmup_steps": 0}


def _cosine(t: float) -> float:
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def test_cosine_follows_whichever_budget_is_further_spent() -> None:
    spent = {"f": 0.0}
    fn = lr_lambda(COSINE, 1000, lambda: spent["f"])
    assert fn(100) == pytest.approx(_cosine(0.1))  # steps further spent than time
    spent["f"] = 0.5
    assert fn(100) == pytest.approx(_cosine(0.5))  # time further spent: half-way down
    spent["f"] = 1.0
    assert fn(100) == pytest.approx(0.05)  # time is up: the floor
    assert lr_lambda(COSINE, 1000)(100) == pytest.approx(_cosine(0.1))  # no budget: steps only


def test_time_budget_measures_elapsed_share_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = {"t": 100.0}
    monkeypatch.setattr(time_budget.time, "monotonic", lambda: now["t"])
    trainer = SimpleNamespace(world_size=1)
    budget = TimeBudget(10)  # 600 s
    budget.on_train_start(trainer, None)
    now["t"] += 150
    budget.on_train_batch_start(trainer, None, None, 0)
    assert budget.fraction == pytest.approx(0.25)
    state = budget.state_dict()
    resumed = TimeBudget(10)
    resumed.load_state_dict(state)  # a resumed run continues from 150 s
    resumed.on_train_start(trainer, None)
    now["t"] += 300
    resumed.on_train_batch_start(trainer, None, None, 0)
    assert resumed.fraction == pytest.approx(0.75)
    now["t"] += 10_000
    resumed.on_train_batch_start(trainer, None, None, 0)
    assert resumed.fraction == 1.0
    with pytest.raises(ValueError):
        TimeBudget(0)
