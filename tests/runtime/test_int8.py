"""int8 prediction through ONNX Runtime: float32 ONNX equals PyTorch, int8 is quantised and
close to float32, and it is refused without fast int8, without ONNX Runtime, on a GPU, in
training, and above its tolerance (with the measured error in runtime.json)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cytogen.cli import main
from cytogen.errors import CytogenError
from cytogen.runtime import resolve_runtime
from cytogen.runtime import int8 as rt8
from cytogen.runtime.settings import RuntimeSettings, normalize_precision

HAS_ORT = all(importlib.util.find_spec(m) is not None for m in rt8.ONNX_MODULES)
_skip = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime/onnxscript not installed "
                                               "(pip install 'cytogen[onnx]')")


def needs_ort(test):
    """Skipped without ONNX Runtime; slow: the one ONNX export of the module takes 10-40 s."""
    return pytest.mark.slow(_skip(test))
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py
AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
VNNI = AVX2 | {"avx512f", "avx512_vnni"}


def _structured(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``(n, 1, *shape)`` float32 tiles of blurred blobs on a gradient, roughly in [0, 2]."""
    rng = np.random.default_rng(seed)
    blobs = gaussian_filter((rng.random((n, 1, *shape)) > 0.97).astype(np.float64), (0, 0, 2, 2))
    ramp = np.linspace(0, 0.3, shape[1])[None, None, None, :]
    return (blobs / blobs.max() * 1.7 + ramp).astype(np.float32)


@pytest.fixture(scope="module")
def unet():
    """A small U-Net trained for a few seconds to blur its input (a smooth, structured output)."""
    from cytogen.models import build_model

    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=8)
    x = torch.from_numpy(_structured(8, (64, 64), seed=9))
    target = torch.from_numpy(gaussian_filter(x.numpy(), (0, 0, 3, 3)).astype(np.float32) * 3 - 0.2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), target).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def exported(unet, tmp_path_factory):
    """The U-Net exported once to float32 ONNX (the slow step: shared by the tests)."""
    from cytogen.predict.onnx_backend import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(unet, torch.from_numpy(_structured(2, (64, 64))), path, unet.size_multiple)
    return path.read_bytes()


@needs_ort
def test_float32_onnx_equals_pytorch_for_other_batch_and_tile_sizes(unet, exported):
    from cytogen.predict.onnx_backend import onnx_fn, ort_session

    fn = onnx_fn(ort_session(exported, threads=1))
    for shape in [(3, 64, 64), (1, 32, 96)]:  # dynamic batch and spatial sizes
        x = torch.from_numpy(_structured(shape[0], shape[1:], seed=1))
        with torch.inference_mode():
            ref = unet(x)
        y = fn(x)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        assert float((y - ref).abs().max()) <= 1e-4


