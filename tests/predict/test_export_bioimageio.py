"""``cytogen export --format bioimageio``: the package passes bioimageio.core's own test offline
for every weight format, its rdf.yaml says what cytogen does (axes, size step, normalisation,
channel names, pixel size), a package whose test output was made with another normalisation
fails that test, and bad input exits 2 in one line without writing anything."""

from __future__ import annotations

import json
import socket
import zipfile

import numpy as np
import pytest
import torch
import yaml
from scipy.ndimage import gaussian_filter

pytest.importorskip("bioimageio.core", reason="bioimage.io export needs the extra: pip install -e '.[bioimageio]'")
pytest.importorskip("onnxruntime", reason="the onnx weights need onnxruntime (pip install -e '.[onnx]')")

from cytogen.cli import main  # noqa: E402
from cytogen.errors import CytogenError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

PIXEL = 0.65
PERCENTILES = (2.0, 99.5)
#: Target statistics of offset ~0, so the spec's relative tolerance (1e-3 of each value) is
#: relative to the network's own output, not to a large offset.
TARGET = {"method": "percentile", "percentiles": [1.0, 99.8], "scope": "field", "offset": [0.5, -2.0],
          "scale": [120.0, 30.0]}


@pytest.fixture(scope="module")
def no_network():
    """Every socket connection attempt is recorded and refused (the test runs offline)."""
    attempts: list = []
    connect = socket.socket.connect

    def refuse(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network disabled in this test (tried {address})")
        return connect(self, address)

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", refuse)
    yield attempts
    mp.undo()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, one_thread, trained_looking_batchnorm):
    """A tiny trained-looking 2-in, 2-out U-Net folder and a field of its source channels."""
    from cytogen.data.normalize import Normalizer
    from cytogen.io.images import Image, write_image
    from cytogen.models import build_model
    from cytogen.predict.model_folder import save_model_folder

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    net = build_model("unet", in_channels=2, out_channels=2, dims=2, depth=2, base_channels=4)
    trained_looking_batchnorm(net)
    rng = np.random.default_rng(4)
    field = gaussian_filter(rng.random((2, 70, 90)), (0, 2, 2)) * np.array([3e4, 800])[:, None, None] + 200
    field = field.astype(np.float32)
    arch = {"name": "unet", "dims": 2, "in_channels": 2, "out_channels": 2,
            "kwargs": {"depth": 2, "base_channels": 4}}
    save_model_folder(root / "model", net.eval(), architecture=arch, source_norm=Normalizer(percentiles=PERCENTILES),
                      target_norm=Normalizer.from_dict(TARGET),
                      source_channels=["actin", "membrane"], target_channels=["DNA", "nucleoli"],
                      pixel_size_um=[PIXEL, PIXEL], patch_size=[32, 32])
    write_image(root / "field.tif", Image(field, "CYX", (PIXEL, PIXEL), ["actin", "membrane"]))
    return root


@pytest.fixture(scope="module")
def package(model_folder, no_network):
    """Exported through the CLI without its own check (the test runs bioimageio.core itself)."""
    out = model_folder / "pkg" / "cytogen_unet.zip"
    code = main(["export", str(model_folder / "model"), "--format", "bioimageio", "--out", str(out),
                 "--test-input", str(model_folder / "field.tif"), "--crop", "64,80", "--authors", "Ada L;Bo K",
                 "--cite", "A paper|10.1000/xyz123", "--no-check"])
    assert code == 0
    return out


@pytest.mark.slow  # three weight formats through bioimageio.core (~20 s)
def test_package_passes_bioimageio_core_test_offline_for_every_weight_format(package, no_network):
    from bioimageio.core import test_model

    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):
        summary = test_model(str(package), weight_format=fmt, devices=["cpu"])
        errors = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
        assert summary.status == "passed", (fmt, errors)
    assert no_network == []  # nothing tried to download


