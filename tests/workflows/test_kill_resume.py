"""A training run killed with SIGKILL at several moments resumes to the same weights."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cytogen.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml")
ARGS = ["--max-steps", "36", "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
        "--set", "data.patch_size=[32,32]", "--set", "data.patches_per_epoch=40", "--set", "data.batch_size=4",
        "--set", "data.val_patches=4", "--set", "train.val_every=7", "--set", "train.checkpoint_every=3",
        "--set", "train.precision='32'", "--set", "train.export=last", "--set", "optim.warmup_steps=4"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _step_of(run: Path) -> int:
    try:
        return int(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])
    except Exception:
        return -1


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_gives_identical_weights(synth_set, tmp_path):
    ref = tmp_path / "ref"
    assert main(["train", CONFIG, "--data", str(synth_set), "--out", str(ref), *ARGS]) == 0

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "cytogen.cli", "train", CONFIG, "--data", str(synth_set), "--out", str(run), *ARGS]
    kills = 0
    rng = np.random.default_rng(0)
    for attempt in range(8):
        resume = (run / "checkpoints" / "last.ckpt").is_file()
        proc = subprocess.Popen(base + (["--resume"] if resume else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_step = _step_of(run)
        # wait for a new checkpoint, then kill after a random extra delay (mid-step, mid-save, anywhere)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and _step_of(run) <= start_step:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.6)))
        if proc.poll() is None and kills < 3:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.wait(timeout=300) == 0
        break
    assert kills >= 2, "the run finished before it could be killed twice; make it longer"
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after kill/resume")


def test_nan_loss_stops_with_step_and_keeps_good_checkpoint(synth_set, tmp_path, capsys):
    run = tmp_path / "diverge"
    argv = ["train", CONFIG, "--data", str(synth_set), "--out", str(run), "--max-steps", "30",
            "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2", "--set", "data.patch_size=[32,32]",
            "--set", "data.batch_size=4", "--set", "train.checkpoint_every=1", "--set", "optim.lr=1e30",
            "--set", "optim.warmup_steps=0", "--set", "loss.name=mse"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training loss is" in err and "at step" in err and "train.grad_clip" in err
    step = int(err.split("at step ")[1].split(".")[0].split()[0])
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] <= step
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert not (run / "model").exists()  # no model folder from a diverged run


def _generator_step_change(synth_set, run, recipe, clip):
    """Size of the generator's update in step 2 (from checkpoints after steps 1 and 2)."""
    argv = ["train", recipe, "--data", str(synth_set), "--out", str(run),
            "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
            "--set", "data.patch_size=[32,32]", "--set", "data.batch_size=2", "--set", "train.checkpoint_every=1",
            "--set", "optim.scheduler=none", "--set", "optim.warmup_steps=0", "--set", "optim.weight_decay=0"]
    if "pix2pix" in recipe:
        argv += ["--set", "discriminator.kwargs.base_channels=4", "--set", "discriminator.kwargs.n_layers=1",
                 "--set", "model.kwargs.decoder_dropout=0.0"]
    if clip:
        argv += ["--set", f"train.grad_clip={clip}"]
    assert main(argv + ["--max-steps", "1"]) == 0
    w1 = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert main(argv + ["--max-steps", "2", "--resume"]) == 0
    w2 = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    params = [k for k in w1 if k.startswith("net.") and w1[k].is_floating_point() and "running_" not in k]
    return sum(float((w2[k] - w1[k]).abs().sum()) for k in params)  # BN statistics move anyway


@pytest.mark.parametrize("recipe", ["translate_unet2d", "pix2pix2d"])
def test_gradient_clipping_shrinks_updates(synth_set, tmp_path, recipe):
    """Adam normalises gradient scale, so clipping to 1e-12 makes its updates ~eps-limited."""
    path = str(Path(CONFIG).parent / f"{recipe}.yaml")
    free = _generator_step_change(synth_set, tmp_path / "free", path, None)
    clipped = _generator_step_change(synth_set, tmp_path / "clipped", path, 1e-12)
    assert free > 0 and clipped < 0.01 * free
