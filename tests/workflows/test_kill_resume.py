"""A training run killed with SIGKILL at several moments resumes to the same weights."""

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cytogen.cli import main
from cytogen.runtime.settings import _cpu_bf16_ok

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG = str(CONFIGS / "translate_unet2d.yaml")
TINY = ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "data.patch_size=[32,32]",
        "data.patches_per_epoch=16", "data.batch_size=4", "data.val_patches=2", "train.val_every=7",
        "train.checkpoint_every=3", "train.export=last", "optim.warmup_steps=4"]
# Adversarial recipes keep what makes resuming hard: pix2pix's decoder dropout (0.5), soft
# noisy labels (global RNG, position from the step counter), an EMA; CycleGAN's image pools
# (small, so they fill and start swapping) and both generators/discriminators.
ADVERSARIAL = ["discriminator.kwargs.base_channels=4", "discriminator.kwargs.n_layers=1", "data.batch_size=2"]
EXTRA = {
    "translate_unet2d": [],
    "pix2pix2d": ADVERSARIAL + ["gan.soft_labels=true", "gan.soft_label_steps=12", "gan.ema_decay=0.9"],
    "cyclegan2d": ADVERSARIAL + ["gan.pool_size=3", "model.kwargs.base_channels=2"],
}
STEPS = {"translate_unet2d": 18, "pix2pix2d": 18, "cyclegan2d": 15}


def _argv(recipe: str) -> list[str]:
    sets = TINY + EXTRA[recipe]
    return [str(CONFIGS / f"{recipe}.yaml"), "--max-steps", str(STEPS[recipe]), "--precision", "32",
            *[x for kv in sets for x in ("--set", kv)]]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _step_of(run: Path) -> int:
    try:
        return int(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])
    except Exception:
        return -1


def _stamp(path: Path) -> tuple[int, int] | None:
    """Identity of the checkpoint file now (a new save renames a new inode into place)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _kill_after_checkpoints(proc: subprocess.Popen, ckpt: Path, n: int, rng: np.random.Generator,
                            timeout: float = 240.0) -> bool:
    """Wait until ``ckpt`` has been rewritten ``n`` times, then SIGKILL ``proc`` after a random
    delay of up to half the interval between its last two saves (so mid-step, mid-validation
    or mid-save alike, on a fast machine as on a slow one). False if it finished first."""
    seen, times = _stamp(ckpt), []
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and len(times) < n:
        now = _stamp(ckpt)
        if now != seen and now is not None:
            seen = now
            times.append(time.time())
        time.sleep(0.002)
    if proc.poll() is not None:
        return False
    interval = times[-1] - times[-2] if len(times) >= 2 else 0.05
    time.sleep(float(rng.uniform(0.0, 0.5 * interval)))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["translate_unet2d", "pix2pix2d", "cyclegan2d"])
def test_sigkill_at_several_points_then_resume_gives_identical_weights(synth_set, tmp_path, recipe):
    ref = tmp_path / "ref"
    assert main(["train", *_argv(recipe), "--data", str(synth_set), "--out", str(ref)]) == 0

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "cytogen.cli", "train", *_argv(recipe), "--data", str(synth_set),
            "--out", str(run)]
    ckpt = run / "checkpoints" / "last.ckpt"
    rng = np.random.default_rng(zlib.crc32(recipe.encode()))
    resumed_from = []
    for _ in range(2):
        if ckpt.is_file():
            resumed_from.append(_step_of(run))
        proc = subprocess.Popen(base + (["--resume"] if ckpt.is_file() else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # 2 saves on the first start (so the interval is known), then 1 or 2 more per restart
        n = 2 if not resumed_from else int(rng.integers(1, 3))
        assert _kill_after_checkpoints(proc, ckpt, n, rng), "the run ended before it could be killed"
    resumed_from.append(_step_of(run))
    assert main(["train", *_argv(recipe), "--data", str(synth_set), "--out", str(run), "--resume"]) == 0
    # two kills, each after progress: the test cannot pass without resuming mid-run twice
    assert len(resumed_from) == 2 and 0 < resumed_from[0] < resumed_from[1] < STEPS[recipe]
    assert _step_of(run) == STEPS[recipe]
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after kill/resume")
    ca = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    cb = torch.load(ckpt, weights_only=True)
    for key in ("ema_state", "image_pools"):
        assert (key in ca) == (key in cb)
    if "image_pools" in ca:
        for name in ca["image_pools"]:
            torch.testing.assert_close(ca["image_pools"][name]["images"], cb["image_pools"][name]["images"],
                                       rtol=0, atol=0)


def test_nan_loss_stops_with_step_and_keeps_good_checkpoint(synth_set, tmp_path, capsys):
    run = tmp_path / "diverge"
    argv = ["train", CONFIG, "--data", str(synth_set), "--out", str(run), "--max-steps", "30", "--precision", "32",
            "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2", "--set", "data.patch_size=[32,32]",
            "--set", "data.batch_size=4", "--set", "train.checkpoint_every=1", "--set", "optim.lr=1e30",
            "--set", "optim.warmup_steps=0", "--set", "loss.name=mse"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("training loss is" in err or "gradient norm is" in err) and "at step" in err and "train.grad_clip" in err
    step = int(err.split("at step ")[1].split(".")[0].split()[0])
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] <= step
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert not (run / "model").exists()  # no model folder from a diverged run


def _generator_step_change(synth_set, run, recipe, clip, precision):
    """Size of the generator's update in step 2 (from checkpoints after steps 1 and 2)."""
    argv = ["train", recipe, "--data", str(synth_set), "--out", str(run), "--precision", precision,
            "--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2",
            "--set", "data.patch_size=[32,32]", "--set", "data.batch_size=2", "--set", "train.checkpoint_every=1",
            "--set", "data.val_patches=2", "--set", "data.patches_per_epoch=8",
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


BF16 = pytest.mark.skipif(not _cpu_bf16_ok(), reason="this CPU has no bf16 support")


@pytest.mark.parametrize("recipe, precision", [
    ("translate_unet2d", "32"), pytest.param("translate_unet2d", "bf16-mixed", marks=BF16),
    ("pix2pix2d", "32"), pytest.param("pix2pix2d", "bf16-mixed", marks=BF16)])
def test_gradient_clipping_shrinks_updates(synth_set, tmp_path, recipe, precision):
    """Adam normalises gradient scale, so clipping to 1e-12 makes its updates ~eps-limited.

    The precision is forced (never the probe's choice), and the fast path's fused optimiser is
    on: Lightning's own clipping refuses a fused AdamW under mixed precision.
    """
    path = str(CONFIGS / f"{recipe}.yaml")
    free = _generator_step_change(synth_set, tmp_path / "free", path, None, precision)
    clipped = _generator_step_change(synth_set, tmp_path / "clipped", path, 1e-12, precision)
    runtime = json.loads((tmp_path / "clipped" / "runtime.json").read_text())
    assert runtime["precision"] == precision and runtime["fast"]  # fused optimiser path
    assert free > 0 and clipped < 0.01 * free
