"""The unsupervised cell segmentation task (paper 004): it learns to segment synthetic cells from
the consistency loss alone, its augmentation is undone exactly and drawn per step, validation is
the unaugmented loss, and it refuses networks it cannot train."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cytogen.data.marker_patches import AreaBatches, MarkerField, extract_patches, random_codes
from cytogen.data.normalize import Normalizer
from cytogen.errors import CytogenError
from cytogen.losses.consistency import consistency_loss, consistency_terms
from cytogen.segment.assemble import segment_with_patches
from cytogen.segment.markers import markers_from_labels
from cytogen.synth.cells import synth_field
from cytogen.tasks import TASKS
from cytogen.tasks.cellseg import CellSegTask, step_generator

pytestmark = pytest.mark.usefixtures("one_thread")

K = 32
SIGMA = 7.5
OPTIM = {"name": "adam", "lr": 0.005, "betas": [0.9, 0.999], "weight_decay": 0.0, "scheduler": "none"}
CELLSEG = {"lam": 3.32, "beta": 15.0, "log_base": 10.0}


def _task(augment=True, seed=0, **kw):
    model = {"name": "unet", "dims": 2, "in_channels": 2, "out_channels": 1,
             "kwargs": {"depth": 2, "base_channels": 8, "norm": "batch", **kw}}
    return TASKS.build("cellseg_consistency", model=model, optim=OPTIM, cellseg=CELLSEG, max_steps=10,
                       augment=augment, seed=seed)


@pytest.fixture(scope="module")
def field():
    """A 96 x 96 field of 10 cells at 2 um per pixel (cells 10-22 px long): the actin channel,
    markers at the true nuclei (label order, so marker i is cell i + 1), the true foreground."""
    f = synth_field((96, 96), pixel_size_um=2.0, n_cells=10, seed=0)
    image = Normalizer("percentile").normalize(f.image[:1])
    return f, image, markers_from_labels(f.nuclei)


def _miou(truth, labels, n):
    """Mean IoU of cell i + 1 of the truth with label i + 1 of the segmentation (marker order)."""
    ious = []
    for i in range(1, n + 1):
        t, p = truth == i, labels == i
        ious.append((t & p).sum() / (t | p).sum())
    return float(np.mean(ious))


def _segment(task, image, markers):
    """Integrated labels of the network in eval mode (train mode restored afterwards)."""
    mode = task.training
    task.eval()
    with torch.no_grad():
        labels = segment_with_patches(lambda p: task.probabilities(torch.from_numpy(p)).numpy(),
                                      image, markers, (K, K), SIGMA)
    task.train(mode)
    return labels


def test_learns_to_segment_cells_without_labels(field, tmp_path):
    """300 steps of the real training_step (Lightning loop, random flips/transposes): the
    integrated segmentation matches the true cells far better than the Gaussian disks alone
    (each marker's disk > 0.5, integrated the same way) and than the untrained network."""
    f, image, markers = field
    n = len(markers)
    torch.manual_seed(0)
    task = _task()
    untrained = _miou(f.cells, _segment(task, image, markers), n)
    disk = _miou(f.cells, segment_with_patches(lambda p: p[:, -1], image, markers, (K, K), SIGMA), n)
    ds = AreaBatches([MarkerField("f", image, markers, f.cells > 0)], size=(K, K), area=640, sigma_px=SIGMA,
                     length=300, seed=0)
    trainer = L.Trainer(max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(task, DataLoader(ds, batch_size=None))
    assert task.patches_seen == 300 * n
    learned = _miou(f.cells, _segment(task, image, markers), n)
    assert untrained < 0.2 and 0.4 < disk < 0.5  # measured: 0.07 and 0.46
    assert learned > disk + 0.25 and learned > 0.7, (learned, disk, untrained)  # measured: 0.84


def test_augmentation_is_undone_on_the_output(field):
    """probabilities(x, codes) = the network on each transformed patch, transformed back: for a
    transpose (code 4) that is net(x^T)^T; and no codes is the network on x itself."""
    _, image, markers = field
    x = torch.from_numpy(extract_patches(image, markers[:4], (K, K), SIGMA)[0])
    task = _task().eval()
    with torch.no_grad():
        plain = torch.sigmoid(task.net(x))[:, 0]
        torch.testing.assert_close(task.probabilities(x), plain)
        t = task.probabilities(x, torch.full((4,), 4))
        torch.testing.assert_close(t, torch.sigmoid(task.net(x.transpose(-2, -1)))[:, 0].transpose(-2, -1))
        flip = task.probabilities(x, torch.full((4,), 3))  # flip y and x
        torch.testing.assert_close(flip, torch.sigmoid(task.net(x.flip(-2, -1)))[:, 0].flip(-2, -1))
        assert not torch.allclose(t, plain)  # the untrained net is not transpose-invariant: the test bites


def test_codes_depend_on_seed_and_step_only():
    a = random_codes(64, step_generator(0, 5))
    assert torch.equal(a, random_codes(64, step_generator(0, 5)))
    assert not torch.equal(a, random_codes(64, step_generator(0, 6)))
    assert not torch.equal(a, random_codes(64, step_generator(1, 5)))
    assert not torch.equal(a, random_codes(64, step_generator(0, 5, rank=1)))
    assert set(a.tolist()) <= set(range(8)) and len(set(a.tolist())) > 4
    before = torch.random.get_rng_state()
    step_generator(3, 9)
    assert torch.equal(before, torch.random.get_rng_state())  # the global stream is untouched


def test_training_step_draws_codes_per_step_and_augment_false_turns_them_off(field):
    _, image, markers = field
    task = _task(seed=4)
    x = torch.from_numpy(extract_patches(image, markers, (K, K), SIGMA)[0])
    codes = task._codes(x)
    assert torch.equal(codes, random_codes(len(x), step_generator(4, 0)))
    assert _task(augment=False)._codes(x) is None


def test_validation_loss_is_eq1_of_the_unaugmented_probabilities(field):
    _, image, markers = field
    ds = AreaBatches([MarkerField("f", image, markers, np.ones(image.shape[1:], bool))], size=(K, K),
                     area=48, sigma_px=SIGMA, length=4, seed=1)
    batch = ds[0]
    task = _task().eval()
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        task.validation_step(batch, 0)
        y = torch.sigmoid(task.net(batch["patches"]))[:, 0]
        want = consistency_loss(y, batch["offsets"], batch["mask"], lam=3.32, beta=15.0)
        terms = consistency_terms(y, batch["offsets"], batch["mask"])
    n = len(batch["patches"])
    assert logged["val_loss"] == pytest.approx(float(want), rel=1e-6)
    assert logged["val_area"] == pytest.approx(float(terms["area"]) / n, rel=1e-6)
    assert logged["val_overlap"] == pytest.approx(float(terms["overlap"]) / n, rel=1e-6)
    assert logged["val_outside"] == pytest.approx(float(terms["outside"]) / n, rel=1e-6)  # beyond the image
    eq1 = -logged["val_area"] - 3.32 * logged["val_overlap"] + 15.0 * logged["val_outside"]
    assert logged["val_loss"] == pytest.approx(eq1, rel=1e-5)
    task.train()  # training_step: the same loss on flipped/transposed patches, off with augment=False
    with torch.no_grad():
        aug = float(task.training_step(batch, 0))
        task.hparams.augment = False
        plain = float(task.training_step(batch, 0))
        y = torch.sigmoid(task.net(batch["patches"]))[:, 0]
        want = float(consistency_loss(y, batch["offsets"], batch["mask"], lam=3.32, beta=15.0))
    assert plain == pytest.approx(want, rel=1e-6) and abs(aug - plain) > 1e-4 * abs(plain)


@pytest.mark.parametrize("change, message", [
    ({"out_channels": 2}, "out_channels"),
    ({"in_channels": 1}, "in_channels"),
    ({"kwargs": {"final_activation": "sigmoid"}}, "sigmoid itself"),
])
def test_refuses_networks_it_cannot_train(change, message):
    model = {"name": "unet", "dims": 2, "in_channels": 2, "out_channels": 1, "kwargs": {"depth": 1}}
    model.update(change)
    with pytest.raises(CytogenError, match=message):
        CellSegTask(model=model, optim=OPTIM, cellseg=CELLSEG)
    with pytest.raises(CytogenError, match="cellseg.beta"):
        CellSegTask(model={**model, **{"in_channels": 2, "out_channels": 1, "kwargs": {}}}, optim=OPTIM,
                    cellseg={**CELLSEG, "beta": -1.0})


def test_declares_what_the_workflow_needs():
    assert TASKS.get("cellseg_consistency") is CellSegTask
    assert CellSegTask.data_kind == "markers" and CellSegTask.uses == frozenset({"cellseg"})
    assert CellSegTask.generator_modules == ("net",)
