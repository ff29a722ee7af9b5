"""Every kind of HTML report cytogen writes, opened in headless Chromium (see ``conftest.py``): each
figure decodes and is laid out, no console or page errors, no request leaves the page, title and
headings present; a full-page screenshot per report goes to the test artifacts.

Reports are made cheaply: the real workflow on small synthetic data where it takes a second or two
(evaluations, segmentation, cell extraction, Statistical Cell commands on untrained tiny VAEs), and
the workflow's own report writer on small computed inputs where the workflow trains models (demo,
retrain exclusivity, statcell sweep).
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cytogen.io.images import Image, read_image, read_spec, write_image

pytestmark = pytest.mark.usefixtures("one_thread")
PX = 0.5


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """4 synthetic 128 x 128 fields with organelles (images, nuclei/cells/organelle labels, manifests)."""
    from cytogen.synth.cells import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("browser") / "synth", n_fields=4, shape=(128, 128),
                                   organelles=True, seed=4, pixel_size_um=PX).parent


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _labels_into(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        im = read_image(f)
        write_image(folder / f.name, Image(im.data.astype(np.int32), im.axes, im.pixel_size_um))
    return folder


# ------------------------------------------------------------------ makers: one report each
def make_demo(tmp: Path, _) -> Path:
    """The demo's report writer on its real evaluations of stand-in predictions (training skipped:
    the blurred true nucleus as the prediction of each held-out field, a written loss log)."""
    from scipy.ndimage import gaussian_filter

    from cytogen.data.manifest import read_manifest
    from cytogen.synth.cells import write_synthetic_dataset
    from cytogen.workflows.demo import write_demo_report
    from cytogen.workflows.evaluate import evaluate_pixels
    from cytogen.workflows.evaluate_objects import evaluate_objects

    out = tmp / "demo"
    manifest = write_synthetic_dataset(out / "data", n_fields=5, shape=(96, 96), seed=0)
    names = []
    for e in read_manifest(manifest):
        if e.split == "test":
            truth = read_spec(e.target[0])
            write_image(out / "predictions" / f"{e.name}.tif",
                        Image(gaussian_filter(truth.data, (0, 2, 2)), "CYX", truth.pixel_size_um))
            names.append(e.name)
    log = out / "run" / "logs" / "csv" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,train_loss,val_loss\n" + "".join(f"{s},{1 / (1 + s)},{'' if s % 5 else 1.2 / (1 + s)}\n"
                                                          for s in range(1, 41)))
    result = evaluate_pixels(out / "predictions", manifest, out / "evaluation", split="test")
    objects = evaluate_objects(out / "predictions", manifest, out / "objects", split="test", progress=False)
    return write_demo_report(out, manifest, result, objects, names, 40, 1.0, 2.0)


def make_evaluate_objects(tmp: Path, synth: Path) -> Path:
    from cytogen.workflows.evaluate_objects import evaluate_objects

    for r in _rows(synth / "manifest.csv"):  # the nucleus channel moved by 2 px as the prediction
        nuc = read_spec(str(synth / r["target"]))
        write_image(tmp / "pred" / f"{r['name']}.tif", Image(np.roll(nuc.data, 2, axis=-1), "CYX", (PX, PX)))
    evaluate_objects(tmp / "pred", synth / "manifest.csv", tmp / "out", progress=False)
    return tmp / "out" / "report.html"


def make_evaluate_cells(tmp: Path, synth: Path) -> Path:
    from cytogen.workflows.evaluate_cells import evaluate_cells

    pred = _labels_into(tmp / "pred", [])
    for r in _rows(synth / "segment.csv"):  # truth with every third cell dropped
        lab = read_image(synth / r["cells"]).data[0].astype(np.int32)
        lab[np.isin(lab, np.unique(lab)[1::3])] = 0
        write_image(pred / f"{r['name']}.tif", Image(lab[None], "CYX", (PX, PX)))
    evaluate_cells(pred, synth / "segment.csv", tmp / "out")
    return tmp / "out" / "report.html"


def make_segment_cells(tmp: Path, synth: Path) -> Path:
    from cytogen.workflows.segment_cells import segment_cells

    segment_cells(None, synth / "segment.csv", tmp / "out", method="propagate", progress=False)
    return tmp / "out" / "report.html"


def make_evaluate_exclusivity(tmp: Path, _) -> Path:
    from cytogen.workflows.evaluate_exclusivity import evaluate_exclusivity

    rng, yy, xx = np.random.default_rng(0), *np.mgrid[:48, :64]
    for i in range(2):
        truth = np.stack([((yy - 12 - 4 * i) ** 2 + (xx - 16) ** 2 < 64), ((yy - 30) ** 2 + (xx - 40) ** 2 < 81),
                          xx > 54]).astype(np.float32)
        pred = 0.6 * truth + 0.4 * truth.mean(0) + 0.05 * rng.random(truth.shape, np.float32)
        for kind, stack in (("pred", pred), ("truth", truth)):
            write_image(tmp / kind / f"f{i}.tif", Image(stack, "CYX", (PX, PX), ["dapi", "map2", "nfh"]))
    evaluate_exclusivity([tmp / "pred"], tmp / "out", truth=[tmp / "truth"])
    return tmp / "out" / "report.html"


def make_evaluate_shapes(tmp: Path, synth: Path) -> Path:
    pytest.importorskip("pyshtools")
    from cytogen.workflows.evaluate_shapes import evaluate_shapes

    nuclei = sorted((synth / "masks").glob("*_nuclei.tif"))
    real, pred = _labels_into(tmp / "real", nuclei[:2]), _labels_into(tmp / "pred", nuclei[2:])
    evaluate_shapes(real, pred, tmp / "out", degree=8, ks=(4, 8), n_permutations=19)
    return tmp / "out" / "report.html"


def make_evaluate_positions(tmp: Path, synth: Path) -> Path:
    from cytogen.workflows.evaluate_positions import evaluate_positions

    m = synth / "masks"
    org = sorted(m.glob("*_organelles.tif"))
    real, pred = _labels_into(tmp / "real", org[:2]), _labels_into(tmp / "pred", org[2:])
    evaluate_positions(real, pred, f"{m}/*_cells.tif", f"{m}/*_nuclei.tif", tmp / "out", n_permutations=19,
                       real_splits=2)
    return tmp / "out" / "report.html"


def make_cells_extract(tmp: Path, synth: Path) -> Path:
    from cytogen.workflows.cells_extract import extract_cells

    lines = ["name,dna,target,structure,cells,nuclei,split,pixel_size_um,dose"]
    for i, r in enumerate(_rows(synth / "segment.csv")):
        img = f"{synth}/images/{r['name']}.tif"
        lines.append(f"{r['name']},{img}#c=2,{img}#c=1,{'ab'[i % 2]},{synth / r['cells']},"
                     f"{synth}/masks/{r['name']}_nuclei.tif,{r['split']},{PX},{i}")
    (tmp / "FIELDS.csv").write_text("\n".join(lines) + "\n")
    extract_cells(tmp / "FIELDS.csv", tmp / "CELLS", size=(64, 64), progress=False)
    return tmp / "CELLS" / "report.html"


def make_retrain_exclusivity(tmp: Path, _) -> Path:
    """The workflow's report writer on metrics computed by its own ``_metrics`` (training skipped)."""
    from cytogen.workflows import retrain_exclusivity as rx

    rng, names = np.random.default_rng(0), ["A", "B"]
    fields = [SimpleNamespace(entry=SimpleNamespace(name=f"f{i}"),
                              truth={n: (rng.random((1, 32, 32)) > 0.7).astype(np.float32) for n in names})
              for i in range(2)]

    def preds(blur: float) -> dict:
        return {n: {f.entry.name: (1 - blur) * f.truth[n] + blur * rng.random((1, 32, 32)) for f in fields}
                for n in names}

    before, after = rx._metrics(names, fields, preds(0.8)), rx._metrics(names, fields, preds(0.4))
    rows = [{"step": 0, "structure": "", "p": "", "split": "val", "chosen": True, **before}]
    for step, n in enumerate(names, 1):
        rows += [{"step": step, "structure": n, "p": p, "split": "val", "chosen": p == 4,
                  **rx._metrics(names, fields, preds(0.8 - 0.1 * p))} for p in (0, 2, 4)]
    summary = rx._summary(names, names, "lowest", (0, 2, 4), 20, {"A": 4, "B": 4}, before, after, before,
                          {n: tmp / n for n in names}, 1.0)
    (tmp / "out").mkdir()
    rx._report(tmp / "out", names, rows, summary)
    return tmp / "out" / "report.html"


