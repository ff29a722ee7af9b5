"""``cytogen synthesize from-masks``: realistic images with exact masks, for training segmenters.

Random layouts of real nucleus shapes (:mod:`cytogen.synth.mask_layouts`) are turned into images
by a masks -> image generator (``cytogen train configs/masks2nuclei.yaml``; its label input is
spread over the mask channels it was trained with). The folder is built whole and swapped in:

- ``images/<name>.tif``: the generated image (float32, the generator's target channels, pixel size);
- ``labels/<name>.tif``: the exact instance labels (uint16);
- ``manifest.csv``: ``name, source, target, split, pixel_size_um`` (source = image, target =
  labels; the last ``val_fraction`` of the images are ``val``): it trains
  ``configs/segment_nuclei2d.yaml`` directly;
- ``summary.json``: counts, achieved density / area fraction, the settings and the time;
- ``preview.png``: the first images' masks on channels, generated image and label outlines.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir, write_json, write_text
from cytogen.io.images import Image, read_spec, write_image
from cytogen.predict.model_folder import load_model_folder
from cytogen.runtime import resolve_runtime
from cytogen.synth.mask_layouts import ShapeLibrary, random_layout
from cytogen.workflows.predict import predict_image


def read_shape_library(specs: list[str], pixel_size_um: float | None = None) -> ShapeLibrary:
    """Whole nuclei of label image files, resampled to the first file's pixel size (``pixel_size_um``
    overrides the files' own; files without one are taken as they are)."""
    if not specs:
        raise CytogenError("give one or more label images with --shapes")
    libs = []
    for spec in specs:
        img = read_spec(spec)
        px = pixel_size_um if pixel_size_um is not None else (img.pixel_size_um[-1] if img.pixel_size_um else None)
        libs.append(ShapeLibrary.from_labels([img.data], px, name=spec))
    base = libs[0].pixel_size_um
    shapes = [s for lib in libs for s in lib.at_pixel_size(base).shapes]
    return ShapeLibrary(shapes, base)


def synthesize_from_masks(model_dir: str | Path, shapes: list[str], out: str | Path, *, n_images: int = 8,
                          size: int = 512, density: float | None = None, area_fraction: float | None = None,
                          pixel_size_um: float | None = None, max_overlap: float = 0.0, clustered: float = 0.0,
                          val_fraction: float = 0.1, seed: int = 0, precision: str = "auto",
                          progress: bool = True) -> dict[str, Any]:
    """Write ``n_images`` synthetic images with their labels and a manifest into the new folder ``out``.

    Parameters
    ----------
    model_dir
        A masks -> image model folder (trained with ``data.mask_channels``).
    shapes
        Label images whose whole objects form the shape library.
    size
        Canvas side in pixels.
    density, area_fraction
        Nuclei per 100 x 100 um (needs a pixel size) or the labelled fraction of the canvas; one.
    pixel_size_um
        Pixel size of the label images and canvases when their files do not record one; the
        canvas is otherwise at the generator's training pixel size (shapes resampled to it).
    max_overlap, clustered
        See :func:`cytogen.synth.mask_layouts.random_layout`.
    val_fraction
        Fraction of the images marked ``split = val`` in the manifest.
    seed
        Image ``i`` uses layout generator ``[seed, i]``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CytogenError(f"{out}: exists and is not empty; choose a new --out folder")
    if n_images < 1 or size < 8:
        raise CytogenError("--n-images must be >= 1 and --size >= 8")
    if not 0.0 <= val_fraction < 1.0:
        raise CytogenError(f"--val-fraction is {val_fraction}; it must be in [0, 1)")
    settings = resolve_runtime(precision)
    model = load_model_folder(model_dir)
    if model.mask_channels is None or model.dims != 2:
        raise CytogenError(f"{model_dir}: not a 2D masks -> image model; train one with "
                           "'cytogen train configs/masks2nuclei.yaml' (data.mask_channels)")
    library = read_shape_library(shapes, pixel_size_um)
    model_px = (model.meta.get("pixel_size_um") or [None])[-1]
    px = model_px if model_px is not None else library.pixel_size_um  # the generator's scale wins
    library = library.at_pixel_size(px)
    settings.apply()
    n_val = math.ceil(val_fraction * n_images) if val_fraction else 0
    rows, counts, t0 = [], [], time.perf_counter()
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        for i in range(n_images):
            t = time.perf_counter()
            rng = np.random.default_rng([seed, i])
            labels, placed = random_layout(library, size, density=density, area_fraction=area_fraction,
                                           pixel_size_um=px, max_overlap=max_overlap, clustered=clustered, rng=rng)
            ps = (px, px) if px else None
            image = predict_image(model, Image(labels[None], "CYX", ps), source=f"layout {i}", settings=settings)
            name = f"synth_{i:04d}"
            write_image(tmp / "images" / f"{name}.tif",
                        Image(image.astype(np.float32), "CYX", ps, model.meta.get("target_channels") or None))
            write_image(tmp / "labels" / f"{name}.tif", Image(labels[None].astype(np.uint16), "CYX", ps, ["nuclei"]))
            rows.append({"name": name, "source": f"images/{name}.tif", "target": f"labels/{name}.tif",
                         "split": "val" if i >= n_images - n_val else "train", "pixel_size_um": px or ""})
            counts.append((len(placed), float((labels > 0).mean())))
            if progress:
                print(f"[{i + 1}/{n_images}] {name}: {len(placed)} nuclei, {100 * counts[-1][1]:.1f} % of the area "
                      f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        write_text(tmp / "manifest.csv", buf.getvalue())
        n = np.array([c[0] for c in counts])
        summary = {
            "out": str(out), "model": str(model_dir), "n_images": n_images, "size": size, "pixel_size_um": px,
            "n_shapes": len(library), "n_nuclei": int(n.sum()), "nuclei_per_image": float(n.mean()),
            "nuclei_per_100x100um": (float(n.mean() / (size * size * px * px / 1e4)) if px else None),
            "area_fraction": float(np.mean([c[1] for c in counts])),
            "settings": {"density": density, "area_fraction": area_fraction, "max_overlap": max_overlap,
                         "clustered": clustered, "seed": seed, "val_fraction": val_fraction},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json(tmp / "summary.json", summary)
        _preview(tmp, rows[:3], model.mask_channels)
    return summary


def _preview(folder: Path, rows: list[dict], encoder: Any) -> None:
    """``preview.png``: masks on channels, generated image and label outlines of the first images."""
    from cytogen.io.images import read_image
    from cytogen.report.figures import save_figure
    from cytogen.report.mask_figures import synthetic_preview_figure

    samples = []
    for r in rows:
        image, labels = read_image(folder / r["source"]).data[0], read_image(folder / r["target"]).data[0]
        stack = encoder.encode(labels.astype(np.int64))[:encoder.channels]
        samples.append((r["name"], image, labels, stack))
    save_figure(synthetic_preview_figure(samples), folder / "preview.png")
