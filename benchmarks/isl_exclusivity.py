"""Exclusivity retraining on real data: ISL condition B (13 phase-contrast planes -> DAPI, MAP2, NFH).

Stages (each rerunnable; all outputs under ``--work``, never in the repository)::

    python benchmarks/isl_exclusivity.py prepare --work /work/isl
    python benchmarks/isl_exclusivity.py speed   --work /work/isl          # steps/s of the recipe
    python benchmarks/isl_exclusivity.py train   --work /work/isl --steps 600
    python benchmarks/isl_exclusivity.py retrain --work /work/isl --steps 150 --weights 0,1,2,4
    python benchmarks/isl_exclusivity.py evaluate --work /work/isl   # the multi-output model on test

Split of the one 1024 x 1024 field (columns; all rows): x in [0, 640) train, [640, 768)
validation strip, [768, 1024) test (the right quarter). Each region is written as its own
TIFF crop: the source holds the 13 z planes as 13 channels (z_depth-0..12 in order), the targets
one structure each. ``manifest_<structure>.csv`` pair the source with one target,
``manifest_all.csv`` with all three (a multi-output model). Each command is printed before it
runs and appended to ``WORK/commands.sh``; timings go to ``WORK/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isl_phase_to_fluor" / "condition_blue_sample"
PREFIX = "lab-FINKBEINER,condition-KEVAN_0_8,acquisition_date,year-2015,month-10,day-5,minute-0,well-A4,tile_computation-STITCHED,"
STRUCTURES = ("DAPI", "MAP2", "NFH")
#: column ranges of the regions (all 1024 rows)
REGIONS = {"train": (0, 640), "val": (640, 768), "test": (768, 1024)}
RECIPE = Path(__file__).resolve().parents[1] / "src" / "cytogen" / "configs" / "phase_to_structures2d.yaml"


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def prepare(work: Path) -> None:
    """TIFF crops of the three regions and the manifests."""
    from cytogen.data.manifest import FieldEntry, write_manifest
    from cytogen.io.images import Image, write_image

    planes = np.stack([_read_png(DATA / f"{PREFIX}z_depth-{z},channel-PHASE_CONTRAST,is_mask-false.png")
                       for z in range(13)])
    targets = {s: _read_png(DATA / f"{PREFIX}depth_computation-MAXPROJECT,channel-{s}_CONFOCAL,is_mask-false.png")
               for s in STRUCTURES}
    img_dir = work / "images"
    for region, (x0, x1) in REGIONS.items():
        write_image(img_dir / f"{region}_phase.tif",
                    Image(planes[:, :, x0:x1], "CYX", None, [f"phase_z{z}" for z in range(13)]))
        for s in STRUCTURES:
            write_image(img_dir / f"{region}_{s}.tif", Image(targets[s][None, :, x0:x1], "CYX", None, [s]))
    for name, structs in [(s, (s,)) for s in STRUCTURES] + [("all", STRUCTURES)]:
        entries = [FieldEntry(region, [str(img_dir / f"{region}_phase.tif")],
                              [str(img_dir / f"{region}_{s}.tif") for s in structs], split=region)
                   for region in REGIONS]
        write_manifest(work / f"manifest_{name}.csv", entries)
    print(json.dumps({"prepared": str(work), "regions": REGIONS}))


def _run(work: Path, args: list[str], log: str) -> float:
    cmd = [sys.executable, "-m", "cytogen", *args]
    line = " ".join(shlex.quote(a) for a in cmd)
    print("+", line, flush=True)
    with open(work / "commands.sh", "a") as fh:
        fh.write(line + f"  > {log} 2>&1\n")
    t0 = time.time()
    with open(work / log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}); see {work / log}")
    return time.time() - t0


def _timing(work: Path, key: str, seconds: float) -> None:
    path = work / "timings.json"
    t = json.loads(path.read_text()) if path.exists() else {}
    t[key] = round(seconds, 1)
    path.write_text(json.dumps(t, indent=1))


def train(work: Path, steps: int, which: list[str], extra: list[str], resume: bool = False) -> None:
    """One U-Net per structure (the paper's way) and one multi-output model, one after another."""
    for name in which:
        run = work / "runs" / name
        s = _run(work, ["train", str(RECIPE), "--data", str(work / f"manifest_{name}.csv"), "--out", str(run),
                        "--max-steps", str(steps), *extra, *(["--resume"] if resume else [])],
                 f"train_{name}{'_resumed' if resume else ''}.log")
        _timing(work, f"train_{name}{'_resumed' if resume else ''}", s)


def retrain(work: Path, steps: int, weights: str, extra: list[str], name: str = "retrain") -> None:
    models = [str(work / "runs" / s / "model") for s in STRUCTURES]
    s = _run(work, ["retrain", "exclusivity", "--models", *models, "--data", str(work / "manifest_all.csv"),
                    "--out", str(work / name), "--weights", weights, "--steps", str(steps), *extra],
             f"{name}.log")
    _timing(work, name, s)


def evaluate(work: Path) -> None:
    """Test-region exclusivity and MSE of the multi-output model (``runs/all``), on the same scale as
    the retraining summary: each channel in its target-normalised units, (x - p1) / (p99.8 - p1) of
    the truth field for the truth, the network output for the prediction."""
    from cytogen.evaluate.exclusivity import exclusivity
    from cytogen.io.images import read_image
    from cytogen.predict.model_folder import load_model_folder
    from cytogen.runtime import resolve_runtime
    from cytogen.workflows.predict import predict_image

    model = load_model_folder(work / "runs" / "all" / "model")
    image = read_image(work / "images" / "test_phase.tif")
    y = predict_image(model, image, settings=resolve_runtime("32"))
    tn = model.target_norm
    pred = tn.normalize(y, stats=(np.asarray(tn.offset), np.asarray(tn.scale)))
    truth = np.concatenate([read_image(work / "images" / f"test_{s}.tif").data for s in STRUCTURES])
    truth = tn.normalize(truth)  # scope field: the test field's own percentiles, per channel
    names = list(model.meta["target_channels"])
    res = exclusivity(pred, names=names)
    mse = {n: float(((pred[i] - truth[i]) ** 2).mean()) for i, n in enumerate(names)}
    out = {"model": "multi-output (runs/all)", "test_overall_exclusivity": res.overall,
           "test_exclusivity": res.per_structure, "test_mse": mse, "test_overall_mse": float(np.mean(list(mse.values()))),
           "truth_overall_exclusivity": exclusivity(truth, names=names).overall}
    summary = work / "retrain" / "summary.json"
    if summary.exists():  # the one-model-per-structure numbers beside it
        t = json.loads(summary.read_text())["test"]
        out["per_structure_models"] = {k: {"overall_exclusivity": t[k]["overall_exclusivity"],
                                           "exclusivity": t[k]["exclusivity"], "mse": t[k]["mse"]}
                                       for k in ("before", "after")}
    (work / "multi_output_eval.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["prepare", "speed", "train", "retrain", "evaluate"])
    p.add_argument("--work", type=Path, default=Path("/work/isl"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--weights", default="0,0.5,1,2,4")
    p.add_argument("--which", default="DAPI,MAP2,NFH,all", help="train: models to train")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--minutes", type=float, default=None, help="train: time box per model (train.max_time_min)")
    p.add_argument("--resume", action="store_true", help="train: continue interrupted runs")
    p.add_argument("--name", default="retrain", help="retrain: output folder name under --work")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    extra = [x for kv in a.set for x in ("--set", kv)]
    if a.minutes:
        extra += ["--set", f"train.max_time_min={a.minutes}"]
    if a.stage == "prepare":
        prepare(a.work)
    elif a.stage == "speed":
        s = _run(a.work, ["train", str(RECIPE), "--data", str(a.work / "manifest_DAPI.csv"),
                          "--out", str(a.work / "runs" / "speed"), "--max-steps", str(a.steps), *extra],
                 "speed.log")
        print(json.dumps({"steps": a.steps, "seconds": round(s, 1), "steps_per_s": round(a.steps / s, 3)}))
    elif a.stage == "train":
        train(a.work, a.steps, a.which.split(","), extra, a.resume)
    elif a.stage == "retrain":
        retrain(a.work, a.steps, a.weights, extra, a.name)
    else:
        evaluate(a.work)


if __name__ == "__main__":
    main()
