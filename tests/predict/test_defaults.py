"""The model's recipe sets the tiling of ``cytogen predict``; flags win; the manifest's pixel size
reaches the predictions; the OOM back-off works under --compile; model folders are atomic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cytogen.cli import main
from cytogen.config import recipe_from_dict
from cytogen.data.normalize import Normalizer
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_image, write_image
from cytogen.models import build_model
from cytogen.predict.defaults import resolve_tiling
from cytogen.predict.model_folder import LoadedModel, load_model_folder, save_model_folder
from cytogen.runtime import resolve_runtime
from cytogen.workflows import predict as wp

ARCH = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
        "kwargs": {"depth": 2, "base_channels": 4}}
PLAIN = resolve_runtime("32", fast=False, accelerator="cpu")
REAL_TILED, REAL_INFERENCE_FN = wp.predict_tiled, wp.inference_fn


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A 96 x 160 field without pixel size, and a tiny untrained UNet's parts."""
    root = tmp_path_factory.mktemp("defaults")
    rng = np.random.default_rng(0)
    field = (gaussian_filter(rng.random((1, 96, 160)), (0, 2, 2)) * 4e4
             + rng.random((1, 96, 160)) * 300).astype(np.uint16)
    write_image(root / "in" / "f.tif", Image(field, "CYX", None, ["actin"]))
    write_image(root / "in" / "g.tif", Image(field, "CYX", (0.4, 0.4), ["actin"]))
    return root


def _model(folder: Path, predict: dict | None) -> Path:
    """A model folder (training patch 32 x 32) whose recipe has this ``predict`` section over
    the pre-auto defaults (tile null, overlap 0.25, batch size 4); ``None``: no recipe."""
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=4)
    norm = Normalizer().fit([np.linspace(0, 4e4, 1000, dtype=np.float32)[None]])
    # the predict section of folders saved before auto tiling: every key explicit
    old = {"tile": None, "overlap": 0.25, "batch_size": 4, "blend": "gaussian"}
    recipe = None if predict is None else recipe_from_dict({"predict": old | predict}).to_dict()
    return save_model_folder(folder, net.eval(), architecture=ARCH, source_norm=norm,
                             target_norm=norm, source_channels=["actin"],
                             target_channels=["nucleus"], pixel_size_um=None,
                             patch_size=[32, 32], recipe=recipe)


def _run(monkeypatch, model_dir: Path, out: Path, root: Path, *flags: str) -> dict:
    """``cytogen predict`` on f.tif, spying on the tiling call and the model's batches."""
    seen: dict = {"batches": []}
    real_tiled, real_fn = REAL_TILED, REAL_INFERENCE_FN

    def tiled(fn, image, **kw):
        seen.update({k: kw[k] for k in ("tile", "overlap", "batch_size", "blend")})
        seen["tiles"] = []
        return real_tiled(fn, image, progress=lambda done, total: seen["tiles"].append(total),
                          **kw)

    def inference(net, dims, settings):
        fn = real_fn(net, dims, settings)

        def spy(x):
            seen["batches"].append(int(x.shape[0]))
            return fn(x)
        return spy

    monkeypatch.setattr(wp, "predict_tiled", tiled)
    monkeypatch.setattr(wp, "inference_fn", inference)
    assert main(["predict", str(model_dir), str(root / "in" / "f.tif"), "--out", str(out),
                 "--no-fast", *flags]) == 0
    seen["n_tiles"] = seen["tiles"][-1]
    seen["pred"] = read_image(out / "f.tif").data
    seen["runtime"] = json.loads((out / "runtime.json").read_text())["tiling"]
    return seen


