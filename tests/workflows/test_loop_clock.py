"""LoopClock: the steady-state rate and step share of a training loop, from a scripted clock."""

import pytest

from cytogen.workflows import train_support
from cytogen.workflows.train_support import LoopClock


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Module:
    class device:  # noqa: N801 (a stand-in for torch.device)
        type = "cpu"


def test_steady_rate_excludes_warm_up_and_counts_validation(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(train_support.time, "perf_counter", clock)
    monkeypatch.setattr(train_support.time, "process_time", clock)
    lc = LoopClock()
    for k in range(30):
        lc.on_train_batch_start(None, None, None, k)
        clock.t += 5.0 if k < 3 else 1.0  # three slow first steps (allocation, compilation)
        lc.on_train_batch_end(None, None, None, None, k)
        clock.t += 0.25  # data loading between steps
        if k == 14:
            lc.on_validation_start(None, None)
            clock.t += 2.0
            lc.on_validation_end(None, None)
    lc.on_train_end(None, _Module())
    assert lc.warm() == 3
    span = 27 * 1.25 + 2.0  # from batch 3's start to the end
    assert lc.steady_batches_per_second() == pytest.approx(27 / span)
    assert lc.steady_batches_per_second(cpu=True) == pytest.approx(27 / span)
    assert lc.step_share() == pytest.approx(27 * 1.0 / span)
    assert lc.validation_seconds == pytest.approx(2.0)


def test_too_short_a_run_has_no_steady_rate(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(train_support.time, "perf_counter", clock)
    lc = LoopClock()
    for k in range(3):
        lc.on_train_batch_start(None, None, None, k)
        clock.t += 1.0
        lc.on_train_batch_end(None, None, None, None, k)
    lc.on_train_end(None, _Module())
    assert lc.steady_batches_per_second() is None and lc.step_share() is None
