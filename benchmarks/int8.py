"""int8 vs float32 prediction on real SBS fields: speed, and whether the scores stay the same.

Predicts the test fields (plate row G) of ``../shared/data/sbs_translocation`` (GFP -> Hoechst)
with a trained 2D U-Net three ways, interleaved field by field so a noisy neighbour slows all
alike: float32 PyTorch (``cytogen predict``'s fast path: channels-last, float32 here),
float32 ONNX Runtime, and int8 ONNX Runtime (QDQ static quantisation, per-channel weights,
calibrated on the first batch of tiles of the first field, as ``cytogen predict --precision
int8`` does; more ``--methods`` add one int8 variant per calibration method, ``--spread N`` one
calibrated on N tiles on a grid over the first field). The int8 variants' time excludes the
float32 runs of their check on the first two batches (reported apart, ``check_s``). Same
tiling for all (the model's recipe). Reports per variant the throughput (Mpx/s of input field, tiling and
blending included, export and quantisation excluded and reported apart), the median Pearson r
against the real Hoechst image, the object recall (nuclei found within one nuclear radius, as
``benchmarks/translators.py``) and the int8-vs-float32 agreement that ``cytogen predict`` checks
(normalised RMS error on its first two batches, and over whole fields). The last line says whether
each variant's median r and recall equal float32 PyTorch's to the second decimal.

    python benchmarks/int8.py [--model RUN/model] [--methods minmax,entropy] [--out DIR]

int8 runs here whatever the CPU (the benchmark measures it); ``cytogen predict`` refuses it on
CPUs without fast int8 instructions (see ``cytogen.runtime.int8``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _bench import SHARED, Timer, emit, note
from cytogen.data.manifest import build_manifest, read_manifest
from cytogen.evaluate.pipeline import ObjectSettings
from cytogen.io.images import Image, read_spec, write_image
from cytogen.predict.defaults import resolve_tiling
from cytogen.predict.model_folder import load_model_folder
from cytogen.predict.onnx_backend import (INT8_TOLERANCE, Int8TileFn, agreement, export_onnx, onnx_fn,
                                          ort_session)
from cytogen.predict.tiling import predict_tiled
from cytogen.runtime import resolve_runtime
from cytogen.runtime.inference import inference_fn
from cytogen.runtime.int8 import cpu_flags, fast_int8_flags
from cytogen.workflows.evaluate import evaluate_pixels
from cytogen.workflows.evaluate_objects import evaluate_objects

DATA = SHARED / "sbs_translocation"
MODEL = Path("/work/sbs15/w16/run/model")


def _r2(v: float) -> float:
    return float(np.round(v + 1e-12, 2))  # round half up at the second decimal, as printed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL), help="a trained 2D translation model folder")
    ap.add_argument("--methods", default="auto,minmax,percentile",
                    help="int8 calibration methods, one variant each (comma-separated; auto is "
                         "cytogen predict's: the better of minmax and percentile on the first batch)")
    ap.add_argument("--spread", type=int, default=16,
                    help="also an int8 variant calibrated on this many tiles spread over the first "
                         "field (a grid), not its first batch; 0: none")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (default: all CPUs)")
    ap.add_argument("--out", default=None, help="keep predictions here (default: a temporary folder)")
    a = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data/sbs_translocation")
    if not Path(a.model).is_dir():
        sys.exit(f"{a.model} not found: train one with cytogen train configs/translate_unet2d.yaml "
                 "--data sbs.csv --out DIR (then --model DIR/model)")
    out = Path(a.out or tempfile.mkdtemp(prefix="cytogen_int8_"))
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(DATA, "Channel1-*.tif", "Channel2-*.tif", out / "sbs.csv", test_match="-G-",
                              val_fraction=0.15, seed=0)
    settings = resolve_runtime("32", accelerator="cpu")
    if a.threads:
        settings.threads = a.threads
    settings.apply()
    model = load_model_folder(a.model)
    plan = resolve_tiling(model)
    fields = [e for e in read_manifest(manifest) if e.split == "test"]
    images = [read_spec(e.source[0]) for e in fields]
    xs = [model.source_norm.normalize(im.data) for im in images]
    flags = cpu_flags()
    note(f"{len(fields)} test fields {images[0].spatial_shape}, tile {plan.tile}, batch {plan.batch_size}, "
         f"{settings.threads} threads, fast int8 flags: {fast_int8_flags(flags) or 'none'}")

    net = model.net.eval()
    example = torch.from_numpy(np.stack([xs[0][:, :plan.tile[0], :plan.tile[1]]] * 2).astype(np.float32))
    with Timer() as t_export:
        fp32_path = export_onnx(net, example, out / "fp32.onnx", net.size_multiple)
    fp32_bytes = fp32_path.read_bytes()
    fns = {"torch_fp32": inference_fn(net, 2, settings),
           "ort_fp32": onnx_fn(ort_session(fp32_bytes, settings.threads))}
    int8 = {}
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        # tolerance inf: measure int8 even where cytogen predict would refuse it (reported below)
        int8[method] = Int8TileFn(net, settings.threads, net.size_multiple, tolerance=float("inf"),
                                  method=method, onnx_model=fp32_bytes)
        fns[f"ort_int8_{method}"] = int8[method]
    grid = _grid_tiles(xs[0], plan.tile, a.spread) if a.spread else None
    if grid is None:
        note("no spread-calibrated int8 variant: the tile covers the whole field (its first batch "
             "is the field), or --spread 0")
    else:
        fns[f"ort_int8_minmax_spread{len(grid)}"] = Int8TileFn(
            net, settings.threads, net.size_multiple, tolerance=float("inf"), calibration=grid,
            onnx_model=fp32_bytes)
    seconds = dict.fromkeys(fns, 0.0)
    setup_s: dict[str, float] = {}
    preds: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    with torch.inference_mode():
        for i, x in enumerate(xs):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                y = predict_tiled(fn, x, tile=plan.tile, overlap=plan.overlap, batch_size=plan.batch_size,
                                  size_multiple=net.size_multiple, out_channels=model.out_channels,
                                  blend=plan.blend, margin=plan.margin, balance=plan.balance)
                seconds[name] += time.perf_counter() - t0
                if i == 0 and name.startswith("ort_int8_"):  # quantised at its first call: not predicting
                    setup_s[name] = fn.report["int8_prepare_s"]
                    seconds[name] -= setup_s[name]
                preds[name].append(model.target_norm.denormalize(y))
            note(f"[{i + 1}/{len(xs)}] {fields[i].name}")
    for name, fn in fns.items():  # the float32 runs of the int8 check are not int8 predicting either
        if name.startswith("ort_int8_"):
            seconds[name] -= fn.report.get("int8_check_s", 0.0)

    mpx = sum(x.shape[1] * x.shape[2] for x in xs) / 1e6
    ref = "torch_fp32"
    rows = {}
    for name in fns:
        folder = out / "pred" / name
        for e, im, y in zip(fields, images, preds[name]):
            write_image(folder / f"{e.name}.tif", Image(y, im.axes, im.pixel_size_um,
                                                        list(model.meta.get("target_channels") or [])))
        pix = evaluate_pixels(folder, manifest, out / "eval" / name, split="test")
        obj = evaluate_objects(folder, manifest, out / "objects" / name, split="test",
                               settings=ObjectSettings(radii=["nuclear"]), progress=False)["summary"]
        vs_fp32 = [agreement(y, y32) for y, y32 in zip(preds[name], preds["ort_fp32"])]
        row = {"benchmark": "int8", "variant": name, "fields": len(xs), "field_mpx": round(mpx, 3),
               "predict_s": round(seconds[name], 2), "mpx_per_s": round(mpx / seconds[name], 4),
               "speed_vs_torch_fp32": round(seconds[ref] / seconds[name], 3),
               "median_pearson_r_vs_truth": round(float(np.median([r["pearson_r"] for r in pix["rows"]])), 4),
               "object_recall": round(obj["recall"], 4), "object_precision": round(obj["precision"], 4),
               "within_nuclear_radius": round(obj["within"][0]["fraction"], 4),
               "field_nrmse_vs_ort_fp32_median": round(float(np.median([v["nrmse"] for v in vs_fp32])), 5),
               "field_nrmse_vs_ort_fp32_max": round(float(max(v["nrmse"] for v in vs_fp32)), 5),
               "field_pearson_r_vs_ort_fp32_min": round(float(min(1 - v["one_minus_r"] for v in vs_fp32)), 6)}
        if name == "ort_fp32":
            row["export_s"] = round(t_export.seconds, 1)
        if name in setup_s:
            fn = fns[name]
            row.update(quantise_s=round(setup_s[name], 1), check_s=fn.report.get("int8_check_s"),
                       calibration_tiles=fn.report["int8_calibration_tiles"],
                       checked_nrmse=fn.report["int8_nrmse"], checked_tiles=fn.report["int8_checked_tiles"],
                       tolerance_nrmse=INT8_TOLERANCE,
                       cytogen_predict_would_accept=bool(fn.report["int8_nrmse"] <= INT8_TOLERANCE))
        rows[name] = row
        emit(row)
    base = rows[ref]
    emit({"benchmark": "int8", "summary": True, "cpu_fast_int8_flags": list(fast_int8_flags(flags)),
          "threads": settings.threads, "tile": list(plan.tile), "batch_size": plan.batch_size,
          "agree_to_2nd_decimal_with_torch_fp32": {
              name: {"median_pearson_r": _r2(r["median_pearson_r_vs_truth"]) == _r2(base["median_pearson_r_vs_truth"]),
                     "object_recall": _r2(r["object_recall"]) == _r2(base["object_recall"])}
              for name, r in rows.items() if name != ref},
          "int8_mpx_per_s_over_ort_fp32": {name: round(r["mpx_per_s"] / rows["ort_fp32"]["mpx_per_s"], 3)
                                           for name, r in rows.items() if name.startswith("ort_int8_")}})



def _grid_tiles(x: np.ndarray, tile: tuple[int, ...], n: int) -> np.ndarray | None:
    """About ``n`` tiles of ``x`` (C, Y, X) on a regular grid spanning the field; None when one
    tile covers the field."""
    if all(t >= s for t, s in zip(tile, x.shape[1:])):
        return None
    tile = tuple(min(t, s) for t, s in zip(tile, x.shape[1:]))
    k = max(1, int(round(np.sqrt(n))))
    ys = np.linspace(0, x.shape[1] - tile[0], k).astype(int)
    xs = np.linspace(0, x.shape[2] - tile[1], k).astype(int)
    return np.stack([x[:, y:y + tile[0], c:c + tile[1]] for y in ys for c in xs]).astype(np.float32)


if __name__ == "__main__":
    main()