def test_recipe_overlap_sets_the_tile_grid_and_a_flag_wins(root, tmp_path, monkeypatch, capsys):
    # tile 64 (2 x patch 32) on 96 x 160: overlap 0.25 -> step 48 -> 2 x 3 tiles;
    # overlap 0.5 -> step 32 -> rows 0,32 x columns 0,32,64,96 -> 2 x 4 tiles
    quarter = _run(monkeypatch, _model(tmp_path / "m25", {"overlap": 0.25}), tmp_path / "o25", root)
    half = _run(monkeypatch, _model(tmp_path / "m50", {"overlap": 0.5}), tmp_path / "o50", root)
    assert (quarter["n_tiles"], half["n_tiles"]) == (6, 8)
    assert half["overlap"] == 0.5 and half["runtime"]["overlap"] == 0.5
    assert half["runtime"]["from"] == {"tile": "2 x training patch size", "overlap": "recipe",
                                       "batch_size": "recipe", "blend": "recipe"}
    assert np.abs(half["pred"] - quarter["pred"]).max() > 0  # a different tiling, a different blend
    assert "overlap 0.5 (recipe)" in capsys.readouterr().err
    flag = _run(monkeypatch, tmp_path / "m50", tmp_path / "flag", root, "--overlap", "0.25")
    assert flag["n_tiles"] == 6 and flag["runtime"]["from"]["overlap"] == "given"
    np.testing.assert_array_equal(flag["pred"], quarter["pred"])


def test_recipe_batch_size_blend_and_tile_are_used_and_flags_win(root, tmp_path, monkeypatch):
    model = _model(tmp_path / "m", {"batch_size": 5, "blend": "constant", "tile": [32, 32]})
    got = _run(monkeypatch, model, tmp_path / "o", root)
    # tile 32, overlap 0.25 -> step 24: rows 0,24,48,64 x columns 0,24,...,120,128 -> 4 x 7 tiles
    assert got["tile"] == (32, 32) and got["n_tiles"] == 28
    assert got["batches"] == [5] * 5 + [3] and got["blend"] == "constant"
    assert got["runtime"] == {"tile": [32, 32], "overlap": 0.25, "batch_size": 5,
                              "blend": "constant", "from": dict.fromkeys(
                                  ("tile", "overlap", "batch_size", "blend"), "recipe")}
    gauss = _run(monkeypatch, model, tmp_path / "g", root, "--blend", "gaussian",
                 "--batch-size", "7", "--tile", "64")
    assert gauss["blend"] == "gaussian" and gauss["batches"] == [6] and gauss["n_tiles"] == 6
    assert gauss["runtime"]["from"] == dict.fromkeys(("tile", "overlap", "batch_size", "blend"),
                                                     "given") | {"overlap": "recipe"}
    same_tiling = _run(monkeypatch, model, tmp_path / "c", root, "--blend", "gaussian")
    assert same_tiling["n_tiles"] == 28  # only the blend window differs from `got`
    assert np.abs(same_tiling["pred"] - got["pred"]).max() > 0


def test_model_folder_without_recipe_uses_the_defaults_and_says_so(root, tmp_path, monkeypatch,
                                                                   capsys):
    got = _run(monkeypatch, _model(tmp_path / "bare", None), tmp_path / "o", root)
    rt = got["runtime"]
    # the default is auto: margin the ERF radius rounded up to the pooling grid (4 px)
    radius, margin = rt["auto"]["erf"]["radius"], rt["margin"]
    assert got["overlap"] == tuple(2 * m for m in margin) and got["blend"] == "gaussian"
    assert all(m >= r and (2 * m) % 4 == 0 and 2 * m - 2 * r < 4 for m, r in zip(margin, radius))
    assert rt["balance"] is True
    assert rt["from"]["overlap"] == "auto (default)" and rt["from"]["tile"] == "auto (default)"
    assert got["n_tiles"] == 1  # 96 x 160 fits one tile of the 2 GiB default budget
    err = capsys.readouterr().err
    assert "has no training recipe" in err and "effective receptive field" in err
    assert "--batch-size" in err
    plan = resolve_tiling(load_model_folder(tmp_path / "bare"), overlap=0.1, batch_size=2,
                          blend="linear")
    assert plan.notes == ()  # everything given: nothing came from the defaults


