"""TIFF output of ``cytogen predict`` streams: same answer as the in-memory path, several output
channels, 3D, out-of-memory restarts, no debris; masks models and refused inputs stay in memory."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from scipy.ndimage import gaussian_filter

import cytogen.workflows.predict as wp
from cytogen.cli import main
from cytogen.data.normalize import Normalizer
from cytogen.io.images import Image, read_image, write_image
from cytogen.io.lazy import open_image_lazy
from cytogen.models import build_model
from cytogen.predict.defaults import resolve_tiling
from cytogen.predict.model_folder import LoadedModel, load_model_folder, save_model_folder
from cytogen.runtime import resolve_runtime
from cytogen.workflows.predict import predict, predict_image, predict_image_stream_tiff

PLAIN = resolve_runtime("32", fast=False, accelerator="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

CALLS: list[int] = []  # forward calls of the FailsLater wrapper below


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """A 1 -> 2 channel model, a 300 x 500 field as TIFF, and its in-memory prediction."""
    root = tmp_path_factory.mktemp("tiffstream")
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=2, dims=2, depth=2, base_channels=4)
    rng = np.random.default_rng(0)
    field = gaussian_filter(rng.random((1, 300, 500)), (0, 3, 3)) * 4e5 + rng.random((1, 300, 500)) * 500
    field = field.astype(np.uint16)
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 2,
            "kwargs": {"depth": 2, "base_channels": 4}}
    tgt = Normalizer().fit([np.concatenate([field, field // 2 + 7]).astype(np.float32)])
    save_model_folder(root / "model", net.eval(), architecture=arch, source_norm=Normalizer().fit([field]),
                      target_norm=tgt, source_channels=["actin"], target_channels=["nucleus", "dna"],
                      pixel_size_um=[0.4, 0.4], patch_size=[32, 32])
    image = Image(field, "CYX", (0.4, 0.4), ["actin"])
    write_image(root / "in" / "f.tif", image)
    model = load_model_folder(root / "model")
    ref = predict_image(model, image, settings=PLAIN)  # in memory, default tile 64
    return root, model, image, ref


def _tol(ref):  # float32 rounding of the normalisation (same statistics, other operation order)
    return 1e-5 * float(ref.max() - ref.min())


def test_cli_tiff_output_streams_and_equals_the_in_memory_prediction(setup, tmp_path, monkeypatch):
    root, _, _, ref = setup

    def whole(*args, **kwargs):
        raise AssertionError("the TIFF output must not be predicted in memory")

    monkeypatch.setattr(wp, "predict_image", whole)
    assert main(["predict", str(root / "model"), str(root / "in" / "f.tif"), "--out",
                 str(tmp_path / "o"), "--no-fast"]) == 0
    got = read_image(tmp_path / "o" / "f.tif")
    assert got.data.dtype == np.float32 and got.data.shape == (2, 300, 500) and got.axes == "CYX"
    assert got.pixel_size_um == pytest.approx((0.4, 0.4)) and got.channel_names == ["nucleus", "dna"]
    # every pixel is in the subsample (image < 4 Mpx): only float rounding differs
    np.testing.assert_allclose(got.data, ref, rtol=0, atol=_tol(ref))
    assert not np.allclose(got.data[0], got.data[1])  # two distinct channels, each in its place
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["f.tif", "runtime.json"]
    with tifffile.TiffFile(tmp_path / "o" / "f.tif") as tif:
        assert tif.is_ome and tif.pages[0].is_tiled


def test_streamed_tiff_with_a_manifest_pixel_size_and_an_oom_restart(setup, tmp_path):
    root, model, image, _ = setup

    class OOMAbove(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.size_multiple = net, net.size_multiple

        def forward(self, x):
            if max(x.shape[2:]) > 64:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
            return self.net(x)

    failing = LoadedModel(OOMAbove(model.net).eval(), model.meta, model.source_norm, model.target_norm)
    plan = resolve_tiling(model)  # fixed settings: no measuring on the failing net
    crop = Image(image.data[:, :256, :320], "CYX", (0.4, 0.4))  # smaller: the tile-64 run twice
    write_image(tmp_path / "in" / "c.tif", crop)
    with open_image_lazy(tmp_path / "in" / "c.tif") as lazy, pytest.warns(RuntimeWarning) as record:
        lazy.pixel_size_um = (0.25, 0.25)
        predict_image_stream_tiff(failing, lazy, tmp_path / "o" / "c.tif", tile=(256, 256),
                                  overlap=plan.overlap, batch_size=plan.batch_size,
                                  blend=plan.blend, settings=PLAIN)
    assert "again with tile (64, 64)" in str(record[-1].message)
    got = read_image(tmp_path / "o" / "c.tif")
    # 256 -> 128 -> 64: the file is the tile-64 run alone, started again from scratch
    ref = predict_image(model, crop, tile=(64, 64), overlap=plan.overlap,
                        batch_size=plan.batch_size, blend=plan.blend, settings=PLAIN)
    np.testing.assert_allclose(got.data, ref, rtol=0, atol=_tol(ref))
    assert got.pixel_size_um == pytest.approx((0.25, 0.25))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["c.tif"]


def test_an_error_mid_stream_leaves_no_tiff(setup, tmp_path):
    root, model, _, _ = setup

    class FailsLater(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.size_multiple = net, net.size_multiple
            CALLS.clear()  # a module-level count: prediction runs a (BatchNorm-folded) copy

        def forward(self, x):
            CALLS.append(1)
            if len(CALLS) == 4:
                raise ValueError("model crashed mid-image")
            return self.net(x)

    # eval(): tiling measurements restore the wrapper's mode, which would put the shared net in
    # train mode (its batch-norm statistics then change)
    broken = LoadedModel(FailsLater(model.net).eval(), model.meta, model.source_norm, model.target_norm)
    with open_image_lazy(root / "in" / "f.tif") as lazy:
        with pytest.raises(ValueError, match="mid-image"):
            predict_image_stream_tiff(broken, lazy, tmp_path / "out" / "f.tif", batch_size=2)
    assert len(CALLS) == 4 and list((tmp_path / "out").iterdir()) == []


def test_input_the_lazy_reader_refuses_is_predicted_in_memory_with_a_warning(setup, tmp_path):
    root, model, image, _ = setup
    rgb = np.stack([image.data[0, :64, :96]] * 3, axis=-1)[None].repeat(2, axis=0)  # (2, Y, X, 3)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "cyxs.ome.tif", rgb, photometric="rgb", metadata={"axes": "CYXS"})
    with pytest.warns(RuntimeWarning, match="cyxs.ome.tif.*two axes.*into memory"):
        out = predict(root / "model", tmp_path / "o", files=[f"{tmp_path / 'in' / 'cyxs.ome.tif'}#c=0"],
                      progress=False, fast=False)
    ref = predict_image(model, Image(rgb[:1, ..., 0], "CYX"), settings=PLAIN)
    np.testing.assert_allclose(read_image(out[0]).data, ref, rtol=0, atol=_tol(ref))


def test_3d_stack_streams_to_tiff_like_the_in_memory_path(tmp_path):
    torch.manual_seed(1)
    arch = {"name": "unet", "dims": 3, "in_channels": 1, "out_channels": 1,
            "kwargs": {"depth": 2, "base_channels": 4}}
    net = build_model("unet", in_channels=1, out_channels=1, dims=3, depth=2, base_channels=4)
    stack = np.random.default_rng(2).random((1, 13, 40, 50)).astype(np.float32)
    norm = Normalizer().fit([stack])
    save_model_folder(tmp_path / "m3", net.eval(), architecture=arch, source_norm=norm,
                      target_norm=norm, source_channels=["a"], target_channels=["b"],
                      pixel_size_um=None, patch_size=[8, 16, 16])
    write_image(tmp_path / "in" / "z.tif", Image(stack, "CZYX", (1.0, 0.2, 0.2)))
    model = load_model_folder(tmp_path / "m3")
    ref = predict_image(model, Image(stack, "CZYX"), settings=PLAIN)
    out = predict(tmp_path / "m3", tmp_path / "o", files=[str(tmp_path / "in" / "z.tif")],
                  progress=False, fast=False)
    assert out == [tmp_path / "o" / "z.tif"]
    got = read_image(out[0])
    assert got.axes == "CZYX" and got.pixel_size_um == pytest.approx((1.0, 0.2, 0.2))
    assert got.channel_names == ["b"]
    np.testing.assert_allclose(got.data, ref, rtol=0, atol=_tol(ref))
