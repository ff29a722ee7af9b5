"""``cytogen retrain exclusivity`` on a tiny synthetic 2D task: two structures (bright and dim
disks of one source image) whose briefly trained models predict overlapping, blurry structures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.data.manifest import FieldEntry, write_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import Image, write_image

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = """task: translate
model: {name: unet, dims: 2, kwargs: {depth: 2, base_channels: 8, norm: batch}}
data: {patch_size: [32, 32], batch_size: 4, patches_per_epoch: 64, val_patches: 8, num_workers: 0,
       foreground_bias: 0.5}
loss: {name: mse}
optim: {name: adamw, lr: 0.003, scheduler: none}
train: {max_steps: 30, val_every: 1000, precision: "32", checkpoint_every: 1000}
predict: {tile: [64, 64], overlap: 0.25, batch_size: 4}
"""


def _field(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    a, b = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    for k in range(6):
        cy, cx, r = rng.uniform(6, size - 6), rng.uniform(6, size - 6), rng.uniform(3, 6)
        (a if k % 2 == 0 else b)[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    b[a > 0] = 0.0
    src = a + 0.5 * b + rng.normal(0, 0.05, a.shape).astype(np.float32)
    return src, a, b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, one_thread) -> dict[str, Path]:
    from cytogen.workflows.train import train

    root = tmp_path_factory.mktemp("retrain")
    rng = np.random.default_rng(0)
    entries = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        src, a, b = _field(rng)
        write_image(root / f"src{i}.tif", Image(src[None], "CYX", None, ["light"]))
        write_image(root / f"a{i}.tif", Image(a[None], "CYX", None, ["A"]))
        write_image(root / f"b{i}.tif", Image(b[None], "CYX", None, ["B"]))
        entries.append(FieldEntry(f"f{i}", [str(root / f"src{i}.tif")],
                                  [str(root / f"a{i}.tif"), str(root / f"b{i}.tif")], split=split))
    write_manifest(root / "all.csv", entries)
    (root / "recipe.yaml").write_text(RECIPE)
    out = {"root": root, "all": root / "all.csv", "recipe": root / "recipe.yaml"}
    for k, name in ((0, "A"), (1, "B")):
        one = [FieldEntry(e.name, e.source, [e.target[k]], split=e.split) for e in entries]
        write_manifest(root / f"{name}.csv", one)
        train(root / "recipe.yaml", root / f"{name}.csv", root / f"run_{name}", progress=False)
        out[name] = root / f"run_{name}" / "model"
    return out


def test_cli_round_trip_and_exclusivity_rises_with_p(tiny, tmp_path):
    out = tmp_path / "rx"
    rc = main(["retrain", "exclusivity", "--models", str(tiny["A"]), str(tiny["B"]), "--data", str(tiny["all"]),
               "--out", str(out), "--weights", "0,4", "--steps", "20"])
    assert rc == 0
    for name in ("trajectory.csv", "summary.json", "report.html", "trajectory.png", "before_after.png",
                 "models/A/model.json", "models/B/model.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "trajectory.csv")))
    assert [r["step"] for r in rows] == ["0", "1", "1", "2", "2"]
    s = json.loads((out / "summary.json").read_text())
    assert set(s["chosen_p"]) == {"A", "B"} and set(s["order"]) == {"A", "B"}
    assert s["test"]["before"]["overall_exclusivity"] > 0
    for step in ("1", "2"):  # the same fine-tuning with the term gives more exclusive predictions
        by_p = {float(r["p"]): r for r in rows if r["step"] == step}
        assert float(by_p[4.0]["overall_exclusivity"]) > float(by_p[0.0]["overall_exclusivity"]) + 0.01
        assert sum(r["chosen"] == "True" for r in by_p.values()) == 1
        # the ratio column is what its name says
        r = by_p[4.0]
        assert float(r["ratio"]) == pytest.approx(float(r["overall_exclusivity"]) / float(r["overall_mse"]))


def test_bad_inputs(tiny, tmp_path):
    from cytogen.workflows.retrain_exclusivity import retrain_exclusivity

    with pytest.raises(CytogenError, match="at least 2 models"):
        retrain_exclusivity([tiny["A"]], tiny["all"], tmp_path / "o1")
    with pytest.raises(CytogenError, match="same structure"):
        retrain_exclusivity([tiny["A"], tiny["A"]], tiny["all"], tmp_path / "o2")
    with pytest.raises(CytogenError, match="no target 'B'"):
        retrain_exclusivity([tiny["A"], tiny["B"]], tiny["root"] / "A.csv", tmp_path / "o3")
    # a model from other inputs: the same model folder with another source channel list
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny["B"], other)
    meta = json.loads((other / "model.json").read_text())
    meta["source_channels"] = ["bright_field"]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CytogenError, match="same input channels"):
        retrain_exclusivity([tiny["A"], other], tiny["all"], tmp_path / "o4")
    assert main(["retrain", "exclusivity", "--models", str(tiny["A"]), "--data", str(tiny["all"]),
                 "--out", str(tmp_path / "o5")]) == 2


def test_exclusivity_weight_without_reference_is_refused(tiny, tmp_path):
    from cytogen.workflows.train import train

    with pytest.raises(CytogenError, match="no 'reference' image"):
        train(tiny["recipe"], tiny["root"] / "A.csv", tmp_path / "r", overrides=["loss.exclusivity_weight=1"],
              progress=False)


def test_multi_output_model_predicts_one_named_multichannel_image(tiny, tmp_path):
    from cytogen.io.images import read_image

    recipe = Path(__file__).resolve().parents[2] / "configs" / "phase_to_structures2d.yaml"  # the bundled one
    small = ["model.kwargs.base_channels=4", "model.kwargs.depth=2", "data.patch_size=[32,32]", "data.batch_size=2",
             "data.patches_per_epoch=8", "data.val_patches=2", "data.num_workers=0", "predict.tile=[64,64]"]
    run = tmp_path / "multi"
    assert main(["train", str(recipe), "--data", str(tiny["all"]), "--out", str(run), "--max-steps", "3",
                 *[a for kv in small for a in ("--set", kv)]]) == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["architecture"]["out_channels"] == 2 and meta["target_channels"] == ["A", "B"]
    assert main(["predict", str(run / "model"), "--data", str(tiny["all"]), "--split", "test",
                 "--out", str(tmp_path / "pred")]) == 0
    img = read_image(tmp_path / "pred" / "f3.tif")
    assert img.data.shape == (2, 64, 64) and img.channel_names == ["A", "B"]
