"""``train``: validation held out from training fields when the manifest has no val rows; the
caller's recipe, overrides and warning filters are respected."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import yaml

from cytogen.cli import main
from cytogen.config import recipe_from_dict
from cytogen.data.manifest import FieldEntry
from cytogen.errors import CytogenError
from cytogen.workflows.train import train
from cytogen.workflows.train_support import hold_out_fields

TINY = {
    "model": {"name": "unet", "dims": 2, "kwargs": {"depth": 1, "base_channels": 4}},
    "data": {"patch_size": [32, 32], "batch_size": 2, "patches_per_epoch": 8, "val_patches": 2},
    "train": {"max_steps": 50, "val_every": 2, "seed": 0, "precision": "32"},
}


def _entries(names, groups=None):
    groups = groups or [None] * len(names)
    return [FieldEntry(n, [f"{n}.tif"], [f"{n}.tif"], group=g) for n, g in zip(names, groups)]


def _rewrite(manifest: Path, out: Path, keep=lambda row: True, split="train") -> Path:
    """Copy of a manifest (absolute image paths) with every kept row's split set."""
    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if keep(r)]
    for r in rows:
        r["split"] = split
        for col in ("source", "target", "mask"):
            r[col] = str(manifest.parent / r[col]) if r[col] else ""
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_hold_out_is_reproducible_sized_and_disjoint():
    names = [f"f{i:02d}" for i in range(20)]
    tr, va = hold_out_fields(_entries(names), seed=3)
    assert len(va) == math.ceil(0.15 * 20) == 3
    assert sorted(e.name for e in tr + va) == names and not {e.name for e in tr} & {e.name for e in va}
    again = hold_out_fields(_entries(names), seed=3)[1]
    assert [e.name for e in again] == [e.name for e in va]
    others = {tuple(e.name for e in hold_out_fields(_entries(names), seed=s)[1]) for s in range(6)}
    assert len(others) > 1  # the seed chooses
    assert len(hold_out_fields(_entries(names[:2]), seed=0)[1]) == 1  # at least one, one left to train


def test_hold_out_keeps_groups_together():
    names = [f"f{i}" for i in range(9)]
    groups = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    for seed in range(5):
        tr, va = hold_out_fields(_entries(names, groups), seed=seed)
        held = {e.group for e in va}
        assert len(held) == 1 and len(va) == 3  # ceil(0.15 * 9) = 2 fields -> one whole group
        assert not held & {e.group for e in tr}


@pytest.mark.parametrize("names, groups, message", [
    (["only"], None, "only one training field"),
    (["a", "b", "c"], ["g", "g", "g"], r"only one group \('g'\)"),
])
def test_hold_out_refuses_what_cannot_be_split(names, groups, message):
    with pytest.raises(CytogenError, match=message) as err:
        hold_out_fields(_entries(names, groups), seed=0, source="m.csv")
    assert "add val rows" in str(err.value) and "\n" not in str(err.value)


