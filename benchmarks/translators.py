"""Compare the translators on real data with the same wall-clock budget each.

Trains the regression U-Net, pix2pix, Vox2Vox-RU (its R2U-Net generator in 2D), TFill-Coarse,
the 3x chained U-Net and CycleGAN on ``../shared/data/sbs_translocation`` (GFP -> Hoechst;
plate row G = test), predicts the test fields and scores them with pixel metrics (Pearson r, raw and
calibrated families), object metrics (within one nuclear radius, with the union-of-discs null and the
paper's per-nucleus null) and perceptual distances (``cytogen evaluate perceptual``: object-feature and
patch-statistics Frechet distances with field-bootstrap intervals, FID and KID on 256 px crops when the
``fid`` extra is installed, each beside its real-vs-real baseline; lower is better).
Prints one JSON line per model, then a Markdown table.

    python benchmarks/translators.py [--minutes 5] [--models unet,pix2pix,...] [--out DIR] [--reuse]

``--reuse`` re-scores an existing ``--out DIR/<model>/run/model`` (and its ``pred/`` when present)
without training again; the JSON line says ``"reused": true``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cytogen.config import bundled_recipe, load_recipe
from cytogen.data.manifest import build_manifest
from cytogen.workflows.evaluate import evaluate_pixels
from cytogen.workflows.evaluate_objects import evaluate_objects
from cytogen.workflows.evaluate_perceptual import evaluate_perceptual
from cytogen.evaluate.pipeline import ObjectSettings
from cytogen.workflows.predict import predict
from cytogen.workflows.train import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sbs_translocation"
#: Pixel metrics reported (medians over the test fields): Pearson r on the prediction as given, the
#: raw family (prediction as given, truth's percentile scale) and the calibrated family (affine fit to
#: the truth, slope >= 0: flatters, labelled as such).
PIXEL_KEYS = ("pearson_r", "raw_ssim", "raw_psnr", "raw_l1", "raw_mse",
              "calibrated_ssim", "calibrated_psnr", "calibrated_l1", "calibrated_mse")
COMMON = ["optim.scheduler=none", "train.max_steps=1000000", "train.val_every=50"]
MODELS = {
    "unet": ("translate_unet2d", []),
    "pix2pix": ("pix2pix2d", []),
    "vox2vox_ru": ("vox2vox_ru3d", ["model.dims=2", "data.patch_size=[128,128]", "data.batch_size=8",
                                    "predict.tile=[256,256]", "predict.batch_size=4"]),
    "tfill_coarse": ("tfill_coarse", []),
    "unet_chain3x": ("unet_chain3x", []),
    "cyclegan": ("cyclegan2d", []),
}


def run(name: str, manifest: Path, out: Path, minutes: float, reuse: bool = False) -> dict:
    """Train (or, with ``reuse`` and an existing ``out/name/run/model``, reuse), predict and score one model."""
    recipe_name, extra = MODELS[name]
    model_dir = out / name / "run" / "model"
    reused = reuse and model_dir.is_dir()
    if reused:
        summary = json.loads((out / name / "run" / "train_summary.json").read_text())
        t_train = float(summary.get("train_seconds", float("nan")))
    else:
        rec = load_recipe(bundled_recipe(recipe_name), COMMON + extra + [f"train.max_time_min={minutes}"])
        t0 = time.perf_counter()
        summary = train(rec, manifest, out / name / "run", progress=False)
        t_train = time.perf_counter() - t0
    pred_reused = reused and (out / name / "pred").is_dir()
    if not pred_reused:
        predict(model_dir, out / name / "pred", data=manifest, split="test", progress=False)
    row = score(name, manifest, out)
    return {"benchmark": "translators", "model": name, "recipe": recipe_name, "steps": summary["steps"],
            "train_s": round(t_train, 1), "reused": reused, "pred_reused": pred_reused, **row}


def _interval(d: dict, key: str = "distance") -> dict:
    base = d["real_halves"]
    return {"value": _r3(d[key]), "ci95": [_r3(d["ci_low"]), _r3(d["ci_high"])],
            "real_vs_real": _r3(base["median"]), "real_vs_real_ci95": [_r3(base["ci_low"]), _r3(base["ci_high"])]}


def _r3(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


def perceptual_row(pred: Path, manifest: Path, out: Path, fid: bool | str = "auto") -> dict:
    """Perceptual distances of a prediction folder (``cytogen evaluate perceptual`` on the test split),
    lower is better, each with its real-vs-real baseline."""
    p = evaluate_perceptual(pred, manifest, out, split="test", fid=fid)
    row = {"object_frechet": _interval(p["object_frechet"]), "patch_frechet": _interval(p["patch_frechet"])}
    f = p["fid"]
    if isinstance(f, str):
        row["fid"] = row["kid"] = f
    else:
        row["fid"] = {"value": _r3(f["fid"]), "real_vs_real": _r3(f["fid_real_halves"]["median"]),
                      "n_crops": f["n_real_crops"]}
        row["kid"] = {"mean": round(f["kid"]["mean"], 5), "sd": round(f["kid"]["sd"], 5),
                      "real_vs_real": None if f["kid_real_halves"]["median"] is None
                      else round(f["kid_real_halves"]["median"], 5)}
    return row


def score(name: str, manifest: Path, out: Path, fid: bool | str = "auto") -> dict:
    """Pixel, object and perceptual metrics of ``out/name/pred`` against the manifest's test split."""
    pix = evaluate_pixels(out / name / "pred", manifest, out / name / "eval", split="test")
    obj = evaluate_objects(out / name / "pred", manifest, out / name / "objects", split="test",
                           settings=ObjectSettings(radii=["nuclear"]), progress=False)["summary"]
    w = obj["within"][0]
    med = {k: float(np.median([r[k] for r in pix["rows"]])) for k in PIXEL_KEYS}
    return {**{f"median_{k}": round(v, 4) for k, v in med.items()},
            "recall": round(obj["recall"], 4), "precision": round(obj["precision"], 4),
            "within_nuclear_radius": round(w["fraction"], 4),
            "within_ci95": [round(w["cp_low"], 4), round(w["cp_high"], 4)],
            "nuclear_radius_px": round(w["radius_value"], 2),
            # Honest null (default): a random centroid succeeds near ANY real nucleus (union of discs).
            "chance_image_union": w["chance_image_union"], "log10_p_image_union": _r1(w["log10_p_image_union"]),
            # The paper's null (Vasudevan et al.): one disc per real nucleus over the field area.
            "chance_image_per_nucleus": w["chance_image_per_nucleus"],
            "log10_p_image_per_nucleus": _r1(w["log10_p_image_per_nucleus"]),
            "chance_region_union": w["chance_region_union"], "log10_p_region_union": _r1(w["log10_p_region_union"]),
            **perceptual_row(out / name / "pred", manifest, out / name / "perceptual", fid)}


