"""The supervised nucleus segmenter learns planted discs (touching ones included) and segments
through the CLI; its settings, outputs and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.evaluate.instances import instance_scores
from cytogen.io.images import Image, read_image, write_image

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _discs(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright discs, some in touching pairs (each pixel to the nearer centre), and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres, radii = [], []
    for _ in range(300):
        if len(centres) >= 12:
            break
        r = rng.uniform(5, 8)
        c = rng.uniform(r + 1, size - r - 1, 2)
        if len(centres) % 3 == 1:  # a partner touching the previous disc
            a = rng.uniform(0, 2 * np.pi)
            c = centres[-1] + (radii[-1] + r - 1.5) * np.array([np.sin(a), np.cos(a)])
            if not (r + 1 < c[0] < size - r - 1 and r + 1 < c[1] < size - r - 1):
                continue
        gap_ok = all(np.hypot(*(c - q)) > r + s + 2 for q, s in zip(centres[:-1] if len(centres) % 3 == 1 else centres,
                                                                       radii[:-1] if len(centres) % 3 == 1 else radii))
        if gap_ok:
            centres.append(c)
            radii.append(r)
    d = np.stack([np.hypot(yy - c[0], xx - c[1]) / r for c, r in zip(centres, radii)])
    lab = np.where(d.min(0) <= 1.0, d.argmin(0) + 1, 0).astype(np.uint16)
    img = np.where(lab > 0, 1.0, 0.1) + rng.normal(0, 0.12, lab.shape)
    return img.astype(np.float32), lab


@pytest.fixture(scope="module")
def discs_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("discs")
    data = root / "data"
    data.mkdir()
    rows = []
    for i in range(6):
        img, lab = _discs(i)
        write_image(data / f"img{i}.tif", Image(img[None], "CYX", (0.5, 0.5)))
        write_image(data / f"lab{i}.tif", Image(lab[None], "CYX", (0.5, 0.5)))
        rows.append({"name": f"f{i}", "source": str(data / f"img{i}.tif"), "target": str(data / f"lab{i}.tif"),
                     "split": "train" if i < 4 else ("val" if i == 4 else "test")})
    path = root / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


SMALL = ["model.kwargs.base_channels=8", "model.kwargs.depth=2", "data.patch_size=[48,48]", "data.batch_size=8",
         "data.patches_per_epoch=64", "data.val_patches=8", "train.val_every=50", "optim.warmup_steps=0",
         "optim.lr=0.005"]


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


@pytest.fixture(scope="module")
def trained(discs_manifest, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("segrun") / "seg"
    assert main(["train", str(CONFIGS / "segment_nuclei2d.yaml"), "--data", str(discs_manifest), "--out", str(run),
                 "--max-steps", "160", "--precision", "32", *_sets(SMALL)]) == 0
    return run / "model"


def test_learns_planted_discs_exactly(trained, discs_manifest, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", "nuclei", str(trained), "--data", str(discs_manifest), "--out", str(out)]) == 0
    pred = read_image(out / "f5.tif")
    truth = read_image(Path(discs_manifest).parent / "data" / "lab5.tif").data[0]
    assert pred.data.dtype == np.uint16 and pred.pixel_size_um == (0.5, 0.5)
    assert len(np.unique(truth)) - 1 >= 10 and _touching_pairs(truth) >= 2
    s90 = instance_scores(truth, pred.data[0], thresholds=(0.9,))[0]
    assert s90["tp"] == s90["n_true"] and s90["fp"] == 0, s90  # every disc, touching ones apart, IoU >= 0.9
    rows = list(csv.DictReader(open(out / "nuclei.csv")))
    assert rows == [{"name": "f5", "n_nuclei": str(s90["n_true"]), "seconds": rows[0]["seconds"],
                     "pixel_size_um": "0.5;0.5"}]
    meta = json.loads((trained / "model.json").read_text())
    assert meta["kind"] == "nucleus_segmenter" and meta["target_channels"] == ["background", "interior", "boundary"]


def _touching_pairs(lab: np.ndarray) -> int:
    a, b = lab[:, :-1], lab[:, 1:]
    m = (a > 0) & (b > 0) & (a != b)
    return len({tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())})


def test_settings_take_effect_and_misuse_is_refused(trained, discs_manifest, tmp_path):
    img = str(Path(discs_manifest).parent / "data" / "img5.tif")
    assert main(["segment", "nuclei", str(trained), img, "--out", str(tmp_path / "big"),
                 "--set", "instances.min_size_um2=1000"]) == 0  # 4000 px: larger than every disc
    assert read_image(tmp_path / "big" / "img5.tif").data.max() == 0
    assert main(["segment", "nuclei", str(trained), img, "--out", str(tmp_path / "b1"),
                 "--set", "instances.boundary_px=2"]) == 2  # shaped the training: refused
    assert main(["predict", str(trained), img, "--out", str(tmp_path / "b2")]) == 2  # not a translator
    assert main(["segment", "nuclei", str(trained), img, "--out", str(Path(img).parent / "x")]) == 2  # inside inputs
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_3d_recipe_trains_and_segments_a_stack(synth3d, tmp_path):
    root = synth3d.parent
    rows = [{"name": r["name"], "source": str(root / r["target"]), "target": str(root / "masks" / f"{r['name']}_nuclei.tif"),
             "split": r["split"]} for r in csv.DictReader(open(synth3d))]
    m = tmp_path / "m3.csv"
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run = tmp_path / "seg3"
    assert main(["train", str(CONFIGS / "segment_nuclei3d.yaml"), "--data", str(m), "--out", str(run), "--max-steps", "2",
                 *_sets(["model.kwargs.base_channels=4", "model.kwargs.depth=2", "data.patch_size=[8,32,32]",
                         "data.batch_size=2", "data.patches_per_epoch=4", "data.val_patches=2"])]) == 0
    assert main(["segment", "nuclei", str(run / "model"), rows[0]["source"], "--out", str(tmp_path / "o3")]) == 0
    out = read_image(next((tmp_path / "o3").glob("*.tif")))
    assert out.data.shape == (1, 16, 64, 64) and out.data.dtype == np.uint16


def test_evaluate_objects_segments_with_the_trained_segmenter(trained, discs_manifest, tmp_path, capsys):
    """The same image as prediction and truth, segmented by the model: every nucleus matched."""
    data = Path(discs_manifest).parent / "data"
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for d in (pred, truth):
        (d / "f5.tif").write_bytes((data / "img5.tif").read_bytes())
    assert main(["evaluate", "objects", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "ev"),
                 "--segmenter", str(trained), "--region", "none"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    n = int(read_image(data / "lab5.tif").data.max())
    assert summary["n_true"] == summary["n_pred"] == n and summary["recall"] == 1.0
    assert summary["segmentation"].startswith("nucleus segmenter")
    assert main(["evaluate", "objects", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "e2"),
                 "--segmenter", str(trained), "--labels"]) == 2
