"""``cytogen predict --output-format ome-zarr`` writes a valid NGFF 0.4 pyramid while it streams:
read back with ome-zarr-py's Reader, validated with ome-zarr-models, levels = 2 x 2 means."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
import zarr

from cytogen.data.normalize import Normalizer
from cytogen.io.images import Image, read_image, write_image
from cytogen.io.ome_zarr_write import create_ome_zarr
from cytogen.models import build_model
from cytogen.predict.model_folder import save_model_folder
from cytogen.workflows.predict import predict

ome_reader = pytest.importorskip("ome_zarr.reader")
ome_io = pytest.importorskip("ome_zarr.io")
ome_format = pytest.importorskip("ome_zarr.format")
models = pytest.importorskip("ome_zarr_models.v04")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_streamed_prediction_is_an_ngff_pyramid(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=4).eval()
    field = np.random.default_rng(0).integers(100, 4000, size=(1, 150, 203)).astype(np.uint16)
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
            "kwargs": {"depth": 2, "base_channels": 4}}
    save_model_folder(tmp_path / "model", net, architecture=arch, source_norm=Normalizer().fit([field]),
                      target_norm=Normalizer().fit([field.astype(np.float32)]),
                      source_channels=["actin"], target_channels=["nucleus"],
                      pixel_size_um=[0.4, 0.4], patch_size=[32, 32])
    write_image(tmp_path / "in" / "f.tif", Image(field, "CYX", (0.4, 0.4), ["actin"]))
    # a 64-px pyramid rule, so this small field gets levels (150 x 203 -> 75 x 102 -> 38 x 51)
    monkeypatch.setattr("cytogen.workflows.predict.create_ome_zarr",
                        functools.partial(create_ome_zarr, max_side=64))
    out = predict(tmp_path / "model", tmp_path / "o", files=[str(tmp_path / "in" / "f.tif")],
                  output_format="ome-zarr", tile=(64, 64), progress=False)[0]
    reader = ome_reader.Reader(ome_io.parse_url(str(out), fmt=ome_format.FormatV04()))
    node = next(iter(reader()))
    levels = [np.asarray(d) for d in node.data]
    assert [lv.shape for lv in levels] == [(1, 150, 203), (1, 75, 102), (1, 38, 51)]
    assert node.metadata["channel_names"] == ["nucleus"]
    assert [t[0]["scale"] for t in node.metadata["coordinateTransformations"]] == [
        [1.0, 0.4, 0.4], [1.0, 0.8, 0.8], [1.0, 1.6, 1.6]]
    np.testing.assert_array_equal(levels[0], read_image(out).data)
    for above, lv in itertools.pairwise(levels):  # 2 x 2 means, partial blocks at odd edges
        a = above.astype(np.float64)
        pad = np.full((1, -(-a.shape[1] // 2) * 2, -(-a.shape[2] // 2) * 2), np.nan)
        pad[:, : a.shape[1], : a.shape[2]] = a
        expect = np.nanmean(pad.reshape(1, pad.shape[1] // 2, 2, pad.shape[2] // 2, 2), axis=(2, 4))
        np.testing.assert_allclose(lv, expect, rtol=1e-5, atol=1e-5 * float(np.ptp(a)))
    models.Image.from_zarr(zarr.open_group(str(out), mode="r"))