@pytest.fixture(scope="module")
def statcell(tmp_path_factory, one_thread) -> dict[str, Path]:
    """48 disk cells (32 x 32, two structures, doses and wells) and untrained tiny reference/target VAEs."""
    import torch

    from cytogen.data.cellset import write_cellset
    from cytogen.models.vae import ReferenceVAE, TargetVAE
    from cytogen.predict.model_folder import save_statcell_folder

    root, rng, s = tmp_path_factory.mktemp("statcell_browser"), np.random.default_rng(0), 32
    d = np.hypot(*(np.mgrid[:s, :s] - s / 2 + 0.5))
    images, rows = [], []
    for i in range(48):
        r = rng.uniform(5, 13)
        images.append(np.stack([np.clip(r - d + 0.5, 0, 1), 0.8 * np.clip(r / 2 - d + 0.5, 0, 1),
                                np.clip(rng.random((s, s)) * (d < r), 0, 1)]).astype(np.float32))
        rows.append({"cell_id": f"f{i % 4}/{i}", "field": f"f{i % 4}", "cell_label": i + 1, "structure": "ab"[i % 2],
                     "structure_index": i % 2, "split": ("train", "train", "test")[i % 3], "dose": i % 3,
                     "well": f"w{i % 6}"})
    cells = write_cellset(root / "CELLS", np.stack(images), rows,
                          {"channels": ["cell", "dna", "target"], "reference_channels": [0, 1], "target_channel": 2,
                           "structures": ["a", "b"], "pixel_size_um": [PX, PX]})
    torch.manual_seed(0)
    out = {"cells": cells}
    for kind, net, structures in (("reference", ReferenceVAE(size=(s, s), latent_dim=3, widths=(4, 8)), []),
                                  ("target", TargetVAE(size=(s, s), latent_dim=3, widths=(4, 8), n_classes=2),
                                   ["a", "b"])):
        out[kind] = save_statcell_folder(root / kind, net.eval(), kind=f"statcell_{kind}",
                                         architecture=net.architecture, structures=structures,
                                         channels=["cell", "dna", "target"], crop_size=[s, s],
                                         pixel_size_um=[PX, PX], beta=0.5, recipe=None,
                                         extra={"kl_per_dim": [0.1, 1.0, 2.0]})
    return out


