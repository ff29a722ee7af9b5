"""Scale-out: the same recipe under Lightning DDP with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cytogen.models import build_model

TINY = ["data.patch_size=[32,32]", "data.batch_size=4", "data.patches_per_epoch=64",
        "data.val_patches=8", "model.kwargs.base_channels=8", "model.kwargs.depth=2",
        "train.val_every=3", "train.checkpoint_every=3", "optim.warmup_steps=0", "train.precision=32"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_cpu_processes_end_with_identical_weights(synth_set: Path, tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cytogen", "train", str(recipe), "--data", str(synth_set),
           "--out", str(out), "--max-steps", "6", "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp"] + [x for kv in TINY for x in ("--set", kv)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    digests = summary["ranks_weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1] and summary["ranks_in_sync"]
    # The ranks trained (weights moved away from the seeded initialisation) ...
    torch.manual_seed(0)
    init = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=8)
    trained = load_file(str(out / "model" / "weights.safetensors"))
    moved = [not torch.equal(trained[k], v) for k, v in init.state_dict().items()
             if k.endswith("weight") and v.ndim > 1]
    assert all(moved)
    # ... and exactly one JSON summary was printed (rank 1 stays quiet).
    assert proc.stdout.count('"world_size"') == 1
