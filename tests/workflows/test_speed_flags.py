"""``cytogen train`` speed flags: what was chosen is recorded, --no-fast is plain float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cytogen.cli import main
from cytogen.runtime.settings import _cpu_bf16_ok

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml"
TINY = ["data.patch_size=[32,32]", "data.batch_size=4", "data.patches_per_epoch=32",
        "data.val_patches=4", "model.kwargs.base_channels=8", "model.kwargs.depth=2",
        "train.val_every=2"]


def _train(synth_set: Path, out: Path, *flags: str) -> dict:
    args = ["train", str(RECIPE), "--data", str(synth_set), "--out", str(out), "--max-steps", "2",
            *flags] + [x for kv in TINY for x in ("--set", kv)]
    assert main(args) == 0
    return json.loads((out / "runtime.json").read_text())


@pytest.mark.parametrize("flags, expect", [
    (["--no-fast"], {"precision": "32", "channels_last": False, "compile": False}),
    (["--precision", "32"], {"precision": "32", "channels_last": True}),
    pytest.param(["--precision", "bf16"], {"precision": "bf16-mixed", "channels_last": True},
                 marks=pytest.mark.skipif(not _cpu_bf16_ok(), reason="no bf16 on this CPU")),
])
def test_flags_reach_the_run_and_are_recorded(synth_set, tmp_path, flags, expect) -> None:
    info = _train(synth_set, tmp_path / "run", "--accelerator", "cpu", *flags)
    assert {k: info[k] for k in expect} == expect
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["precision"] == expect["precision"] and summary["steps"] == 2


def test_contradicting_flags_exit_cleanly(synth_set, tmp_path, capsys) -> None:
    args = ["train", str(RECIPE), "--data", str(synth_set), "--out", str(tmp_path / "r"),
            "--no-fast", "--compile"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "contradict" in err and "Traceback" not in err