def test_rdf_yaml_says_what_cytogen_does(package, model_folder):
    meta = json.loads((model_folder / "model" / "model.json").read_text())
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        names = set(z.namelist())
        x = np.load(z.open("test_input.npy"))
        y = np.load(z.open("test_output.npy"))
    assert {"README.md", "cover.png", "weights.pt", "weights_torchscript.pt", "weights.onnx",
            "environment.yaml", "test_input.npy", "test_output.npy"} <= names
    assert rdf["format_version"].startswith("0.5") and rdf["license"] == "BSD-3-Clause"
    assert [a["name"] for a in rdf["authors"]] == ["Ada L", "Bo K"]
    assert {"doi": "10.1000/xyz123", "text": "A paper"} in rdf["cite"]
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["axes"][1]["channel_names"] == ["actin", "membrane"]
    assert out["axes"][1]["channel_names"] == ["DNA", "nucleoli"]
    for a in inp["axes"][2:]:  # step = the U-Net's size multiple (2 ** depth)
        assert a["size"] == {"min": 4, "step": 4}
        assert a["scale"] == pytest.approx(PIXEL) and a["unit"] == "micrometer"
    for a in out["axes"][2:]:
        assert a["size"] == {"tensor_id": "input", "axis_id": a["id"]} and a["scale"] == pytest.approx(PIXEL)
    scale_range = [p for p in inp["preprocessing"] if p["id"] == "scale_range"]
    assert len(scale_range) == 1  # per sample and channel: reduced over y, x only
    assert scale_range[0]["kwargs"]["axes"] == ["y", "x"]
    assert (scale_range[0]["kwargs"]["min_percentile"], scale_range[0]["kwargs"]["max_percentile"]) == PERCENTILES
    (lin,) = [p for p in out["postprocessing"] if p["id"] == "scale_linear"]
    target = meta["normalization"]["target"]
    assert lin["kwargs"]["axis"] == "channel"
    assert lin["kwargs"]["gain"] == pytest.approx(target["scale"]) and lin["kwargs"]["offset"] == pytest.approx(target["offset"])
    w = rdf["weights"]
    assert w["pytorch_state_dict"]["architecture"]["import_from"] == "cytogen.models.unet"
    assert w["pytorch_state_dict"]["architecture"]["kwargs"]["depth"] == 2
    assert w["torchscript"]["parent"] == w["onnx"]["parent"] == "pytorch_state_dict"
    assert x.shape == (1, 2, 64, 80) and y.shape == (1, 2, 64, 80) and x.dtype == y.dtype == np.float32


def test_test_output_is_cytogens_prediction_of_the_crop(package, model_folder):
    """The test output equals ``cytogen predict`` of the crop written as a file (one tile)."""
    from cytogen.io.images import Image, read_image, write_image
    from cytogen.workflows.predict import predict

    with zipfile.ZipFile(package) as z:
        x, y = np.load(z.open("test_input.npy"))[0], np.load(z.open("test_output.npy"))[0]
    field = read_image(model_folder / "field.tif").data
    assert np.array_equal(x, field[:, 3:67, 5:85])  # the centred 64 x 80 crop, unchanged
    write_image(model_folder / "crop" / "c.tif", Image(x, "CYX", (PIXEL, PIXEL), ["actin", "membrane"]))
    predict(model_folder / "model", model_folder / "pred", files=[str(model_folder / "crop" / "c.tif")],
            tile=(64, 80), overlap=0.0, batch_size=1, precision="32", progress=False)
    ref = read_image(model_folder / "pred" / "c.tif").data
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def test_a_package_made_with_another_normalisation_fails_and_is_not_written(package, model_folder, no_network):
    """The test output of cytogen's default percentiles (1, 99.8) instead of the model's (2, 99.5)
    does not reproduce: the check refuses it."""
    from cytogen.data.normalize import Normalizer
    from cytogen.predict.bioimageio_export import write_bioimageio_package
    from cytogen.predict.model_folder import load_model_folder

    model = load_model_folder(model_folder / "model")
    with zipfile.ZipFile(package) as z:
        x = np.load(z.open("test_input.npy"))[0]
    wrong = Normalizer(percentiles=(1.0, 99.8)).normalize(x)
    with torch.no_grad():
        y = model.target_norm.denormalize(model.net(torch.from_numpy(wrong)[None])[0].numpy())
    out = model_folder / "wrong.zip"
    with pytest.raises(CytogenError, match="fails bioimageio.core's test for pytorch_state_dict.*nothing was written"):
        write_bioimageio_package(model, out, test_input=x, test_output=y, test_source="field.tif",
                                 authors=["A B"], weights=["pytorch_state_dict"])
    assert not out.exists() and not list(model_folder.glob(".wrong.zip*"))
    assert no_network == []


@pytest.mark.parametrize("args,match", [
    (["--test-input", "{root}/missing.tif"], "missing.tif: no such file"),
    ([], "give --test-input"),
    (["--test-input", "{root}/field.tif", "--crop", "30"], "multiple of the model's size multiple"),
    (["--test-input", "{root}/field.tif#c=0"], "expects 2"),
    (["--test-input", "{root}/field.tif", "--authors", "A", "--cite", "x|not-a-doi"], "give a DOI"),
    (["--test-input", "{root}/field.tif", "--license", "NOT-A-LICENCE"], "not an SPDX licence id"),
])
def test_bad_input_exits_2_in_one_line_and_writes_nothing(args, match, model_folder, capsys):
    out = model_folder / "bad" / "p.zip"
    argv = ["export", str(model_folder / "model"), "--format", "bioimageio", "--out", str(out),
            *[a.format(root=model_folder) for a in args]]
    if "--authors" not in argv:
        argv += ["--authors", "A B"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cytogen: error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_masks_to_image_model_is_refused_with_the_reason(model_folder, tmp_path):
    from cytogen.predict.bioimageio_parts import preprocessing
    from cytogen.predict.model_folder import load_model_folder

    model = load_model_folder(model_folder / "model")
    model.meta["mask_channels"] = {"channels": 2}
    with pytest.raises(CytogenError, match="label image over 2 channels.*cannot express"):
        preprocessing(model, ["y", "x"])