def _r1(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=None, help="keep runs here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true",
                    help="re-score an existing --out DIR/<model>/run/model (and its pred/) instead of training")
    a = ap.parse_args()
    if a.reuse and a.out is None:
        sys.exit("--reuse needs --out DIR holding the earlier runs")
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data/sbs_translocation")
    out = Path(a.out or tempfile.mkdtemp(prefix="cytogen_translators_"))
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(DATA, "Channel1-*.tif", "Channel2-*.tif", out / "sbs.csv", test_match="-G-",
                              val_fraction=0.15, seed=0)
    rows = []
    for name in a.models.split(","):
        rows.append(run(name.strip(), manifest, out, a.minutes, reuse=a.reuse))
        print(json.dumps(rows[-1]), flush=True)
    cols = ["model", "steps", "train_s", "median_pearson_r", "median_raw_ssim", "median_raw_psnr", "median_raw_l1",
            "median_calibrated_ssim", "median_calibrated_l1", "recall", "precision", "within_nuclear_radius",
            "within_ci95", "chance_image_union", "log10_p_image_union", "object_frechet", "patch_frechet", "fid",
            "kid"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    print("\nPerceptual distances (lower is better): value [95 % field-bootstrap interval] (real vs real: median "
          "over random halves of the real test fields, a conservative reference); FID/KID on 256 px crops.")


def _cell(v) -> str:
    """A table cell: a distance as ``value [low, high] (real vs real)``, KID as ``mean +- sd``."""
    if isinstance(v, dict) and "ci95" in v:
        return f"{v['value']} [{v['ci95'][0]}, {v['ci95'][1]}] (rvr {v['real_vs_real']})"
    if isinstance(v, dict) and "mean" in v:
        return f"{v['mean']} +- {v['sd']} (rvr {v['real_vs_real']})"
    if isinstance(v, dict):
        return f"{v['value']} (rvr {v['real_vs_real']})"
    return str(v)


if __name__ == "__main__":
    main()
