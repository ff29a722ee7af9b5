"""Statistical Cell tasks, cell batches, the ``vae`` recipe section and the statcell model folder
(unit level; training end to end is in tests/workflows/test_train_cells.py)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from cytogen.config import Recipe, recipe_from_dict
from cytogen.data.cell_dataset import CellDataset, ShuffledEpochs
from cytogen.data.cellset import read_cellset, write_cellset
from cytogen.errors import CytogenError
from cytogen.losses.elbo import beta_elbo_loss, kl_per_dim, recon_sse
from cytogen.predict.model_folder import load_model_folder, load_statcell_folder, save_statcell_folder
from cytogen.tasks import TASKS
from cytogen.workflows.train_support import check_task_uses

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (16, 16)
KW = {"dims": 2, "size": list(SIZE), "latent_dim": 3, "widths": [4, 8]}
OPTIM = {"name": "adam", "lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 0.0, "scheduler": "none"}


def _cellset(tmp_path, with_target=True, n=6):
    rng = np.random.default_rng(0)
    images = rng.random((n, 3 if with_target else 2, *SIZE)).astype(np.float32)
    rows = [{"cell_id": f"f{i % 2}/{i}", "field": f"f{i % 2}", "structure": ["a", "b"][i % 2], "split": "train"}
            for i in range(n)]
    meta = {"dims": 2, "size": list(SIZE), "channels": ["cell", "dna", "target"][:images.shape[1]],
            "reference_channels": [0, 1], "target_channel": 2 if with_target else None}
    return read_cellset(write_cellset(tmp_path / "cells", images, rows, meta))


def _task(name, beta=0.5, samples=4):
    kw = dict(KW, in_channels=2) if name == "statcell_reference" else dict(KW, in_channels=1, ref_channels=2,
                                                                            n_classes=2)
    return TASKS.build(name, model={"name": name, "kwargs": kw}, optim=OPTIM,
                       vae={"beta": beta, "elbo_samples": samples}, max_steps=10)


def _batch(cells, idx=(0, 1, 2, 3)):
    ds = CellDataset(cells, list(idx))
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_cell_dataset_items_are_the_crops(tmp_path):
    cells = _cellset(tmp_path)
    ds = CellDataset(cells, [4, 1])
    item = ds[0]
    crop = np.asarray(cells.images[4], dtype=np.float32)
    assert item["reference"].dtype == torch.float32 and item["reference"].shape == (2, *SIZE)
    np.testing.assert_array_equal(item["reference"].numpy(), crop[:2])
    np.testing.assert_array_equal(item["target"].numpy(), crop[2:3])
    assert item["structure"].dtype == torch.int64 and int(item["structure"]) == cells.structure_index()[4] == 0
    assert int(ds[1]["index"]) == 1 and int(ds[1]["structure"]) == 1
    # a worker process gets the dataset without the array and re-opens the memory map
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._images is None
    np.testing.assert_array_equal(clone[0]["reference"].numpy(), item["reference"].numpy())
    ref_only = CellDataset(_cellset(tmp_path / "r", with_target=False), [0])
    assert torch.equal(ref_only[0]["target"], torch.zeros(1, *SIZE))


def test_shuffled_epochs_visit_every_cell_once_in_a_seeded_order():
    ds = ShuffledEpochs(list(range(10)), seed=3)
    epochs = [[ds[e * 10 + i] for i in range(10)] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert [ShuffledEpochs(list(range(10)), seed=3)[10 + i] for i in range(10)] == epochs[1]
    assert [ShuffledEpochs(list(range(10)), seed=4)[i] for i in range(10)] != epochs[0]
    assert [ShuffledEpochs(list(range(10)), shuffle=False)[i] for i in range(10)] == list(range(10))


@pytest.mark.parametrize("name", ["statcell_reference", "statcell_target"])
def test_training_loss_is_the_beta_elbo_of_one_sample(tmp_path, name):
    cells = _cellset(tmp_path)
    batch = _batch(cells)
    for beta in (0.0, 0.5, 1.0):
        task = _task(name, beta)
        task.log = lambda *a, **k: None
        twin = copy.deepcopy(task)  # a training forward moves BatchNorm and spectral-norm state
        torch.manual_seed(7)
        loss = task.training_step(batch, 0)
        torch.manual_seed(7)
        x_hat, mu, logvar = twin(batch)
        x = batch["reference"] if name == "statcell_reference" else batch["target"]
        expect = 2 * ((1 - beta) * recon_sse(x_hat, x) + beta * kl_per_dim(mu, logvar).sum(1)).mean()
        torch.testing.assert_close(loss, expect)
        torch.testing.assert_close(loss, beta_elbo_loss(recon_sse(x_hat, x), kl_per_dim(mu, logvar), beta))
    assert task.data_kind == "cells" and "vae" in task.uses


def test_validation_elbo_is_reproducible_and_leaves_training_rng_alone(tmp_path):
    task = _task("statcell_target").eval()
    batch = _batch(_cellset(tmp_path))
    torch.manual_seed(1)
    a = task.elbo(batch, 0)
    after = torch.rand(3)
    torch.manual_seed(1)
    b = task.elbo(batch, 0)
    torch.testing.assert_close(torch.rand(3), after)  # the draws came from a forked generator
    torch.testing.assert_close(a["elbo"], b["elbo"], rtol=0, atol=0)
    assert a["kl"].shape == (4, 3)
    torch.testing.assert_close(a["elbo"], -(a["recon"] + a["kl"].sum(1)))
    c = task.elbo(batch, 1)  # another batch index draws other samples
    assert not torch.equal(c["recon"], a["recon"])


def test_task_refuses_another_models_name():
    with pytest.raises(CytogenError, match="set model.name: statcell_reference"):
        TASKS.build("statcell_reference", model={"name": "statcell_target", "kwargs": {}}, optim=OPTIM,
                    vae={"beta": 0.5, "elbo_samples": 2}, max_steps=1)


@pytest.mark.parametrize("section, message", [
    ({"vae": {"beta": 1.5}}, r"vae.beta is 1.5; it must be in \[0, 1\]"),
    ({"vae": {"beta": -0.1}}, r"vae.beta is -0.1"),
    ({"vae": {"elbo_samples": 0}}, "vae.elbo_samples is 0"),
    ({"vae": {"betta": 0.5}}, "unknown key"),
])
def test_bad_vae_section_is_refused(section, message):
    with pytest.raises(CytogenError, match=message):
        recipe_from_dict(section, "r.yaml")
    assert recipe_from_dict({"vae": {"beta": 0.0}}).vae.beta == 0.0 and Recipe().vae.elbo_samples == 10


@pytest.mark.parametrize("task, setting, refused", [
    ("statcell_reference", {"gan": {"adv_weight": 2.0}}, "gan.adv_weight"),
    ("statcell_target", {"discriminator": {"name": "stylegan2"}}, "discriminator.name"),
    ("statcell_reference", {"loss": {"name": "mse"}}, "loss.name"),
    ("statcell_reference", {"loss": {"mask": "manifest"}}, "loss.mask"),  # no masks on cells
    ("translate", {"vae": {"beta": 0.3}}, "vae.beta"),
    ("gan", {"vae": {"elbo_samples": 3}}, "vae.elbo_samples"),
])
def test_settings_a_task_does_not_use_are_refused(task, setting, refused):
    rec = recipe_from_dict({"task": task, **setting})
    with pytest.raises(CytogenError, match=f"does not use {refused}"):
        check_task_uses(rec, TASKS.get(task), "r.yaml")
    check_task_uses(recipe_from_dict({"task": task, "vae": {"beta": 0.2}} if task.startswith("statcell")
                                     else {"task": task, "loss": {"mask": "manifest"}}), TASKS.get(task))


def _save(folder, kind="statcell_target", seed=0):
    torch.manual_seed(seed)
    net = _task(kind).net.eval()
    save_statcell_folder(folder, net, kind=kind, architecture=net.architecture, structures=["a", "b"],
                         channels=["cell", "dna", "target"], crop_size=list(SIZE), pixel_size_um=[0.5, 0.5],
                         beta=0.5, recipe={"task": kind}, extra={"kl_per_dim": [0.1, 0.2, 0.3]})
    return net


def test_statcell_folder_round_trip_gives_identical_outputs(tmp_path):
    net = _save(tmp_path / "m")
    loaded = load_statcell_folder(tmp_path / "m", kind="statcell_target")
    assert (loaded.kind, loaded.structures, loaded.latent_dim, loaded.beta) == ("statcell_target", ["a", "b"], 3, 0.5)
    assert loaded.meta["kl_per_dim"] == [0.1, 0.2, 0.3] and loaded.meta["format"] == "cytogen-model"
    assert not loaded.net.training
    z, xr, t = torch.randn(2, 3), torch.rand(2, 2, *SIZE), torch.tensor([0, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded.net.decode(z, xr, t), net.decode(z, xr, t), rtol=0, atol=0)
        torch.testing.assert_close(loaded.net.encode(torch.rand(2, 1, *SIZE), xr, t)[0].shape, torch.Size([2, 3]))


def test_statcell_folder_refusals(tmp_path):
    _save(tmp_path / "t")
    with pytest.raises(CytogenError, match="statcell_target model, but a statcell_reference model is needed"):
        load_statcell_folder(tmp_path / "t", kind="statcell_reference")
    with pytest.raises(CytogenError, match="cytogen statcell"):
        load_model_folder(tmp_path / "t")
    with pytest.raises(CytogenError, match="not a cytogen model folder"):
        load_statcell_folder(tmp_path / "nothing")
    with pytest.raises(CytogenError, match="kind"):
        save_statcell_folder(tmp_path / "x", torch.nn.Linear(1, 1), kind="unet", architecture={"name": "u", "kwargs": {}},
                             structures=[], channels=[], crop_size=[1], pixel_size_um=None, beta=0.5, recipe=None)