def make_statcell_embed(tmp: Path, sc: dict) -> Path:
    from cytogen.workflows.statcell import embed

    embed(sc["reference"], sc["cells"], tmp / "out", target=sc["target"], pca=2)
    return tmp / "out" / "report.html"


def make_statcell_sample(tmp: Path, sc: dict) -> Path:
    from cytogen.workflows.statcell import sample

    sample(sc["reference"], tmp / "out", target=sc["target"], structure="a", n=6)
    return tmp / "out" / "report.html"


def make_statcell_walk(tmp: Path, sc: dict) -> Path:
    from cytogen.workflows.statcell import walk

    walk(sc["reference"], sc["cells"], tmp / "out", n_dims=2, steps=5)
    return tmp / "out" / "report.html"


def make_statcell_features(tmp: Path, sc: dict) -> Path:
    from cytogen.workflows.statcell import features

    features(sc["reference"], sc["cells"], tmp / "out", n_generated=8)
    return tmp / "out" / "report.html"


def make_statcell_coupling(tmp: Path, sc: dict) -> Path:
    from cytogen.workflows.statcell_stats import coupling

    coupling(sc["target"], sc["cells"], tmp / "out", n_swaps=2, n_samples=2, condition="dose")
    return tmp / "out" / "report.html"


def make_statcell_sweep(tmp: Path, sc: dict) -> Path:
    """The sweep's output writer on rate/distortion and features of the untrained model (training skipped)."""
    from cytogen.data.cellset import read_cellset
    from cytogen.evaluate import latent as L
    from cytogen.predict.model_folder import load_statcell_folder
    from cytogen.predict.statcell import elbo_cells
    from cytogen.workflows import statcell_stats as st

    cs, model = read_cellset(sc["cells"]), load_statcell_folder(sc["reference"])
    idx = cs.indices("test")
    rows, gen = [], {}
    for b in (0.2, 0.9):
        est = elbo_cells(model, cs, idx, n_samples=2, seed=int(10 * b))
        rd = L.rate_distortion(est["kl"], est["recon"])  # the columns the sweep keeps
        rows.append({"beta": b, **{k: rd[k] for k in ("rate", "distortion", "elbo", "rate_sd", "distortion_sd",
                                                      "n_active_dims", "n_cells")}})
        gen[b] = st._generated_features(model, 8, cs)
    real = st._real_features(cs, idx)
    summary = {"recipe": "statcell_reference2d (untrained, test)", "n_cells": len(idx), "split": "test",
               "per_beta": rows}
    (tmp / "out").mkdir()
    st._write_sweep_outputs(tmp / "out", summary, rows, [], real, gen)
    return tmp / "out" / "report.html"


