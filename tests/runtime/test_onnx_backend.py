"""``cytogen predict --backend onnxruntime``: float32 ONNX Runtime with the same tiling and
normalisation gives PyTorch's predictions (within 1e-4 of the output range), and the
combinations it cannot run are refused in one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cytogen.cli import main
from cytogen.errors import CytogenError
from cytogen.runtime import int8 as rt8
from cytogen.runtime import resolve_runtime
from cytogen.runtime.settings import RuntimeSettings

HAS_ORT = all(importlib.util.find_spec(m) is not None for m in rt8.ONNX_MODULES)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.mark.slow  # one real ONNX export (10-40 s)
@pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime/onnxscript not installed (pip install 'cytogen[onnx]')")
def test_onnxruntime_backend_gives_pytorchs_predictions(tmp_path, capsys, trained_looking_batchnorm):
    from cytogen.data.normalize import Normalizer
    from cytogen.io.images import Image, read_image, write_image
    from cytogen.models import build_model
    from cytogen.predict.model_folder import save_model_folder
    from cytogen.workflows.predict import predict

    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=2, dims=2, depth=2, base_channels=8)
    trained_looking_batchnorm(net)
    rng = np.random.default_rng(4)
    field = (gaussian_filter(rng.random((1, 150, 230)), (0, 2, 2)) * 3e4 + 200).astype(np.float32)
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 2,
            "kwargs": {"depth": 2, "base_channels": 8}}
    norm = Normalizer().fit([field])
    save_model_folder(tmp_path / "model", net.eval(), architecture=arch, source_norm=norm,
                      target_norm=Normalizer().fit([np.concatenate([field, field * 0.5])]),
                      source_channels=["a"], target_channels=["b", "c"], pixel_size_um=[0.5, 0.5],
                      patch_size=[32, 32])
    write_image(tmp_path / "in" / "f.tif", Image(field, "CYX", (0.5, 0.5), ["a"]))
    tiling = ["--tile", "64", "--overlap", "0.25", "--batch-size", "3"]  # several tiles, a short batch
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "in" / "f.tif"), "--out",
                 str(tmp_path / "ort"), "--backend", "onnxruntime", *tiling]) == 0
    assert "backend: ONNX Runtime" in capsys.readouterr().err
    predict(tmp_path / "model", tmp_path / "pt", files=[str(tmp_path / "in" / "f.tif")], fast=False,
            tile=(64, 64), overlap=0.25, batch_size=3, progress=False)
    got, ref = read_image(tmp_path / "ort" / "f.tif"), read_image(tmp_path / "pt" / "f.tif")
    assert got.data.shape == ref.data.shape == (2, 150, 230) and got.channel_names == ["b", "c"]
    assert got.pixel_size_um == pytest.approx((0.5, 0.5))
    span = float(ref.data.max() - ref.data.min())
    assert span > 0 and float(np.abs(got.data - ref.data).max()) <= 1e-4 * span
    info = json.loads((tmp_path / "ort" / "runtime.json").read_text())
    assert info["backend"] == "onnxruntime" and info["precision"] == "32" and not info["channels_last"]
    assert info["probe"]["onnx_export_s"] > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"compile": True}, "drop one of them"),
    ({"precision": "bf16-mixed"}, "float32"),
    ({"fast": False}, "--no-fast"),
    ({"inference": False}, "prediction only"),
    ({"backend": "tensorrt"}, "not one of"),
    ({"backend": "torch", "precision": "int8"}, "int8 runs through ONNX Runtime"),
])
def test_combinations_the_onnxruntime_backend_cannot_run_are_refused(kwargs, match, monkeypatch):
    monkeypatch.setattr("cytogen.runtime.settings._cpu_bf16_ok", lambda: True)
    args = {"precision": "auto", "accelerator": "cpu", "inference": True, "backend": "onnxruntime",
            **kwargs}
    with pytest.raises(CytogenError, match=match):
        resolve_runtime(args.pop("precision"), **args)


def test_backend_resolution_and_the_missing_extra() -> None:
    assert resolve_runtime("auto", accelerator="cpu", inference=True).backend == "torch"
    if HAS_ORT:
        s = resolve_runtime("32", accelerator="cpu", inference=True, backend="ort")
        assert (s.backend, s.precision, s.channels_last) == ("onnxruntime", "32", False)
    with pytest.raises(CytogenError, match=r"not installed; pip install 'cytogen\[onnx\]'"):
        rt8.resolve_onnxruntime(RuntimeSettings(), missing=["onnxruntime"])


def test_cli_refuses_a_bad_backend_combination_in_one_line(tmp_path, capsys):
    code = main(["predict", str(tmp_path / "model"), str(tmp_path / "a.tif"), "--out",
                 str(tmp_path / "out"), "--backend", "onnxruntime", "--compile"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "drop one of them" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "out").exists()
