"""Shared data for the napari plugin tests: a tiny model folder, a synthetic field, its
predictions (``cytogen predict`` output folders) and an ``evaluate objects`` folder of planted
nuclei; and ``needs_display``, which skips the viewer tests where napari cannot draw.

napari needs OpenGL, which Qt draws through an X display (also on its ``offscreen`` platform,
which has no OpenGL of its own), so the viewer tests run under an X server: pytest-xvfb starts
Xvfb (with Mesa's software OpenGL) for the session when it is installed and ``Xvfb`` is on the
PATH, and sets ``DISPLAY``; without one they are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PX = 0.5  # um per pixel of every image here
SHIFTS_PX = (0.0, 2.0, 4.0, 30.0)  # predicted nuclei moved along x by these; the last is unmatched
CENTRES = ((24, 24), (24, 80), (70, 30), (70, 84))


def display_problem() -> str | None:
    """Why napari cannot open a window here, or None."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        offscreen = os.environ.get("QT_QPA_PLATFORM", "") == "offscreen"
        return ("no X display for napari's OpenGL canvas" + (" (Qt's offscreen platform draws "
                "OpenGL only through an X display)" if offscreen else "") + ": install pytest-xvfb "
                "and Xvfb with Mesa (apt: see .ci/apt-packages.txt), which start one for the tests")
    return None


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module(one_thread):
    """Tiny models: one intra-op thread per module (tests/conftest.py's ``one_thread``, restored
    after each module rather than kept for the rest of the session)."""
    yield


@pytest.fixture(scope="session")
def needs_display() -> None:
    """Skip (before Qt starts: a Qt application without a display aborts the process)."""
    problem = display_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def field():
    """A synthetic 2D field (actin, membrane, nucleus; 0.5 um pixels) of 96 x 128 pixels."""
    from cytogen.synth.cells import synth_field

    return synth_field((96, 128), seed=1, pixel_size_um=PX)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, field) -> Path:
    """A tiny untrained actin -> nucleus U-Net model folder (tiling 2 x 32 px, 25 %, batch 4)."""
    import torch

    from cytogen.config import recipe_from_dict
    from cytogen.data.normalize import Normalizer
    from cytogen.models import build_model
    from cytogen.predict.model_folder import save_model_folder

    torch.manual_seed(0)
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
            "kwargs": {"depth": 2, "base_channels": 4}}
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=4)
    tiling = {"tile": None, "overlap": 0.25, "batch_size": 4, "blend": "gaussian"}
    return save_model_folder(
        tmp_path_factory.mktemp("model") / "model", net.eval(), architecture=arch,
        source_norm=Normalizer().fit([field.image[:1]]), target_norm=Normalizer().fit([field.image[2:]]),
        source_channels=["actin"], target_channels=["nucleus"], pixel_size_um=[PX, PX],
        patch_size=[32, 32], recipe=recipe_from_dict({"predict": tiling}).to_dict())


@pytest.fixture(scope="session")
def predictions(tmp_path_factory, field, model_dir) -> dict[str, Path]:
    """``cytogen predict`` of the field's actin channel, as TIFF and as OME-Zarr."""
    from cytogen.io.images import Image, write_image
    from cytogen.workflows.predict import predict

    root = tmp_path_factory.mktemp("pred")
    src = write_image(root / "in" / "f.tif", Image(field.image[:1], "CYX", (PX, PX), ["actin"]))
    out = {}
    for fmt in ("tif", "ome-zarr"):
        out[fmt] = predict(model_dir, root / fmt, files=[str(src)], output_format=fmt,
                           progress=False, fast=False)[0]
    out["input"] = src
    return out


def _discs(shape: tuple[int, int], centres, radius: float = 7.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1.0
    return img


@pytest.fixture(scope="session")
def objects_dir(tmp_path_factory) -> dict:
    """``cytogen evaluate objects`` of one field: 4 real nuclei at ``centres``, the predicted ones
    moved along x by ``shifts`` px (the last too far to match); ``{"dir", "centres", "shifts"}``."""
    from cytogen.evaluate.pipeline import ObjectSettings
    from cytogen.io.images import Image, write_image
    from cytogen.workflows.evaluate_objects import evaluate_objects

    root = tmp_path_factory.mktemp("objects")
    moved = [(cy, cx + s) for (cy, cx), s in zip(CENTRES, SHIFTS_PX)]
    write_image(root / "truth" / "f0.tif", Image(_discs((96, 128), CENTRES)[None], "CYX", (PX, PX)))
    write_image(root / "pred" / "f0.tif", Image(_discs((96, 128), moved)[None], "CYX", (PX, PX)))
    evaluate_objects(root / "pred", root / "truth", root / "eval", progress=False,
                     settings=ObjectSettings(radii=[4.0]))
    return {"dir": root / "eval", "centres": CENTRES, "shifts": SHIFTS_PX}
