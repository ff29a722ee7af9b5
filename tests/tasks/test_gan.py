"""Adversarial tasks on a toy task: the generator learns, both losses move, CycleGAN cycles."""

import json

import numpy as np
import pytest
import torch

from cytogen.config import recipe_from_dict
from cytogen.data.datasets import read_field
from cytogen.data.manifest import read_manifest
from cytogen.evaluate.pixel import pearson_r
from cytogen.predict.model_folder import load_model_folder
from cytogen.tasks.pool import ImagePool
from cytogen.workflows.predict import predict_image
from cytogen.workflows.train import read_loss_log, train


def _recipe(task, **extra):
    base = {
        "task": task,
        "model": {"name": "unet", "dims": 2, "kwargs": {"depth": 2, "base_channels": 8}},
        "discriminator": {"name": "patchgan", "kwargs": {"n_layers": 2, "base_channels": 8}},
        "data": {"patch_size": [64, 64], "batch_size": 4, "patches_per_epoch": 64, "val_patches": 8},
        "loss": {"name": "l1"},
        "optim": {"name": "adam", "lr": 0.002, "betas": [0.5, 0.999], "scheduler": "none"},
        "train": {"max_steps": 80, "val_every": 40, "seed": 0, "log_every": 5, "precision": "32"},
        "predict": {"tile": [128, 128]},
    }
    for k, v in extra.items():
        base[k] = {**base.get(k, {}), **v}
    return recipe_from_dict(base)


def _val_error(model, manifest):
    errs, rs = [], []
    for e in read_manifest(manifest):
        if e.split != "val":
            continue
        rf = read_field(e)
        pred = predict_image(model, rf.source)
        truth = rf.target.data.astype(np.float64)
        errs.append(np.abs(pred - truth).mean() / truth.std())
        rs.append(pearson_r(pred, truth))
    return float(np.mean(errs)), float(np.median(rs))


def _losses_moved(run, key):
    log = read_loss_log(run)
    v = log[key][np.isfinite(log[key])]
    return v.size >= 4 and np.std(v) > 0 and abs(v[-1] - v[0]) > 1e-4


@pytest.mark.parametrize("adversarial", ["vanilla", "lsgan", "hinge"])
def test_pix2pix_learns_and_both_losses_move(synth_set, tmp_path, adversarial):
    rec = _recipe("gan", gan={"adversarial": adversarial, "recon_weight": 100.0, "soft_labels": adversarial == "vanilla",
                              "soft_label_steps": 40,
                              "r1_gamma": 1.0 if adversarial == "hinge" else 0.0})
    summary = train(rec, synth_set, tmp_path / "run", progress=False)
    assert summary["steps"] == 80  # one step = one G and one D update
    trained = load_model_folder(tmp_path / "run" / "model")
    torch.manual_seed(123)
    init = load_model_folder(tmp_path / "run" / "model")
    for p in init.net.parameters():  # re-initialise: the untrained generator
        torch.nn.init.normal_(p, std=0.05)
    err_t, r_t = _val_error(trained, synth_set)
    err_0, _ = _val_error(init, synth_set)
    assert err_t < 0.7 * err_0 and r_t > 0.5
    assert _losses_moved(tmp_path / "run", "d_loss") and _losses_moved(tmp_path / "run", "g_adv")


def test_gan_with_ema_exports_the_average_and_resumes(synth_set, tmp_path):
    rec = _recipe("gan", gan={"ema_decay": 0.9}, train={"max_steps": 20, "val_every": 10})
    train(rec, synth_set, tmp_path / "run", progress=False)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "ema_state" in ck and len(ck["optimizer_states"]) == 2
    exported = load_model_folder(tmp_path / "run" / "model").net.state_dict()
    ema = {k[len("net_ema."):]: v for k, v in ck["state_dict"].items() if k.startswith("net_ema.")}
    raw = {k[len("net."):]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
    best = torch.load(json.loads((tmp_path / "run" / "train_summary.json").read_text())["best_checkpoint"],
                      weights_only=True)["state_dict"]
    key = next(k for k in exported if k.endswith("weight"))
    torch.testing.assert_close(exported[key], best["net_ema." + key])
    assert not torch.equal(ema[key], raw[key])
    rec.train.max_steps = 26
    assert train(rec, synth_set, tmp_path / "run", resume=True, progress=False)["steps"] == 26


def test_cyclegan_cycle_reconstructs(synth_set, tmp_path):
    rec = _recipe("cyclegan", gan={"adversarial": "lsgan", "cycle_weight": 10.0, "pool_size": 8},
                  train={"max_steps": 80, "export": "last"})
    train(rec, synth_set, tmp_path / "run", progress=False)
    log = read_loss_log(tmp_path / "run")
    cyc = log["val_cycle"][np.isfinite(log["val_cycle"])]
    first_train = log["train_loss"][np.isfinite(log["train_loss"])]
    assert first_train[-3:].mean() < 0.5 * first_train[:3].mean()  # the cycle loss falls
    assert cyc[-1] < 0.2  # A -> B -> A comes back close to A (normalised units)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("net_ba.") for k in ck["state_dict"]) and any(k.startswith("disc_b.") for k in ck["state_dict"])


def test_image_pool_mixes_history():
    pool = ImagePool(size=4, seed=0)
    first = pool.query(torch.zeros(4, 1, 2, 2))
    assert torch.equal(first, torch.zeros(4, 1, 2, 2))  # filling up returns the new images
    mixed = torch.cat([pool.query(torch.ones(4, 1, 2, 2)) for _ in range(10)])
    assert 0 < (mixed.flatten(1)[:, 0] == 0).sum() < 40  # some old images come back, not all
    assert torch.equal(ImagePool(0).query(torch.ones(2, 1, 1, 1)), torch.ones(2, 1, 1, 1))


def test_image_pool_state_round_trip_continues_identically():
    """A pool restored from its state (as from a checkpoint) returns what the original does."""
    pool = ImagePool(size=3, seed=5)
    for i in range(3):
        pool.query(torch.full((2, 1, 2, 2), float(i)))
    clone = ImagePool(size=3, seed=99)
    clone.load_state_dict(pool.state_dict())
    for i in range(6):
        batch = torch.full((2, 1, 2, 2), 10.0 + i)
        assert torch.equal(pool.query(batch), clone.query(batch))
    assert len(clone.images) == 3