def test_single_training_field_without_val_rows_exits_with_one_line(synth_set, tmp_path, capsys):
    one = _rewrite(synth_set, tmp_path / "one_field.csv", keep=lambda r: r["name"] == "field_000")
    recipe = str(Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml")
    code = main(["train", recipe, "--data", str(one), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "only one training field" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_holds_out_fields_and_respects_the_callers_recipe(synth_set, tmp_path, capsys):
    """One short run: validation on held-out fields (logged and in the summary); the Recipe
    object is not modified, its overrides apply, and the caller's warning filters survive."""
    data = _rewrite(synth_set, tmp_path / "no_val.csv", keep=lambda r: r["split"] != "test")
    rec = recipe_from_dict(TINY)
    before = rec.to_dict()
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message="a filter the caller set")
        filters = list(warnings.filters)
        summary = train(rec, data, tmp_path / "run", overrides=["train.seed=5"], max_steps=2)
        assert warnings.filters == filters
    assert rec.to_dict() == before  # neither max_steps nor the override leaked into the caller's recipe
    assert summary["steps"] == 2
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["train"]["seed"] == 5
    n_train = 6  # 8 synthetic fields minus the 2 test rows
    held = math.ceil(0.15 * n_train)
    assert summary["val_source"] == f"held out {held} of {n_train} training fields automatically (seed 5)"
    assert len(summary["val_fields"]) == summary["n_val_fields"] == held
    assert summary["n_train_fields"] == n_train - held
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["val_fields"] == summary["val_fields"]
    assert f"validation: {summary['val_source']}" in capsys.readouterr().err


def test_step_seeding_depends_on_seed_step_and_rank_only():
    import numpy as np
    import torch

    from cytogen.workflows.train_support import seed_step

    def draw(*args):
        seed_step(*args)
        return torch.rand(3).tolist(), float(np.random.rand()), __import__("random").random()

    a = draw(0, 7, 0)
    torch.rand(100)  # whatever drew in between (a loader's base seed, a validation) does not matter
    assert draw(0, 7, 0) == a
    assert len({str(draw(*k)) for k in [(0, 7, 0), (0, 8, 0), (1, 7, 0), (0, 7, 1)]}) == 4


def test_soft_label_warm_start_longer_than_the_run_is_refused_before_writing(synth_set, tmp_path):
    """The check runs on the recipe after ``max_steps`` overrides, before the run folder exists."""
    rec = recipe_from_dict({**TINY, "task": "gan", "gan": {"soft_labels": True, "soft_label_steps": 10}})
    with pytest.raises(CytogenError, match="soft_label_steps"):
        train(rec, synth_set, tmp_path / "run", max_steps=10)
    assert not (tmp_path / "run").exists()


def test_patch_size_the_generator_cannot_take_is_refused_before_writing(synth_set, tmp_path, capsys):
    """A depth-3 U-Net needs sizes divisible by 8: a 36 px patch is refused with one line naming
    data.patch_size and the nearest valid sizes, before any run folder exists (it used to fail
    mid-fit with a traceback)."""
    recipe = str(Path(__file__).resolve().parents[2] / "configs" / "translate_unet2d.yaml")
    code = main(["train", recipe, "--data", str(synth_set), "--out", str(tmp_path / "run"), "--max-steps", "1",
                 "--set", "model.kwargs.depth=3", "--set", "data.patch_size=[36,36]"])
    err = capsys.readouterr().err
    assert code == 2 and "data.patch_size" in err and "32" in err and "40" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task, setting", [
    ("cyclegan", "gan.ema_decay=0.99"),       # CycleGAN keeps no EMA
    ("cyclegan", "loss.name=mse"),            # its cycle/identity terms are L1
    ("cyclegan", "gan.soft_labels=true"),
    ("translate", "gan.adversarial=hinge"),   # regression has no adversary
    ("translate", "discriminator.name=stylegan2"),
    ("gan", "gan.pool_size=10"),              # only CycleGAN has image pools
])
def test_settings_the_task_ignores_are_refused(synth_set, tmp_path, capsys, task, setting):
    recipe = str(Path(__file__).resolve().parents[2] / "configs" /
                 {"cyclegan": "cyclegan2d.yaml", "translate": "translate_unet2d.yaml", "gan": "pix2pix2d.yaml"}[task])
    code = main(["train", recipe, "--data", str(synth_set), "--out", str(tmp_path / "run"), "--max-steps", "1",
                 "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and f"does not use {setting.split('=')[0]}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_every_bundled_recipe_sets_only_what_its_task_uses():
    from cytogen.config import load_recipe
    from cytogen.tasks import TASKS
    from cytogen.workflows.train_support import check_task_uses

    for path in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        rec = load_recipe(path)
        check_task_uses(rec, TASKS.get(rec.task), str(path))  # raises on an ignored setting