def test_bad_tiling_values_name_their_source(root, tmp_path, capsys):
    model = _model(tmp_path / "m", {"overlap": 0.25})
    meta = json.loads((model / "model.json").read_text())
    meta["recipe"]["predict"]["overlap"] = 1.5
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CytogenError, match=r"model\.json: predict\.overlap is 1\.5"):
        resolve_tiling(load_model_folder(model))
    assert resolve_tiling(load_model_folder(model), overlap=0.5).overlap == 0.5
    assert main(["predict", str(model), str(root / "in" / "f.tif"), "--out", str(tmp_path / "o"),
                 "--overlap", "1.0"]) == 2
    assert "--overlap" in capsys.readouterr().err
    with pytest.raises(CytogenError, match="2 sizes for a 2D model"):
        resolve_tiling(load_model_folder(model), overlap=0.5, tile=(32, 32, 32))


def test_manifest_pixel_size_reaches_tiff_and_ome_zarr_predictions(root, tmp_path):
    model = _model(tmp_path / "m", {"overlap": 0.25})
    manifest = root / "in" / "manifest.csv"
    manifest.write_text("name,source,split,pixel_size_um\nf,f.tif,test,0.5\ng,g.tif,test,0.5\n"
                        "h,g.tif,train,\n")
    for fmt, ext in (("tif", "tif"), ("ome-zarr", "ome.zarr")):
        out = tmp_path / fmt
        assert main(["predict", str(model), "--data", str(manifest), "--split", "all",
                     "--out", str(out), "--output-format", fmt, "--no-fast"]) == 0
        assert read_image(out / f"f.{ext}").pixel_size_um == pytest.approx((0.5, 0.5))  # file: none
        assert read_image(out / f"g.{ext}").pixel_size_um == pytest.approx((0.5, 0.5))  # file: 0.4
        assert read_image(out / f"h.{ext}").pixel_size_um == pytest.approx((0.4, 0.4))  # no column
    assert wp.pixel_size((2.0, 0.4, 0.4), 0.5, 3) == (2.0, 0.5, 0.5)  # Z kept, as in training
    assert wp.pixel_size(None, 0.5, 3) == (0.5, 0.5, 0.5)


class OOMAboveBatch(torch.nn.Module):
    """The model, but 'out of memory' for batches of more than ``limit`` tiles."""

    def __init__(self, net: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.size_multiple = net, limit, net.size_multiple
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return self.net(x)


def test_out_of_memory_back_off_succeeds_under_compile(root, tmp_path, monkeypatch):
    """Under --compile short batches are padded to the batch size *in use*: after 8 -> 4 -> 2
    every call has 2 tiles (the odd last one padded to 2), so the prediction completes."""
    model = load_model_folder(_model(tmp_path / "m", {"overlap": 0.25, "tile": [32, 32]}))
    image = read_image(root / "in" / "f.tif")
    ref = wp.predict_image(model, image, batch_size=1, settings=PLAIN)
    # compiled settings, but the network is called as is (no compiler needed for the test)
    monkeypatch.setattr(wp, "inference_fn", lambda net, dims, settings: net)
    failing = OOMAboveBatch(model.net, 2)
    compiled = resolve_runtime("32", compile=True, accelerator="cpu")
    with pytest.warns(RuntimeWarning, match="batch size 2"):
        got = wp.predict_image(LoadedModel(failing, model.meta, model.source_norm,
                                           model.target_norm), image, batch_size=8,
                               settings=compiled)
    # 4 x 7 = 28 tiles; 8 fails, 4 fails, then 14 batches of 2
    assert failing.batches == [8, 4] + [2] * 14
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.ptp(ref)))
    failing = OOMAboveBatch(model.net, 4)
    with pytest.warns(RuntimeWarning, match="batch size 4"):
        wp.predict_image(LoadedModel(failing, model.meta, model.source_norm, model.target_norm),
                         image, batch_size=8, settings=compiled)
    assert failing.batches == [8] + [4] * 7  # the 28 tiles; none padded back to 8


