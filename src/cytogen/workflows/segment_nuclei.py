"""``cytogen segment nuclei``: instance labels from a trained nucleus segmenter.

Each image is normalised as in training and predicted tile by tile (the translator's tiling,
blending and precision); the three class logits become probabilities (softmax) and then
instances by a seeded watershed (:func:`cytogen.segment.instances.classes_to_instances`).
Writes ``OUT/<name>.tif`` (uint16 labels with the pixel size) or, with ``output_format="ome-zarr"``,
``OUT/<name>.ome.zarr`` (the image that was segmented, its channels and pixel size, with the
labels as NGFF ``labels/nuclei``; :func:`cytogen.io.ome_zarr.write_ome_zarr`), and
``OUT/nuclei.csv`` (name, n_nuclei, seconds, pixel size).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.io.atomic import write_json, write_text
from cytogen.io.images import Image, read_spec, stack_channels, write_image
from cytogen.io.ome_zarr import write_ome_zarr
from cytogen.predict.model_folder import LoadedModel, load_nucleus_segmenter
from cytogen.runtime import resolve_runtime
from cytogen.segment.instances import classes_to_instances
from cytogen.workflows.predict import (
    OUTPUT_FORMATS,
    check_out_folder,
    image_jobs,
    pixel_size,
    predict_image,
)

#: ``instances`` settings that may be changed at segmentation time (the rest shaped the training).
INFERENCE_KEYS = ("fg_threshold", "seed_threshold", "min_size_px", "min_size_um2")


def resolve_instances(model: LoadedModel, settings: dict[str, Any] | None) -> dict[str, Any]:
    """The model's ``instances`` section with inference-time ``settings`` over it (checked)."""
    from cytogen.config import recipe_from_dict

    settings = dict(settings or {})
    bad = sorted(set(settings) - set(INFERENCE_KEYS))
    if bad:
        raise CytogenError(f"segment nuclei: instances.{bad[0]} shaped the training and cannot change here; "
                           f"set one of {list(INFERENCE_KEYS)}")
    merged = {**model.meta.get("instances", {}), **settings}
    return vars(recipe_from_dict({"instances": merged}, "segment nuclei --set").instances)


def min_size_px(inst: dict[str, Any], pixel_um: tuple[float, ...] | None) -> float:
    """``min_size_um2`` (um^2, um^3 in 3D) in pixels where the pixel size is known, else ``min_size_px``."""
    if inst.get("min_size_um2") is not None and pixel_um:
        return float(inst["min_size_um2"]) / float(np.prod(pixel_um))
    return float(inst["min_size_px"])


def segment_image(model: LoadedModel, image: Image, inst: dict[str, Any], *, source: str = "image",
                  settings: Any = None) -> np.ndarray:
    """``int32`` instance labels of one image (spatial shape) from a nucleus segmenter."""
    logits = predict_image(model, image, source=source, settings=settings)
    z = logits - logits.max(axis=0, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=0, keepdims=True)
    return classes_to_instances(probs, fg_threshold=inst["fg_threshold"], seed_threshold=inst["seed_threshold"],
                                min_size_px=min_size_px(inst, image.pixel_size_um))


def segment_nuclei(model_dir: str | Path, files: list[str] | None = None, *, data: str | Path | None = None,
                   split: str | None = None, out: str | Path, settings: dict[str, Any] | None = None,
                   precision: str = "auto", output_format: str = "tif",
                   progress: bool = True) -> dict[str, Any]:
    """Segment nuclei in image ``files`` or the ``source`` images of manifest ``data``.

    Parameters
    ----------
    model_dir
        ``RUN/model`` of ``cytogen train configs/segment_nuclei2d.yaml``.
    files, data, split
        The images: files, or a manifest's rows (``split``; default test where there is one).
    out
        Output folder (not inside an input folder).
    settings
        ``instances`` inference settings over the model's (:data:`INFERENCE_KEYS`).
    precision
        Run-time precision (``auto``: bf16 where it is faster).
    output_format
        ``"tif"``: ``OUT/<name>.tif`` uint16 labels; ``"ome-zarr"``: ``OUT/<name>.ome.zarr``, the
        image with the labels as NGFF ``labels/nuclei`` (pyramids in both).

    Returns
    -------
    dict
        ``out``, ``n_images``, ``n_nuclei``, ``seconds``, ``instances`` (the settings used);
        also written to ``OUT/summary.json``.
    """
    if output_format not in OUTPUT_FORMATS:
        raise CytogenError(f"segment nuclei: output format {output_format!r} is not one of "
                           f"{', '.join(OUTPUT_FORMATS)}")
    run_settings = resolve_runtime(precision)
    model = load_nucleus_segmenter(model_dir)
    inst = resolve_instances(model, settings)
    jobs = image_jobs(files, data, split)
    out = Path(out)
    check_out_folder(out, jobs)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    run_settings.apply()
    rows, t0 = [], time.perf_counter()
    try:
        for i, (name, specs, pixel_um) in enumerate(jobs, 1):
            t = time.perf_counter()
            image = stack_channels([read_spec(s) for s in specs])
            image.pixel_size_um = pixel_size(image.pixel_size_um, pixel_um, len(image.axes) - 1)
            labels = segment_image(model, image, inst, source=specs[0], settings=run_settings)
            if labels.max() > np.iinfo(np.uint16).max:
                raise CytogenError(f"{specs[0]}: {labels.max()} nuclei do not fit a uint16 label image; "
                                   "segment smaller fields")
            if output_format == "ome-zarr":
                write_ome_zarr(out / f"{name}.ome.zarr", image.data, image.axes, image.pixel_size_um,
                               image.channel_names, "zlib", labels={"nuclei": labels.astype(np.uint16)})
            else:
                write_image(out / f"{name}.tif", Image(labels[None].astype(np.uint16), image.axes,
                                                       image.pixel_size_um, ["nuclei"]))
            rows.append({"name": name, "n_nuclei": int(labels.max()), "seconds": round(time.perf_counter() - t, 2),
                         "pixel_size_um": ";".join(f"{v:g}" for v in image.pixel_size_um or ())})
            if progress:
                print(f"[{i}/{len(jobs)}] {name}: {rows[-1]['n_nuclei']} nuclei ({rows[-1]['seconds']} s)",
                      file=sys.stderr)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(out / "nuclei.csv", buf.getvalue())
    summary = {"out": str(out), "model": str(model_dir), "n_images": len(rows),
               "n_nuclei": int(sum(r["n_nuclei"] for r in rows)), "seconds": round(time.perf_counter() - t0, 1),
               "instances": inst, "output_format": output_format}
    write_json(out / "summary.json", summary)
    return summary
