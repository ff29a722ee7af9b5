"""``cytogen train`` speed flags: what was chosen is recorded, --no-fast is plain float32."""

from __future__ import annotations

import json
from pathlib import Path

from cytogen.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml"
TINY = ["data.patch_size=[32,32]", "data.batch_size=4", "data.patches_per_epoch=32",
        "data.val_patches=4", "model.kwargs.base_channels=8", "model.kwargs.depth=2",
        "train.val_every=2"]


def _train(synth_set: Path, out: Path, *flags: str) -> dict:
    args = ["train", str(RECIPE), "--data", str(synth_set), "--out", str(out), "--max-steps", "2",
            *flags] + [x for kv in TINY for x in ("--set", kv)]
    assert main(args) == 0
    return json.loads((out / "runtime.json").read_text())


def test_no_fast_run_is_plain_float32_end_to_end(synth_set, tmp_path) -> None:
    """One real run: the plain path reaches the Trainer and both records agree. Which flag resolves
    to which settings is unit-tested without a Trainer (tests/runtime/test_settings.py); the
    contradicting-flags refusal is a case of tests/test_bad_input.py."""
    info = _train(synth_set, tmp_path / "run", "--accelerator", "cpu", "--no-fast")
    assert (info["precision"], info["channels_last"], info["compile"]) == ("32", False, False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["precision"] == "32" and summary["channels_last"] is False and summary["steps"] == 2
