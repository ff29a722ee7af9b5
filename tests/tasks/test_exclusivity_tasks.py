"""The exclusivity weight takes effect in the translate (U-Net) and GAN (pix2pix / Vox2Vox-RU) tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cytogen.config import recipe_from_dict
from cytogen.data.manifest import FieldEntry, write_manifest
from cytogen.io.images import Image, write_image
from cytogen.losses.exclusivity import exclusivity_loss
from cytogen.tasks.translate import TranslateTask
from cytogen.workflows.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(task: str, p: float):
    gan = {"discriminator": {"name": "patchgan", "kwargs": {"n_layers": 1, "base_channels": 4}}} if task == "gan" else {}
    return recipe_from_dict({
        "task": task, **gan,
        "model": {"name": "unet", "dims": 2, "kwargs": {"depth": 2, "base_channels": 4}},
        "data": {"patch_size": [32, 32], "batch_size": 2, "patches_per_epoch": 8, "val_patches": 2,
                 "num_workers": 0},
        "loss": {"name": "mse", "exclusivity_weight": p},
        "optim": {"name": "adam", "lr": 0.01, "scheduler": "none"},
        "train": {"max_steps": 3, "val_every": 1000, "precision": "32", "seed": 0},
    })


@pytest.fixture(scope="module")
def with_reference(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("excl_task")
    rng = np.random.default_rng(0)
    entries = []
    for i, split in enumerate(["train", "val"]):
        for kind in ("src", "tgt"):
            write_image(root / f"{kind}{i}.tif", Image(rng.random((1, 32, 32), dtype=np.float32), "CYX"))
        write_image(root / f"ref{i}.tif", Image(rng.random((1, 32, 32), dtype=np.float32), "CYX"))
        entries.append(FieldEntry(f"f{i}", [str(root / f"src{i}.tif")], [str(root / f"tgt{i}.tif")], split=split,
                                  reference=str(root / f"ref{i}.tif")))
    return write_manifest(root / "m.csv", entries)


@pytest.mark.parametrize("task", ["translate", "gan"])
def test_weight_changes_training_and_zero_weight_does_not(task, with_reference, tmp_path):
    def weights(p: float, run: str) -> dict[str, torch.Tensor]:
        train(_recipe(task, p), with_reference, tmp_path / run, progress=False)
        return load_file(str(tmp_path / run / "model" / "weights.safetensors"))

    w0, w0b, w5 = weights(0.0, "a"), weights(0.0, "b"), weights(5.0, "c")
    same = all(torch.equal(w0[k], w0b[k]) for k in w0)
    differs = any(not torch.allclose(w0[k], w5[k]) for k in w0)
    assert same and differs


def test_translate_loss_is_recon_plus_p_exclusivity():
    model = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
             "kwargs": {"depth": 2, "base_channels": 4}}
    optim = {"name": "adam", "lr": 1e-3}
    t0 = TranslateTask(model, {"name": "mse", "exclusivity_weight": 0.0}, optim)
    t2 = TranslateTask(model, {"name": "mse", "exclusivity_weight": 2.0, "exclusivity_margin": 0.5}, optim)
    pred, tgt, ref = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    batch = {"target": tgt, "reference": ref}
    recon0, total0 = t0._loss(pred, batch)
    recon2, total2 = t2._loss(pred, batch)
    assert total0 is recon0
    assert total2.item() == pytest.approx(recon2.item() + 2.0 * exclusivity_loss(pred, ref, 0.5).item())