@needs_ort
def test_int8_is_quantised_and_within_tolerance_of_float32(unet, exported):
    import onnx

    from cytogen.predict.onnx_backend import INT8_TOLERANCE, Int8TileFn, agreement

    report: dict = {}
    fn = Int8TileFn(unet, 1, unet.size_multiple, onnx_model=exported, report=report)
    x = torch.from_numpy(_structured(4, (64, 64), seed=2))
    with torch.inference_mode():
        ref = unet(x).numpy()
    y = fn(x).numpy()  # first call: calibrates on these tiles, checks, predicts
    held_out = torch.from_numpy(_structured(2, (64, 64), seed=3))
    with torch.inference_mode():
        ref2 = unet(held_out).numpy()
    y2 = fn(held_out).numpy()  # second call: checked on tiles the calibration never saw
    ops = {n.op_type for n in onnx.load_from_string(fn.int8_model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(fn.fp32_model).graph.node)
    for out, want in ((y, ref), (y2, ref2)):
        a = agreement(out, want)
        assert 0 < a["max_abs"]  # really quantised: not float32's answer
        assert 1 - a["one_minus_r"] > 0.99 and a["nrmse"] <= INT8_TOLERANCE
    assert len(fn.checks) == 2 and report["int8_checked_tiles"] == 6
    errors = report["int8_calibration_nrmse"]  # "auto": the calibration closest to float32 won
    assert set(errors) == {"minmax", "percentile"} and report["int8_calibration_tiles"] == 4
    assert errors[report["int8_calibration"]] == min(errors.values())
    assert report["int8_nrmse"] == pytest.approx(max(c["nrmse"] for c in fn.checks), abs=1e-5)
    fn(held_out)  # a third call is no longer checked
    assert len(fn.checks) == 2


@needs_ort
def test_int8_refused_above_its_tolerance_with_the_measured_error(unet, exported):
    from cytogen.predict.onnx_backend import Int8TileFn, Int8ToleranceError

    report: dict = {}
    fn = Int8TileFn(unet, 1, unet.size_multiple, tolerance=1e-9, onnx_model=exported, report=report)
    with pytest.raises(Int8ToleranceError, match=r"normalised RMS error of [0-9.]+ .*above the "
                                                 r"tolerance 1e-09; predict with --precision 32"):
        fn(torch.from_numpy(_structured(2, (64, 64), seed=4)))
    assert report["int8_nrmse"] > 1e-9 and report["int8_tolerance_nrmse"] == 1e-9


def test_int8_refused_without_fast_int8_naming_the_flags_and_the_override():
    why = rt8.int8_refusal(AVX2, environ={}, missing=[])
    assert "no fast int8" in why and "avx512_vnni" in why and "it has avx2" in why
    assert rt8.OVERRIDE_ENV + "=1" in why and "\n" not in why
    assert rt8.int8_refusal(AVX2, environ={rt8.OVERRIDE_ENV: "1"}, missing=[]) is None
    assert rt8.int8_refusal(VNNI, environ={}, missing=[]) is None
    assert "unreadable" in rt8.int8_refusal(None, environ={}, missing=[])
    with pytest.raises(CytogenError, match="not 0 or 1"):
        rt8.int8_refusal(AVX2, environ={rt8.OVERRIDE_ENV: "maybe"}, missing=[])


def test_int8_refused_without_onnx_runtime_naming_the_extra():
    why = rt8.int8_refusal(VNNI, environ={}, missing=["onnxruntime"])
    assert "onnxruntime is not installed" in why and "pip install 'cytogen[onnx]'" in why


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert rt8.fast_int8_flags(rt8.cpu_flags(tmp_path / "x86")) == ("avx512_vnni",)
    assert rt8.fast_int8_flags(rt8.cpu_flags(tmp_path / "arm")) == ("asimddp",)
    assert rt8.cpu_flags(tmp_path / "missing") is None


def test_resolve_int8_is_prediction_only_on_the_cpu(monkeypatch):
    monkeypatch.setattr(rt8, "missing_onnx_modules", lambda: [])
    monkeypatch.setattr(rt8, "cpu_flags", lambda: VNNI)
    monkeypatch.delenv(rt8.OVERRIDE_ENV, raising=False)
    s = resolve_runtime("int8", accelerator="cpu", inference=True)
    assert s.precision == "int8" and s.requested_precision == "int8" and not s.channels_last
    assert s.probe["int8_fast_flags"] == ["avx512_vnni"] and "avx512_vnni" in s.notes[-1]
    with pytest.raises(CytogenError, match="prediction only"):
        resolve_runtime("int8", accelerator="cpu")  # training and the other verbs
    with pytest.raises(CytogenError, match="prediction only"):
        normalize_precision("int8")
    with pytest.raises(CytogenError, match="drop --compile"):
        resolve_runtime("int8", accelerator="cpu", compile=True, inference=True)
    with pytest.raises(CytogenError, match="not on cuda"):
        rt8.resolve_int8(RuntimeSettings(device="cuda"))
    monkeypatch.setattr(rt8, "cpu_flags", lambda: AVX2)
    with pytest.raises(CytogenError, match="no fast int8"):
        resolve_runtime("int8", accelerator="cpu", inference=True)
    monkeypatch.setenv(rt8.OVERRIDE_ENV, "1")
    s = resolve_runtime("int8", accelerator="cpu", inference=True)
    assert s.precision == "int8" and rt8.OVERRIDE_ENV in s.notes[-1]


def test_cli_refuses_int8_in_one_line_without_fast_int8(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(rt8, "cpu_flags", lambda: AVX2)
    monkeypatch.delenv(rt8.OVERRIDE_ENV, raising=False)
    code = main(["predict", str(tmp_path / "model"), str(tmp_path / "a.tif"), "--out",
                 str(tmp_path / "out"), "--precision", "int8"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "no fast int8" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@needs_ort
def test_predict_int8_writes_its_check_to_runtime_json_or_refuses(unet, exported, tmp_path,
                                                                   monkeypatch):
    """End to end with the override: int8 checked on the first tiles; refused above tolerance."""
    from cytogen.data.normalize import Normalizer
    from cytogen.io.images import Image, read_image, write_image
    from cytogen.predict import onnx_backend
    from cytogen.predict.model_folder import save_model_folder
    from cytogen.workflows.predict import predict

    monkeypatch.setenv(rt8.OVERRIDE_ENV, "1")
    field = (_structured(1, (96, 128), seed=5)[0] * 1000).astype(np.float32)
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
            "kwargs": {"depth": 2, "base_channels": 8}}
    norm = Normalizer().fit([field])
    save_model_folder(tmp_path / "model", unet, architecture=arch, source_norm=norm,
                      target_norm=norm, source_channels=["a"], target_channels=["b"],
                      pixel_size_um=[0.5, 0.5], patch_size=[32, 32])
    write_image(tmp_path / "in" / "f.tif", Image(field, "CYX", (0.5, 0.5), ["a"]))
    def export(net, example, path, size_multiple=1):  # the same weights: reuse the slow export
        path.write_bytes(exported)
        return path

    monkeypatch.setattr(onnx_backend, "export_onnx", export)
    predict(tmp_path / "model", tmp_path / "out", files=[str(tmp_path / "in" / "f.tif")],
            precision="int8", tile=(64, 64), batch_size=4, progress=False)
    info = json.loads((tmp_path / "out" / "runtime.json").read_text())
    ref = tmp_path / "ref"
    predict(tmp_path / "model", ref, files=[str(tmp_path / "in" / "f.tif")], precision="32",
            fast=False, tile=(64, 64), batch_size=4, progress=False)
    y8, y32 = read_image(tmp_path / "out" / "f.tif").data, read_image(ref / "f.tif").data
    assert info["precision"] == "int8" and info["probe"]["int8_checked_tiles"] >= 4
    assert info["probe"]["int8_nrmse"] <= onnx_backend.INT8_TOLERANCE
    assert np.corrcoef(y8.ravel(), y32.ravel())[0, 1] > 0.99 and not np.array_equal(y8, y32)

    monkeypatch.setattr(onnx_backend, "INT8_TOLERANCE", 1e-9)
    with pytest.raises(CytogenError, match="int8 refused for this model"):
        predict(tmp_path / "model", tmp_path / "bad", files=[str(tmp_path / "in" / "f.tif")],
                precision="int8", tile=(64, 64), batch_size=4, progress=False)
    bad = json.loads((tmp_path / "bad" / "runtime.json").read_text())
    assert bad["probe"]["int8_nrmse"] > 1e-9 and not (tmp_path / "bad" / "f.tif").exists()

