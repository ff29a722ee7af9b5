"""``cytogen export``: a model folder as a bioimage.io model package or an ONNX file.

For ``bioimageio`` the test tensors come from a real field: a centred crop of ``test_input``
that is one tile, and cytogen's own tiled prediction of that crop (:func:`predict_image`, float32)
as the test output, so the package's own test shows that the bioimage.io pipeline reproduces
cytogen. The package is written by
:func:`cytogen.predict.bioimageio_export.write_bioimageio_package`; ONNX files by
:func:`cytogen.predict.onnx_export.write_onnx`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_spec, stack_channels
from cytogen.predict.bioimageio_parts import WEIGHT_FORMATS, centre_crop
from cytogen.predict.defaults import TilingPlan
from cytogen.predict.model_folder import load_model_folder
from cytogen.runtime import resolve_runtime
from cytogen.workflows.predict import _check_input, predict_image

FORMATS = ("bioimageio", "onnx")


def _read_test_field(spec: str) -> Image:
    """``path[#c=K]``, or several such specs separated by ``;`` (stacked as channels)."""
    specs = [p.strip() for p in spec.split(";") if p.strip()]
    if not specs:
        raise CytogenError("--test-input is empty; give a field of the model's source channel(s)")
    for p in specs:
        if not Path(p.partition("#")[0]).exists():
            raise CytogenError(f"--test-input {p}: no such file; give a field the model can predict")
    images = [read_spec(p) for p in specs]
    return images[0] if len(images) == 1 else stack_channels(images)


def test_tensors(model_dir: str | Path, test_input: str, crop: Sequence[int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, Any]:
    """Raw test crop ``(C, *spatial)``, cytogen's float32 prediction of it and the loaded model."""
    model = load_model_folder(model_dir)
    image = _read_test_field(test_input)
    _check_input(model, image.axes, image.data.shape[0], test_input)
    if not np.all(np.isfinite(image.data)):
        raise CytogenError(f"--test-input {test_input}: the field has NaN/Inf pixels; give a clean field")
    sl = centre_crop(image.spatial_shape, tuple(crop) if crop else None, tuple(model.net.size_multiple),
                     test_input)
    x = np.ascontiguousarray(image.data[(slice(None), *sl)])
    if float(x.max()) == float(x.min()):
        raise CytogenError(f"--test-input {test_input}: the crop is constant; give a field with cells")
    tile = tuple(s.stop - s.start for s in sl)
    plan = TilingPlan(tile=tile, overlap=0.0, batch_size=1, blend="gaussian")  # one tile: the whole crop
    settings = resolve_runtime("32", accelerator="cpu", inference=True)
    crop_image = Image(x, image.axes, image.pixel_size_um, image.channel_names)
    y = predict_image(model, crop_image, source=test_input, settings=settings, plan=plan)
    return x, y, model


def export(model_dir: str | Path, out: str | Path, *, format: str = "bioimageio",
           test_input: str | None = None, crop: Sequence[int] | None = None,
           authors: Sequence[str] | None = None, name: str | None = None,
           description: str | None = None, license: str | None = None,
           cite: Sequence[tuple[str, str]] | None = None,
           weights: Sequence[str] = WEIGHT_FORMATS, check: bool = True) -> dict[str, Any]:
    """Export a model folder (the Python API of ``cytogen export``).

    Parameters
    ----------
    model_dir
        ``RUN/model`` from ``cytogen train``.
    out
        ``PKG.zip`` (``bioimageio``) or ``MODEL.onnx`` (``onnx``); written atomically.
    format
        ``bioimageio`` (model spec 0.5 package) or ``onnx``.
    test_input
        ``bioimageio``: a real field of the model's source channel(s) (``path#c=K``; several
        files separated by ``;``), the source of the test tensors and the cover.
    crop
        Test crop size per spatial axis (or one for all), multiples of the size multiple;
        default the largest multiple up to 256 px.
    authors, name, description, license, cite, weights, check
        See :func:`~cytogen.predict.bioimageio_export.write_bioimageio_package`.

    Returns
    -------
    dict
        What was written (``out``, formats, test results, seconds).
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise CytogenError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "onnx":
        from cytogen.predict.onnx_export import write_onnx

        result = write_onnx(load_model_folder(model_dir), out)
    else:
        from cytogen.predict.bioimageio_export import (
            _require_bioimageio,
            check_metadata,
            write_bioimageio_package,
        )

        _require_bioimageio()
        model = load_model_folder(model_dir)
        authors = list(authors or model.meta.get("authors") or [])
        check_metadata(model, authors=authors, license=license, cite=cite, weights=list(weights))
        if not test_input:
            raise CytogenError(f"{model_dir}: the model folder does not record its training fields; give "
                               "--test-input FIELD.tif (a real field, e.g. one of the test split)")
        x, y, model = test_tensors(model_dir, test_input, crop)
        result = write_bioimageio_package(model, out, test_input=x, test_output=y, test_source=test_input,
                                          authors=authors, name=name, description=description,
                                          license=license, cite=cite, weights=weights, check=check)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