def make_statcell_perturbation(tmp: Path, _) -> Path:
    from cytogen.workflows.statcell_stats import perturbation

    rng, rows = np.random.default_rng(0), []
    for plate_row in ("A", "C"):
        for dose in range(4):
            for k in range(8):
                zt, zr = rng.normal(size=3) + [0.8 * dose, 0, 0], rng.normal(size=2)
                rows.append({"cell_id": f"{plate_row}{dose}/{k}", "structure": "FKHR-GFP", "row": plate_row,
                             "dose": dose, "well": f"{plate_row}-{dose}-{k % 2}",
                             "target_nc_ratio": 1 + 0.1 * dose + 0.5 * rng.normal(),
                             **{f"zr_{i}": v for i, v in enumerate(zr)}, **{f"zt_{i}": v for i, v in enumerate(zt)}})
    with open(tmp / "embeddings.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    perturbation(tmp / "embeddings.csv", tmp / "out", condition="dose", control="0",
                 baseline_columns=("target_nc_ratio",), learn_on="row=A", n_permutations=99)
    return tmp / "out" / "report.html"


def make_evaluate_perceptual(tmp: Path, _=None) -> Path:
    """Five synthetic fields of blobs on noise; the predictions are their blurred copies (no FID)."""
    from scipy import ndimage as ndi

    from cytogen.workflows.evaluate_perceptual import evaluate_perceptual

    rng = np.random.default_rng(0)
    (tmp / "pred").mkdir(parents=True)
    rows = ["name,source,target,split"]
    yy, xx = np.mgrid[:96, :96]
    for i in range(5):  # >= 4 fields: the real-vs-real baselines are computed
        img = rng.normal(10, 2, (96, 96))
        for cy, cx in rng.uniform(10, 86, (8, 2)):
            img += 100 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2))
        t = img.astype(np.float32)[None]
        write_image(tmp / f"t{i}.tif", Image(t, "CYX"))
        write_image(tmp / "pred" / f"f{i}.tif", Image(ndi.gaussian_filter(t, (0, 1.5, 1.5)), "CYX"))
        rows.append(f"f{i},t{i}.tif,t{i}.tif,test")
    (tmp / "m.csv").write_text("\n".join(rows) + "\n")
    evaluate_perceptual(tmp / "pred", tmp / "m.csv", tmp / "out", fid=False, n_boot=50)
    return tmp / "out" / "report.html"


