"""Run-time settings: precision choice from the probe, switches, errors, the record."""

from __future__ import annotations

import json

import pytest
import torch

from cytogen.errors import CytogenError
from cytogen.runtime import resolve_runtime
from cytogen.runtime.settings import BF16_MIN_SPEEDUP, normalize_precision, _cpu_bf16_ok

needs_bf16 = pytest.mark.skipif(not _cpu_bf16_ok(), reason="this CPU has no bf16 support")


def _probe(speedup: float):
    return lambda: {"conv_fp32_gflops": 100.0, "conv_bf16_gflops": 100.0 * speedup,
                    "bf16_speedup": speedup}


@needs_bf16
def test_auto_picks_bf16_only_where_the_probe_shows_it_faster() -> None:
    fast = resolve_runtime("auto", accelerator="cpu", probe=_probe(BF16_MIN_SPEEDUP + 0.5))
    assert fast.precision == "bf16-mixed" and fast.autocast_dtype == torch.bfloat16
    slow = resolve_runtime("auto", accelerator="cpu", probe=_probe(0.5))
    assert slow.precision == "32" and slow.autocast_dtype is None
    assert any("not faster" in n and "50.0 vs 100.0" in n for n in slow.notes)
    assert fast.channels_last and slow.channels_last


def test_no_fast_is_plain_float32_default_layout() -> None:
    s = resolve_runtime("auto", fast=False, accelerator="cpu", probe=_probe(10.0))
    assert (s.precision, s.channels_last, s.compile) == ("32", False, False)
    assert s.memory_format(2) is None and s.probe == {}


def test_memory_format_per_dimensionality() -> None:
    s = resolve_runtime("32", accelerator="cpu")
    assert s.memory_format(2) == torch.channels_last
    assert s.memory_format(3) == torch.channels_last_3d


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp8"}, "not one of"),
    ({"precision": "16-mixed", "accelerator": "cpu"}, "needs a GPU"),
    ({"compile": True, "fast": False}, "contradict"),
    ({"precision": "bf16-mixed", "fast": False}, "no-fast"),
    ({"accelerator": "tpu"}, "accelerator"),
])
def test_contradictions_and_unknown_values_are_refused(kwargs, match) -> None:
    with pytest.raises(CytogenError, match=match):
        resolve_runtime(**kwargs)


def test_aliases_and_thread_split(tmp_path) -> None:
    assert normalize_precision("bf16") == "bf16-mixed" and normalize_precision("32-true") == "32"
    one = resolve_runtime("32", accelerator="cpu", processes_per_node=1)
    two = resolve_runtime("32", accelerator="cpu", processes_per_node=2)
    assert two.threads == max(1, one.threads // 2)
    assert one.num_workers == 0 or one.threads > 8
    info = json.loads(one.write(tmp_path / "runtime.json").read_text())
    assert info["precision"] == "32" and info["torch_version"] == torch.__version__


@pytest.mark.parametrize("flags, expect", [
    (["--no-fast"], {"precision": "32", "channels_last": False, "compile": False}),
    (["--precision", "32"], {"precision": "32", "channels_last": True, "compile": False}),
    (["--precision", "32", "--compile"], {"precision": "32", "channels_last": True, "compile": True}),
    pytest.param(["--precision", "bf16"], {"precision": "bf16-mixed", "channels_last": True},
                 marks=needs_bf16),
])
def test_train_flags_reach_the_runtime_settings(flags, expect) -> None:
    """``cytogen train`` flags -> recipe overrides -> what the run resolves, without a Trainer run."""
    from cytogen.cli import _speed_overrides, build_parser
    from cytogen.config import bundled_recipe, load_recipe
    from cytogen.workflows.train import runtime_for

    recipe = bundled_recipe("translate_unet2d")
    args = build_parser().parse_args(["train", str(recipe), "--data", "m.csv", "--out", "run",
                                      "--accelerator", "cpu", *flags])
    rec = load_recipe(recipe, (args.set or []) + _speed_overrides(args))
    s = runtime_for(rec)
    assert {k: getattr(s, k) for k in expect} == expect
    assert s.device == "cpu" and s.to_dict()["precision"] == expect["precision"]


def test_flags_win_over_recipe_overrides() -> None:
    from cytogen.cli import _speed_overrides, build_parser
    from cytogen.config import bundled_recipe, load_recipe

    recipe = bundled_recipe("translate_unet2d")
    args = build_parser().parse_args(["train", str(recipe), "--data", "m.csv", "--out", "run",
                                      "--set", "train.precision=bf16-mixed", "--precision", "32"])
    assert load_recipe(recipe, (args.set or []) + _speed_overrides(args)).train.precision == "32"
