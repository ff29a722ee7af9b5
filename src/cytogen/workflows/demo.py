"""``cytogen demo``: synthetic cells -> actin->nucleus U-Net -> predictions -> metrics -> report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from cytogen.config import bundled_recipe, load_recipe
from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import read_image, read_spec, stack_channels
from cytogen.report.figures import loss_curve_figure, metric_hist_figure, panels_figure
from cytogen.report.html import Section, write_report
from cytogen.synth.cells import write_synthetic_dataset
from cytogen.workflows.evaluate import evaluate_pixels, median_metric, pixel_summary_table, write_json
from cytogen.workflows.evaluate_objects import evaluate_objects, object_sections
from cytogen.workflows.predict import predict
from cytogen.workflows.train import read_loss_log, train

PEARSON_BAR = 0.8


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def prediction_panels(manifest: Path, pred_dir: Path, names: list[str]) -> Any:
    """Figure with input / prediction / truth for each named field."""
    entries = {e.name: e for e in read_manifest(manifest)}
    rows = []
    for n in names:
        e = entries[n]
        src = stack_channels([read_spec(s) for s in e.source]).data
        tgt = stack_channels([read_spec(s) for s in e.target]).data
        rows.append((n, [("input", src), ("prediction", read_image(pred_dir / f"{n}.tif").data),
                         ("truth", tgt)]))
    return panels_figure(rows)


def demo(out: str | Path, *, n_fields: int = 24, size: int = 256, seed: int = 0,
         max_steps: int | None = None, max_minutes: float | None = None,
         overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole path on built-in synthetic cells and write ``OUT/report.html``.

    Returns the dict also written to ``OUT/metrics.json``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CytogenError(f"{out}: folder exists and is not empty; choose a new --out or delete it")
    t0 = time.perf_counter()
    _log(f"synthesising {n_fields} fields of {size}x{size} px (seed {seed})")
    manifest = write_synthetic_dataset(out / "data", n_fields=n_fields, shape=(size, size), seed=seed,
                                       progress=progress)
    t_synth = time.perf_counter() - t0
    recipe = load_recipe(bundled_recipe("demo_actin_nucleus"), overrides)
    if max_steps is not None:
        recipe.train.max_steps = max_steps
    if max_minutes is not None:
        recipe.train.max_time_min = max_minutes
    _log(f"training an actin -> nucleus U-Net (at most {recipe.train.max_steps} steps, "
         f"{recipe.train.max_time_min} min)")
    summary = train(recipe, manifest, out / "run", progress=progress)
    t_train = time.perf_counter() - t0 - t_synth
    _log("predicting held-out fields")
    written = predict(out / "run" / "model", out / "predictions", data=manifest, split="test",
                      progress=progress)
    _log("evaluating")
    result = evaluate_pixels(out / "predictions", manifest, out / "evaluation", split="test")
    med_r = median_metric(result, "pearson_r")
    _log("evaluating objects (nuclei found, matched, measured)")
    objects = evaluate_objects(out / "predictions", manifest, out / "objects", split="test", progress=False)
    osum = objects["summary"]
    total = time.perf_counter() - t0
    metrics = {
        "median_pearson_r": med_r, "passes_bar": med_r >= PEARSON_BAR, "bar": PEARSON_BAR,
        "n_test_fields": result["n_fields"],
        "pixel_metrics": {"units": result["units"], "families": result["families"],
                          "median_raw": {k: median_metric(result, k) for k in
                                         ("raw_l1", "raw_mse", "raw_ssim", "raw_psnr")},
                          "median_calibrated": {k: median_metric(result, k) for k in
                                                ("calibrated_l1", "calibrated_mse", "calibrated_ssim",
                                                 "calibrated_psnr")}},
        "summary": result["metrics"],
        "objects": {k: osum[k] for k in ("n_true", "n_pred", "n_matched", "recall", "precision",
                                           "median_distance", "unit", "within")},
        "train_steps": summary["steps"], "seconds": {"synthesize": round(t_synth, 1),
                                                     "train": round(t_train, 1),
                                                     "total": round(total, 1)},
    }
    write_json(out / "metrics.json", metrics)
    write_demo_report(out, manifest, result, objects, [p.name.split(".")[0] for p in written][:4],
                      summary["steps"], t_train, total)
    _log(f"median Pearson r {med_r:.3f}; report: {out / 'report.html'} ({total:.0f} s)")
    return metrics


def write_demo_report(out: Path, manifest: Path, result: dict[str, Any], objects: dict[str, Any],
                      names: list[str], steps: int, t_train: float, total: float) -> Path:
    """``OUT/report.html`` of a demo run from its pieces (pixel and object evaluations, the run's
    loss log in ``OUT/run``, predictions in ``OUT/predictions``; ``names``: fields shown as panels)."""
    med_r = median_metric(result, "pearson_r")
    table = pixel_summary_table(result)
    sections = [
        Section("Summary", [
            f"Median Pearson r on {result['n_fields']} held-out synthetic fields: {med_r:.3f} "
            f"(bar {PEARSON_BAR}: {'met' if med_r >= PEARSON_BAR else 'NOT met'}).",
            f"{steps} training steps in {t_train:.0f} s; whole demo {total:.0f} s.",
            f"Pixel metrics: {result['units']}. raw = {result['families']['raw']}; "
            f"{result['families']['calibrated']}.",
        ], tables=[("Pixel metrics over held-out fields (raw: prediction as given; "
                    "calibrated: affine fit to the truth, flatters)", table)]),
        Section("Input / prediction / truth", ["Actin (input), predicted nucleus, true nucleus."],
                figures=[("held-out fields", prediction_panels(manifest, out / "predictions", names))]),
        Section("Training", figures=[("loss curve", loss_curve_figure(read_loss_log(out / "run")))]),
        Section("Per-field metrics", tables=[("per field", result["rows"])],
                figures=[("distribution over fields", metric_hist_figure(
                    {k: [r[k] for r in result["rows"]] for k in
                     ("pearson_r", "raw_ssim", "raw_l1", "calibrated_ssim", "calibrated_l1")}))]),
    ] + object_sections(objects)
    return write_report(out / "report.html", "cytogen demo: actin -> nucleus on synthetic cells", sections,
                        subtitle=f"data: {manifest}; model: {out / 'run' / 'model'}")
