"""ONNX Runtime against PyTorch on real fields, through cytogen's tiling: agreement and speed.

For every field of the manifest's split (default ``test``: the 12 row-G SBS fields of
``/work/sbs15/sbs.csv`` for the model ``/work/sbs15/w16t/run/model``), the model predicts the
whole field three ways, with one tiling plan (the model's own, resolved once):

* ``torch``: :func:`cytogen.workflows.predict.predict_image` with the PyTorch backend (float32,
  BatchNorm folded, the layout the probe picks), as ``cytogen predict`` does;
* ``onnxruntime``: the same with ``backend="onnxruntime"`` (``cytogen predict --backend
  onnxruntime``: the network is exported on the first tile batch, then run by ONNX Runtime);
* ``exported_onnx``: the file ``cytogen export --format onnx`` writes
  (:func:`cytogen.predict.onnx_export.write_onnx`), loaded in an ONNX Runtime session and run
  through the same tiling (:func:`cytogen.predict.tiling.predict_tiled`) and normalisation.

Agreement per field is ``rel_range = max|ort - torch| / (max(torch) - min(torch))`` over all
pixels and channels of the denormalised predictions (target units). Seconds per field are wall
times of each backend's whole-field prediction (normalisation, tiling, blending); the ONNX
backend's one-off export is reported apart (``onnx_export_s``) and left out of its first field.

    python benchmarks/onnx_parity.py [--model RUN/model] [--data sbs.csv] [--split test]

Prints one JSON line per field and backend pair, then a summary line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _bench import emit, note
from _cli import cpu_features
from cytogen.data.manifest import read_manifest
from cytogen.io.images import read_spec, stack_channels
from cytogen.predict.defaults import resolve_tiling
from cytogen.predict.model_folder import load_model_folder
from cytogen.predict.onnx_backend import onnx_fn, ort_session
from cytogen.predict.onnx_export import write_onnx
from cytogen.predict.tiling import predict_tiled
from cytogen.runtime import resolve_runtime
from cytogen.workflows.predict import predict_image

DEFINITION = "max|ort - torch| / (max(torch) - min(torch)), all pixels and channels, target units"


def _rel(y: np.ndarray, ref: np.ndarray) -> float:
    span = float(ref.max() - ref.min())
    return float(np.abs(y.astype(np.float64) - ref).max()) / (span if span > 0 else 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/work/sbs15/w16t/run/model")
    ap.add_argument("--data", default="/work/sbs15/sbs.csv")
    ap.add_argument("--split", default="test")
    a = ap.parse_args()
    entries = [e for e in read_manifest(a.data, require_target=False) if e.split == a.split]
    model = load_model_folder(a.model)
    torch_settings = resolve_runtime("32", accelerator="cpu", inference=True, backend="torch")
    ort_settings = resolve_runtime("32", accelerator="cpu", inference=True, backend="onnxruntime")
    plan = resolve_tiling(model)
    emit({"bench": "onnx_parity", "model": str(a.model), "data": str(a.data), "split": a.split,
          "fields": len(entries), "threads": torch_settings.threads, "tiling": plan.to_dict(),
          "definition": DEFINITION, **cpu_features(),
          "note": "CPU shared with other jobs during the run: timings are under load"})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exported = write_onnx(model, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        session = ort_session(Path(exported["out"]).read_bytes(), ort_settings.threads)
    file_fn = onnx_fn(session)
    rows = []
    for i, e in enumerate(entries):
        images = [read_spec(s) for s in e.source]
        image = images[0] if len(images) == 1 else stack_channels(images)
        p = plan.for_image(image.spatial_shape)
        t0 = time.perf_counter()
        ref = predict_image(model, image, source=e.name, settings=torch_settings, plan=p)
        t_torch = time.perf_counter() - t0
        t0 = time.perf_counter()
        ort = predict_image(model, image, source=e.name, settings=ort_settings, plan=p)
        t_ort = time.perf_counter() - t0
        if i == 0:  # the backend exported the network on its first batch
            t_ort -= float(ort_settings.probe.get("onnx_export_s", 0.0))
        t0 = time.perf_counter()
        x = model.source_norm.normalize(image.data)
        y = predict_tiled(file_fn, x, tile=p.tile, overlap=p.overlap, batch_size=p.batch_size,
                          size_multiple=model.net.size_multiple, out_channels=model.out_channels,
                          blend=p.blend, margin=p.margin, balance=p.balance)
        exp = model.target_norm.denormalize(y)
        t_file = time.perf_counter() - t0
        row = {"field": e.name, "shape": list(image.spatial_shape),
               "rel_range_onnxruntime": _rel(ort, ref), "rel_range_exported_onnx": _rel(exp, ref),
               "s_torch": round(t_torch, 3), "s_onnxruntime": round(t_ort, 3),
               "s_exported_onnx": round(t_file, 3)}
        rows.append(row)
        emit(row)
    emit({"summary": "onnx_parity", "definition": DEFINITION, "fields": len(rows),
          "max_rel_range_onnxruntime": max(r["rel_range_onnxruntime"] for r in rows),
          "max_rel_range_exported_onnx": max(r["rel_range_exported_onnx"] for r in rows),
          "median_s_torch": float(np.median([r["s_torch"] for r in rows])),
          "median_s_onnxruntime": float(np.median([r["s_onnxruntime"] for r in rows])),
          "median_s_exported_onnx": float(np.median([r["s_exported_onnx"] for r in rows])),
          "onnx_export_s_backend": ort_settings.probe.get("onnx_export_s"),
          "onnx_export_s_file": round(export_s, 2), "export_check_rel_range": exported["parity_rel_range"],
          "passes_1e-4": all(r["rel_range_onnxruntime"] <= 1e-4 and r["rel_range_exported_onnx"] <= 1e-4
                             for r in rows)})
    note(f"{len(rows)} fields; {DEFINITION}")


if __name__ == "__main__":
    main()
