"""``cytogen train`` with the Statistical Cell recipes on a CELLS folder: export, learning, exact
resume, validation hold-out and the refusals (tiny models, 32 x 32 crops)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cytogen.cli import main
from cytogen.data.cellset import read_cellset, write_cellset
from cytogen.errors import CytogenError
from cytogen.predict.model_folder import load_model_folder, load_statcell_folder
from cytogen.workflows.train import read_loss_log, train
from cytogen.workflows.train_cells import split_cells

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STRUCTURES = ("blank", "membrane_copy", "nucleus_copy")
TINY = ["data.patch_size=[32,32]", "model.kwargs.widths=[4,8]", "model.kwargs.latent_dim=4", "data.batch_size=8",
        "train.val_every=4", "train.checkpoint_every=1", "train.precision=32", "train.max_time_min=null",
        "optim.lr=0.003"]


@pytest.fixture(autouse=True)
def _one_process_cpu(monkeypatch):
    """The run's thread count follows the CPUs it may use: one here (a shared CI machine)."""
    monkeypatch.setattr("cytogen.runtime.settings._cpus", lambda: 1)


def make_cells(out: Path, n: int = 48, size=(32, 32), seed: int = 0, n_fields: int = 6, val_fields=(5,),
               with_target: bool = True) -> Path:
    """Ellipse cells (random axes) with a disk nucleus (random radius and brightness) at the centre;
    the target is blank, the membrane (cell rim) or the nucleus by structure."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in size], indexing="ij")
    images, rows = [], []
    for i in range(n):
        axes = [rng.uniform(0.25, 0.45) * s for s in size]
        r2 = sum((g / a) ** 2 for g, a in zip(grids, axes))
        cell = (r2 <= 1).astype(np.float32)
        nucleus = (sum(g ** 2 for g in grids) <= (rng.uniform(0.3, 0.6) * min(axes)) ** 2).astype(np.float32)
        structure = STRUCTURES[i % len(STRUCTURES)]
        target = {"blank": 0 * cell, "membrane_copy": cell * (r2 > 0.6), "nucleus_copy": 0.8 * nucleus}[structure]
        images.append(np.stack([cell, nucleus * rng.uniform(0.6, 1.0)] + ([target] if with_target else [])))
        field = i % n_fields
        rows.append({"cell_id": f"f{field}/{i}", "field": f"f{field}", "cell_label": i, "structure": structure,
                     "split": "val" if field in val_fields else "train"})
    meta = {"dims": len(size), "size": list(size), "channels": ["cell", "dna", "target"][:len(images[0])],
            "reference_channels": [0, 1], "target_channel": 2 if with_target else None,
            "pixel_size_um": [0.5] * len(size)}
    return write_cellset(out, np.stack(images), rows, meta) / "cells.csv"


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return make_cells(tmp_path_factory.mktemp("cells") / "CELLS")


def _recipe(kind: str, dims: int = 2) -> Path:
    return CONFIGS / f"statcell_{kind}{dims}d.yaml"


@pytest.fixture(scope="module")
def trained(cells, tmp_path_factory):
    """Reference and target models, 24 steps each (about 5 epochs of 40 training cells)."""
    mp = pytest.MonkeyPatch()
    mp.setattr("cytogen.runtime.settings._cpus", lambda: 1)
    root = tmp_path_factory.mktemp("runs")
    runs = {k: (root / k, train(_recipe(k), cells, root / k, overrides=TINY, max_steps=24, progress=False))
            for k in ("reference", "target")}
    mp.undo()
    return runs


@pytest.mark.parametrize("kind", ["reference", "target"])
def test_training_exports_a_statcell_model_that_reloads_identically(trained, cells, kind):
    run, summary = trained[kind]
    assert summary["steps"] == 24 and summary["n_train_cells"] == 40 and summary["n_val_cells"] == 8
    assert (run / "loss.png").is_file() and (run / "train_summary.json").is_file()
    log = read_loss_log(run)
    for key in ("train_loss", "train_recon", "train_kl", "val_elbo", "val_recon", "val_kl"):
        assert np.isfinite(log[key]).any(), key
    val = log["val_elbo"][np.isfinite(log["val_elbo"])]
    assert summary["best_val_elbo"] == pytest.approx(val.max(), rel=1e-6)  # best = highest ELBO
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["kind"] == f"statcell_{kind}" and meta["structures"] == sorted(STRUCTURES)
    assert meta["crop_size"] == [32, 32] and meta["pixel_size_um"] == [0.5, 0.5] and meta["beta"] == 0.5
    kwargs = meta["architecture"]["kwargs"]
    assert {"in_channels", "dims", "size", "latent_dim", "widths"} <= set(kwargs)
    if kind == "target":
        assert (kwargs["in_channels"], kwargs["ref_channels"], kwargs["n_classes"]) == (1, 2, 3)
    assert len(meta["kl_per_dim"]) == 4 and all(k >= 0 for k in meta["kl_per_dim"])
    # the exported weights are the best checkpoint's, and reload to the same outputs
    best = torch.load(summary["best_checkpoint"], weights_only=True)["state_dict"]
    saved = load_file(str(run / "model" / "weights.safetensors"))
    for k, v in saved.items():
        torch.testing.assert_close(v, best[f"net.{k}"].to(v.dtype), rtol=0, atol=0, msg=k)
    loaded = load_statcell_folder(run / "model", kind=f"statcell_{kind}")
    again = load_statcell_folder(run / "model")
    cs = read_cellset(cells)
    x = torch.from_numpy(np.asarray(cs.images[:4], dtype=np.float32))
    t = torch.from_numpy(cs.structure_index()[:4])
    with torch.no_grad():
        if kind == "reference":
            a, b = loaded.net.encode(x[:, :2])[0], again.net.encode(x[:, :2])[0]
        else:
            a, b = loaded.net.decode(torch.ones(4, 4), x[:, :2], t), again.net.decode(torch.ones(4, 4), x[:, :2], t)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(CytogenError, match="cytogen statcell"):
        load_model_folder(run / "model")


def test_validation_elbo_improves_with_training(trained):
    for kind in ("reference", "target"):
        log = read_loss_log(trained[kind][0])
        val = log["val_elbo"][np.isfinite(log["val_elbo"])]
        assert len(val) == 6
        assert val[-1] > val[0] + 0.1 * abs(val[0]), (kind, val)  # a learnable toy set


def test_resume_continues_exactly(cells, tmp_path):
    """Stopped mid-epoch (step 7 of 5-step epochs), resumed to 14: the same weights, best
    checkpoint and exported model as one uninterrupted run."""
    sets = TINY + ["train.export=best"]
    whole = train(_recipe("reference"), cells, tmp_path / "whole", overrides=sets, max_steps=14, progress=False)
    train(_recipe("reference"), cells, tmp_path / "part", overrides=sets, max_steps=7, progress=False)
    assert main(["train", str(_recipe("reference")), "--data", str(cells), "--out", str(tmp_path / "part"),
                 "--resume", "--max-steps", "14", *[a for kv in sets for a in ("--set", kv)]]) == 0
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 14
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0, msg=k)
    wa = load_file(str(tmp_path / "whole" / "model" / "weights.safetensors"))
    wb = load_file(str(tmp_path / "part" / "model" / "weights.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    mb = json.loads((tmp_path / "part" / "model" / "model.json").read_text())
    assert mb["best_val_elbo"] == whole["best_val_elbo"]


def test_without_val_cells_whole_fields_are_held_out(tmp_path):
    cells = read_cellset(make_cells(tmp_path / "c", n=60, n_fields=10, val_fields=()).parent)
    tr, va, words, fields = split_cells(cells, seed=1, source="c")
    assert len(va) == 6 and len(tr) == 54 and "held out 6 of 60 training cells" in words  # 10 % = one field
    field = [r["field"] for r in cells.rows]
    assert {field[i] for i in va} == set(fields) and not {field[i] for i in tr} & set(fields)
    assert split_cells(cells, seed=1, source="c")[1].tolist() == va.tolist()
    assert len({tuple(split_cells(cells, seed=s, source="c")[3]) for s in range(6)}) > 1
    one = read_cellset(make_cells(tmp_path / "one", n=12, n_fields=1, val_fields=()).parent)
    with pytest.raises(CytogenError, match="one field"):
        split_cells(one, seed=0, source="c")


def test_3d_reference_trains(tmp_path):
    cells = make_cells(tmp_path / "c3", n=12, size=(8, 16, 16), n_fields=4, val_fields=(3,))
    s = train(_recipe("reference", 3), cells, tmp_path / "run",
              overrides=["data.patch_size=[8,16,16]", "model.kwargs.widths=[4,8]", "model.kwargs.latent_dim=3",
                         "data.batch_size=3", "train.val_every=5", "train.precision=32"], max_steps=5, progress=False)
    assert s["steps"] == 5 and np.isfinite(s["best_val_elbo"])
    assert load_statcell_folder(tmp_path / "run" / "model").dims == 3


@pytest.mark.parametrize("kind, setting, message", [
    ("reference", "data.patch_size=[64,64]", r"data.patch_size \[64, 64\] is not the size \[32, 32\]"),
    ("reference", "data.patches_per_epoch=100", "does not use data.patches_per_epoch=100"),
    ("reference", "data.augment=true", "set data.augment: false"),
    ("target", "gan.recon_weight=5", "does not use gan.recon_weight"),
    ("reference", "vae.beta=1.2", r"vae.beta is 1.2; it must be in \[0, 1\]"),
    ("reference", "model.kwargs.size=[32,32]", "are set from the CELLS folder"),
    ("reference", "model.name=statcell_target", "set model.name: statcell_reference"),
])
def test_bad_settings_exit_2_with_one_line(cells, tmp_path, capsys, kind, setting, message):
    sets = [s for s in TINY if not s.startswith(setting.split("=")[0] + "=")] + [setting]
    code = main(["train", str(_recipe(kind)), "--data", str(cells), "--out", str(tmp_path / "run"),
                 "--max-steps", "2", *[a for kv in sets for a in ("--set", kv)]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()


def test_vae_setting_on_a_translator_and_target_model_without_target_are_refused(tmp_path, capsys):
    code = main(["train", str(CONFIGS / "translate_unet2d.yaml"), "--data", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "run"), "--set", "vae.beta=0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "does not use vae.beta=0.3" in err and "Traceback" not in err
    ref_only = make_cells(tmp_path / "ref_only", n=12, with_target=False)
    with pytest.raises(CytogenError, match="no target channel"):
        train(_recipe("target"), ref_only, tmp_path / "run", overrides=TINY, max_steps=1, progress=False)
    assert not (tmp_path / "run").exists()
