"""``cytogen synthesize from-masks``: realistic images with exact masks, for training segmenters.

Random layouts of real nucleus shapes (:mod:`cytogen.synth.mask_layouts`) are turned into images
by a masks -> image generator (``cytogen train configs/masks2nuclei.yaml``; its label input is
spread over the mask channels it was trained with). The folder is built whole and swapped in:

- ``images/<name>.tif``: the generated image (float32, the generator's target channels, pixel size);
- ``labels/<name>.tif``: the exact instance labels (uint16);
- ``manifest.csv``: ``name, source, target, split, pixel_size_um, group`` (source = image,
  target = labels; the last ``val_fraction`` of the images are ``val``; group = the shapes' source,
  ``shapesK`` for ``--mix per-image``, else ``all``): it trains ``configs/segment_nuclei2d.yaml``
  directly;
- ``summary.json``: counts, achieved density / area fraction, the settings, the time, and per
  image its nuclei, area fraction, scale and shape source;
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
    """Whole nuclei of label image files (2D or 3D), resampled to the first file's pixel size
    (``pixel_size_um`` overrides the files' own; files without one are taken as they are). Each
    shape remembers the file it came from (``sources``: the index into ``specs``)."""
    if not specs:
        raise CytogenError("give one or more label images with --shapes (or a shape model with --shape-model)")
    libs = []
    for spec in specs:
        img = read_spec(spec)
        px = pixel_size_um if pixel_size_um is not None else (img.pixel_size_um[-1] if img.pixel_size_um else None)
        dz = img.pixel_size_um[0] if img.axes == "CZYX" and img.pixel_size_um else None
        libs.append(ShapeLibrary.from_labels([img.data], px, name=spec, z_step_um=dz))
    return _merge(libs)


def _merge(libs: list[ShapeLibrary]) -> ShapeLibrary:
    """One library of several, at the first one's pixel size; each library's sources follow the
    previous ones' (a single-file library is one source)."""
    if len({lib.ndim for lib in libs}) > 1:
        raise CytogenError("the shapes mix 2D and 3D label images; give one kind")
    base = libs[0]
    shapes, sources, offset = [], [], 0
    for lib in libs:
        r = lib.at_pixel_size(base.pixel_size_um)
        shapes += r.shapes
        sources += [offset + s for s in r.sources]
        offset += max(lib.sources) + 1
    return ShapeLibrary(shapes, base.pixel_size_um, sources, base.z_step_um)


def shapes_from_model(model_dir: str | Path, n: int, *, channel: str = "dna", seed: int = 0,
                      min_area_px: int = 10) -> ShapeLibrary:
    """``n`` new nucleus (or cell) shapes sampled from a trained Statistical Cell reference model.

    Latents are drawn from the prior, decoded, and the ``channel`` image (``dna``: the nucleus,
    ``cell``: the cell) thresholded at 0.5; the largest connected object, holes filled, is the
    shape, at the crops' pixel size. Draws whose object touches the crop edge or is smaller than
    ``min_area_px`` are dropped (the count kept is the library's length).
    """
    from scipy import ndimage as ndi

    from cytogen.predict.model_folder import load_statcell_folder
    from cytogen.predict.statcell import sample_reference

    if n < 1:
        raise CytogenError(f"--n-shapes is {n}; it must be at least 1")
    ref = load_statcell_folder(model_dir, kind="statcell_reference")
    names = [str(c) for c in ref.meta.get("channels", [])]
    if channel not in names:
        raise CytogenError(f"{model_dir}: no channel {channel!r} (it has {names}); choose --shape-channel")
    images = sample_reference(ref, n, seed=seed)[:, names.index(channel)]
    labels = []
    for im in images:
        lab, k = ndi.label(im > 0.5)
        if k:
            big = 1 + int(np.argmax(ndi.sum_labels(np.ones_like(lab), lab, range(1, k + 1))))
            labels.append(ndi.binary_fill_holes(lab == big).astype(np.int32))
    px = ref.meta.get("pixel_size_um")
    kept = []
    for lab in labels:  # one library per draw: a draw without a whole object is dropped, not an error
        try:
            kept.append(ShapeLibrary.from_labels([lab], min_area_px=min_area_px))
        except CytogenError:
            continue
    if not kept:
        raise CytogenError(f"{model_dir}: none of {n} sampled {channel} shapes is a whole object of "
                           f"{min_area_px} px or more; the model may be under-trained")
    shapes = [s for lib in kept for s in lib.shapes]
    z = px[0] if px and len(px) == 3 else None
    return ShapeLibrary(shapes, None if not px else float(px[-1]), None, z)


def _draw(value: float | tuple[float, float] | None, rng: np.random.Generator) -> float | None:
    """A number, or one uniform draw from a ``(low, high)`` range."""
    if value is None or np.isscalar(value):
        return value
    lo, hi = value
    return float(rng.uniform(lo, hi))


def _check_range(name: str, value: float | tuple[float, float] | None) -> None:
    if value is not None and not np.isscalar(value):
        if len(value) != 2 or not 0 < value[0] <= value[1]:
            raise CytogenError(f"{name} range {value}: give LOW:HIGH with 0 < LOW <= HIGH")


def synthesize_from_masks(model_dir: str | Path, shapes: list[str], out: str | Path, *, n_images: int = 8,
                          size: int = 512, depth: int | None = None,
                          density: float | tuple[float, float] | None = None,
                          area_fraction: float | tuple[float, float] | None = None,
                          pixel_size_um: float | None = None, max_overlap: float = 0.0, clustered: float = 0.0,
                          scale: tuple[float, float] | None = None, mix: str = "pooled",
                          shape_model: str | Path | None = None, n_shapes: int = 200, shape_channel: str = "dna",
                          val_fraction: float = 0.1, seed: int = 0, precision: str = "auto",
                          progress: bool = True) -> dict[str, Any]:
    """Write ``n_images`` synthetic images with their labels and a manifest into the new folder ``out``.

    Parameters
    ----------
    model_dir
        A masks -> image model folder (trained with ``data.mask_channels``), 2D or 3D.
    shapes
        Label images whose whole objects form the shape library (may be empty with ``shape_model``).
    size, depth
        Canvas side in pixels; ``depth`` z planes for a 3D generator and 3D shapes.
    density, area_fraction
        Nuclei per 100 x 100 um (needs a pixel size) or the labelled fraction of the canvas; one.
        A ``(low, high)`` pair draws each image's value uniformly from that range.
    pixel_size_um
        Pixel size of the label images and canvases when their files do not record one; the
        canvas is otherwise at the generator's training pixel size (shapes resampled to it).
    max_overlap, clustered
        See :func:`cytogen.synth.mask_layouts.random_layout`.
    scale
        ``(low, high)``: each image's shapes scaled laterally by one uniform draw (nucleus size
        variety); None keeps the shapes' size.
    mix
        ``pooled``: every image draws from all shapes; ``per-image``: each image draws its shapes
        from one source chosen at random (one label image, or the shape model), so that images
        differ as the annotated images do.
    shape_model, n_shapes, shape_channel
        A Statistical Cell reference model folder: ``n_shapes`` shapes sampled from it
        (:func:`shapes_from_model`) join the library as one more source.
    val_fraction
        Fraction of the images marked ``split = val`` in the manifest.
    seed
        Image ``i`` uses layout generator ``[seed, i]``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CytogenError(f"{out}: exists and is not empty; choose a new --out folder")
    if n_images < 1 or size < 8 or (depth is not None and depth < 1):
        raise CytogenError("--n-images must be >= 1, --size >= 8 and --depth >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise CytogenError(f"--val-fraction is {val_fraction}; it must be in [0, 1)")
    if mix not in ("pooled", "per-image"):
        raise CytogenError(f"--mix is {mix!r}; choose pooled or per-image")
    for name, v in (("--density", density), ("--area-fraction", area_fraction), ("--scale", scale)):
        _check_range(name, v)
    if not shapes and shape_model is None:
        raise CytogenError("give label images with --shapes or a shape model with --shape-model")
    settings = resolve_runtime(precision)
    model = load_model_folder(model_dir)
    if model.mask_channels is None:
        raise CytogenError(f"{model_dir}: not a masks -> image model; train one with "
                           "'cytogen train configs/masks2nuclei.yaml' (data.mask_channels)")
    libs = [read_shape_library(shapes, pixel_size_um)] if shapes else []
    if shape_model is not None:
        libs.append(shapes_from_model(shape_model, n_shapes, channel=shape_channel, seed=seed))
    library = _merge(libs)  # the shape model, if any, is the source after the label images
    if library.ndim != model.dims:
        raise CytogenError(f"{model_dir} is a {model.dims}D generator but the shapes are {library.ndim}D; "
                           "give label images (or a shape model) of the generator's dimension")
    if model.dims == 3 and depth is None:
        raise CytogenError("a 3D generator needs --depth (z planes of each canvas)")
    if model.dims == 2 and depth is not None:
        raise CytogenError("--depth is for 3D generators; this one is 2D")
    model_px = (model.meta.get("pixel_size_um") or [None])[-1]
    px = model_px if model_px is not None else library.pixel_size_um  # the generator's scale wins
    library = library.at_pixel_size(px)
    model_dz = (model.meta.get("pixel_size_um") or [None])[0] if model.dims == 3 else None
    dz = model_dz if model_dz is not None else library.z_step_um
    if model_dz is not None and library.z_step_um is not None and not math.isclose(model_dz, library.z_step_um,
                                                                                   rel_tol=0.01):
        raise CytogenError(f"the shapes' z step is {library.z_step_um} um but {model_dir} was trained at "
                           f"{model_dz} um; give label images of the generator's z step (z is not resampled)")
    canvas = (size, size) if depth is None else (depth, size, size)
    groups = sorted(set(library.sources))
    settings.apply()
    n_val = math.ceil(val_fraction * n_images) if val_fraction else 0
    rows, counts, per_image, t0 = [], [], [], time.perf_counter()
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        for i in range(n_images):
            t = time.perf_counter()
            rng = np.random.default_rng([seed, i])
            src = groups[int(rng.integers(len(groups)))] if mix == "per-image" else None
            idx = None if src is None else np.flatnonzero(np.asarray(library.sources) == src)
            f = _draw(scale, rng)
            lib = library if f is None else library.rescaled(f)
            if f is not None and idx is not None:  # rescaling may drop vanishing shapes: select again
                idx = np.flatnonzero(np.asarray(lib.sources) == src)
            labels, placed = random_layout(lib, canvas, density=_draw(density, rng),
                                           area_fraction=_draw(area_fraction, rng), pixel_size_um=px,
                                           max_overlap=max_overlap, clustered=clustered, rng=rng, shape_indices=idx)
            ps = None if not px else ((px, px) if depth is None else (dz or px, px, px))
            axes = "CYX" if depth is None else "CZYX"
            image = predict_image(model, Image(labels[None], axes, ps), source=f"layout {i}", settings=settings)
            name = f"synth_{i:04d}"
            write_image(tmp / "images" / f"{name}.tif",
                        Image(image.astype(np.float32), axes, ps, model.meta.get("target_channels") or None))
            write_image(tmp / "labels" / f"{name}.tif", Image(labels[None].astype(np.uint16), axes, ps, ["nuclei"]))
            rows.append({"name": name, "source": f"images/{name}.tif", "target": f"labels/{name}.tif",
                         "split": "val" if i >= n_images - n_val else "train", "pixel_size_um": px or "",
                         "group": "all" if src is None else f"shapes{src}"})
            counts.append((len(placed), float((labels > 0).mean())))
            per_image.append({"name": name, "n_nuclei": len(placed), "area_fraction": round(counts[-1][1], 4),
                              "scale": f, "shape_source": src})
            if progress:
                print(f"[{i + 1}/{n_images}] {name}: {len(placed)} nuclei, {100 * counts[-1][1]:.1f} % of the area "
                      f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        write_text(tmp / "manifest.csv", buf.getvalue())
        n = np.array([c[0] for c in counts])
        area_um2 = size * size * px * px / 1e4 if px else None
        summary = {
            "out": str(out), "model": str(model_dir), "n_images": n_images, "size": size, "depth": depth,
            "pixel_size_um": px, "n_shapes": len(library),
            "shape_sources": {**{str(k): v for k, v in enumerate(shapes)},
                              **({str(len(shapes)): str(shape_model)} if shape_model is not None else {})},
            "n_nuclei": int(n.sum()), "nuclei_per_image": float(n.mean()),
            "nuclei_per_100x100um": (float(n.mean() / area_um2) if area_um2 else None),
            "area_fraction": float(np.mean([c[1] for c in counts])),
            "settings": {"density": density, "area_fraction": area_fraction, "max_overlap": max_overlap,
                         "clustered": clustered, "scale": scale, "mix": mix, "n_shapes": n_shapes if shape_model
                         else None, "seed": seed, "val_fraction": val_fraction},
            "seconds": round(time.perf_counter() - t0, 1), "images": per_image,
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
        if image.ndim == 3:  # 3D: the middle plane
            z = image.shape[0] // 2
            image, labels, stack = image[z], labels[z], stack[:, z]
        samples.append((r["name"], image, labels, stack))
    save_figure(synthetic_preview_figure(samples), folder / "preview.png")