def make_evaluate_uncertainty(tmp: Path, _=None) -> Path:
    """Nuclei on a grid; half of the predicted ones are moved by 3 px and carry a large spread."""
    from cytogen.workflows.evaluate_uncertainty import evaluate_uncertainty

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :160]

    def blobs(centres):
        return (5 + sum(100 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 32.0) for y, x in centres)).astype(np.float32)

    rows = ["name,source,target,split,pixel_size_um"]
    for i in range(3):
        centres = [(y, x) for y in range(20, 160, 30) for x in range(20, 160, 30)]
        moved = rng.random(len(centres)) < 0.5
        shifted = [(y + 3 * m, x + 3 * m) for (y, x), m in zip(centres, moved)]
        spread = np.full((160, 160), 0.2, np.float32) + rng.random((160, 160)).astype(np.float32) * 0.1
        for (y, x), m in zip(shifted, moved):
            spread[((yy - y) ** 2 + (xx - x) ** 2 <= 36) & m] = 5.0
        write_image(tmp / f"t{i}.tif", Image(blobs(centres)[None], "CYX", (0.5, 0.5)))
        write_image(tmp / "pred" / f"f{i}.tif", Image(blobs(shifted)[None], "CYX", (0.5, 0.5)))
        write_image(tmp / "pred" / f"f{i}_spread.tif", Image(spread[None], "CYX", (0.5, 0.5)))
        rows.append(f"f{i},t{i}.tif,t{i}.tif,test,0.5")
    (tmp / "m.csv").write_text("\n".join(rows) + "\n")
    evaluate_uncertainty(tmp / "pred", tmp / "m.csv", tmp / "out", n_boot=50)
    return tmp / "out" / "report.html"


# kind (screenshot name) -> (maker, fixture it needs, title, least number of figures)
REPORTS = {
    "demo": (make_demo, None, "cytogen demo: actin -> nucleus on synthetic cells", 3),
    "evaluate-objects": (make_evaluate_objects, "synth", "cytogen: object-level evaluation", 2),
    "evaluate-cells": (make_evaluate_cells, "synth", "cytogen: cell segmentation evaluation", 1),
    "segment-cells": (make_segment_cells, "synth", "cytogen: cell segmentation", 1),
    "evaluate-exclusivity": (make_evaluate_exclusivity, None, "cytogen evaluate exclusivity", 2),
    "evaluate-shapes": (make_evaluate_shapes, "synth", "Object shapes: real vs generated", 2),
    "evaluate-positions": (make_evaluate_positions, "synth", "cytogen evaluate positions", 1),
    "cells-extract": (make_cells_extract, "synth", "cytogen cells extract", 1),
    "retrain-exclusivity": (make_retrain_exclusivity, None, "Exclusivity retraining", 2),
    "statcell-embed": (make_statcell_embed, "statcell", None, 1),
    "statcell-sample": (make_statcell_sample, "statcell", None, 1),
    "statcell-walk": (make_statcell_walk, "statcell", None, 1),
    "statcell-features": (make_statcell_features, "statcell", None, 1),
    "statcell-coupling": (make_statcell_coupling, "statcell", "Statistical Cell: coupling", 0),
    "statcell-sweep": (make_statcell_sweep, "statcell", "Statistical Cell: beta sweep", 2),
    "statcell-perturbation": (make_statcell_perturbation, None, "Statistical Cell: perturbation", 1),
    "evaluate-perceptual": (make_evaluate_perceptual, None, "cytogen: perceptual realism", 2),
    "evaluate-uncertainty": (make_evaluate_uncertainty, None, "cytogen: uncertainty calibration", 2),
}


@pytest.mark.parametrize("kind", list(REPORTS))
def test_report_renders_in_chromium(kind, chromium_browser, check_page, browser_artifacts, request, tmp_path):
    maker, needs, title, min_figures = REPORTS[kind]
    path = maker(tmp_path, request.getfixturevalue(needs) if needs else None)
    res = check_page(chromium_browser, path, browser_artifacts / f"{kind}.png")
    assert res.problems == [], f"{kind}: {path}"
    assert res.title == res.headings[0] and (title is None or res.title == title)
    assert len(res.headings) >= 2 and res.n_images >= min_figures
    assert res.screenshot.stat().st_size > 5_000