def test_model_folder_is_replaced_atomically(tmp_path, monkeypatch):
    folder = _model(tmp_path / "m", {"overlap": 0.5})
    _model(folder, {"overlap": 0.25})  # over an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert resolve_tiling(load_model_folder(folder)).overlap == 0.25

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("cytogen.predict.model_folder.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _model(folder, {"overlap": 0.1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no debris, old folder kept
    assert resolve_tiling(load_model_folder(folder)).overlap == 0.25


def test_auto_on_the_command_line_overrides_an_old_recipe_and_the_budget_sets_the_tile(
        root, tmp_path, monkeypatch, capsys):
    model = _model(tmp_path / "m", {"tile": [32, 32]})  # an old folder: 32 px, 25 %, batch 4
    old = _run(monkeypatch, model, tmp_path / "old", root)
    assert old["n_tiles"] == 28 and "margin" not in old["runtime"]  # the recipe's plan, as before
    auto = _run(monkeypatch, model, tmp_path / "auto", root, "--tile", "auto", "--overlap", "auto",
                "--batch-size", "auto")
    rt = auto["runtime"]
    assert rt["from"]["tile"] == "auto (given)" and rt["from"]["overlap"] == "auto (given)"
    assert rt["from"]["memory_budget"].startswith("default")
    radius = rt["auto"]["erf"]["radius"]
    assert rt["overlap"] == [2 * m for m in rt["margin"]] and min(rt["margin"]) >= max(radius)
    assert all(o % 4 == 0 for o in rt["overlap"])  # stride on the U-Net's pooling grid
    # the run's plan is the largest tile in the budget; this 96 x 160 image gets one of its size
    assert auto["n_tiles"] == 1 and auto["tile"] == (96, 160)
    assert rt["auto"]["image_tiles"] == {"96x160": [96, 160]}
    np.testing.assert_allclose(auto["pred"], old["pred"], rtol=0,
                               atol=0.05 * float(np.ptp(old["pred"])))
    # a budget of a 48 x 48 tile: several tiles, each a multiple of 4, within the budget
    bpp = rt["auto"]["bytes_per_pixel"]
    small = _run(monkeypatch, model, tmp_path / "small", root, "--tile", "auto", "--overlap",
                 "auto", "--memory-budget", str(bpp * 48 * 48 / 2**30))
    srt = small["runtime"]
    assert srt["from"]["memory_budget"] == "given" and small["n_tiles"] > 1
    tile = srt["auto"]["image_tiles"]["96x160"]
    assert tuple(tile) == small["tile"] and math.prod(tile) <= 48 * 48
    assert all(t % 4 == 0 for t in tile) and max(srt["tile"]) <= 48
    assert srt["batch_size"] == 4 and srt["from"]["batch_size"] == "recipe"
    assert "effective receptive field" in capsys.readouterr().err
    # a budget with nothing to choose is refused, naming the flag
    assert main(["predict", str(model), str(root / "in" / "f.tif"), "--out", str(tmp_path / "x"),
                 "--memory-budget", "1"]) == 2
    assert "--memory-budget 1.0 has no effect" in capsys.readouterr().err


def test_auto_in_a_recipe_is_validated():
    rec = recipe_from_dict({"predict": {"tile": "auto", "overlap": [16, 16], "batch_size": 2}})
    assert (rec.predict.tile, rec.predict.overlap, rec.predict.batch_size) == ("auto", [16, 16], 2)
    assert recipe_from_dict({}).predict.overlap == "auto"  # the default of new recipes
    for bad, match in (({"tile": "big"}, "predict.tile is 'big'; the only word accepted"),
                       ({"overlap": "wide"}, "predict.overlap is 'wide'"),
                       ({"overlap": [-2, 4]}, r"predict.overlap is \[-2, 4\]; give pixels >= 0"),
                       ({"batch_size": "many"}, "predict.batch_size is 'many'")):
        with pytest.raises(CytogenError, match=match):
            recipe_from_dict({"predict": bad})
