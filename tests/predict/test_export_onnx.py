"""``cytogen export --format onnx``: ONNX Runtime reproduces PyTorch within 1e-4 of the output
range at batch sizes and spatial sizes other than the export's (2D and 3D), the file carries
cytogen's normalisation, and a network whose operators do not export is refused with the
exporter's reason and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra (pip install -e '.[onnx]')")

from cytogen.cli import main  # noqa: E402
from cytogen.data.normalize import Normalizer  # noqa: E402
from cytogen.models import build_model  # noqa: E402
from cytogen.models.registry import MODELS, register_model  # noqa: E402
from cytogen.predict.model_folder import save_model_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def _folder(trained_looking_batchnorm, path, name, dims, **kwargs):
    torch.manual_seed(1)
    net = build_model(name, in_channels=2, out_channels=1, dims=dims, **kwargs)
    trained_looking_batchnorm(net)
    norm = Normalizer(offset=[10.0, 20.0], scale=[100.0, 50.0])
    save_model_folder(path, net.eval(), architecture={"name": name, "dims": dims, "in_channels": 2,
                                                      "out_channels": 1, "kwargs": kwargs},
                      source_norm=norm, target_norm=Normalizer(offset=[3.0], scale=[40.0]),
                      source_channels=["a", "b"], target_channels=["c"], pixel_size_um=[0.5] * dims,
                      patch_size=[16] * dims)
    return net.eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_onnx_export_reproduces_pytorch_at_other_batch_and_spatial_sizes(dims, tmp_path, capsys, trained_looking_batchnorm):
    import onnx
    import onnxruntime as ort

    net = _folder(trained_looking_batchnorm, tmp_path / "model", "unet", dims, depth=2, base_channels=4)
    out = tmp_path / "exported" / "m.onnx"
    assert main(["export", str(tmp_path / "model"), "--format", "onnx", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity_rel_range"] <= 1e-4 and report["opset"] >= 17
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    shape = (3, 2, *([12, 20, 28][-dims:]))  # batch 3, sizes never exported: multiples of 4
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = session.run(None, {"x": x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (3, 1, *shape[2:])
    assert float(np.abs(got - ref).max()) <= 1e-4 * float(ref.max() - ref.min())
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["cytogen_model_json"])
    assert meta["normalization"]["source"]["scale"] == [100.0, 50.0] and meta["size_multiple"] == [4] * dims
    assert meta["source_channels"] == ["a", "b"]


class _DataDependent(nn.Module):
    """A generator with data-dependent control flow, which torch.export cannot trace."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.dims, self.size_multiple = in_channels, out_channels, dims, (1,) * dims
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if float(y.mean()) > 0 else y


def test_a_network_that_does_not_export_is_refused_with_the_reason(tmp_path, capsys, trained_looking_batchnorm):
    register_model("_test_data_dependent")(_DataDependent)
    try:
        _folder(trained_looking_batchnorm, tmp_path / "model", "_test_data_dependent", 2)
        out = tmp_path / "m.onnx"
        assert main(["export", str(tmp_path / "model"), "--format", "onnx", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not export to ONNX" in err and "Traceback" not in err
        assert not out.exists() and not list(tmp_path.glob(".m.onnx*"))
    finally:
        MODELS.unregister("_test_data_dependent")


def test_wrong_suffix_is_refused(tmp_path, capsys, trained_looking_batchnorm):
    _folder(trained_looking_batchnorm, tmp_path / "model", "unet", 2, depth=1, base_channels=2)
    assert main(["export", str(tmp_path / "model"), "--format", "onnx", "--out", str(tmp_path / "m.zip")]) == 2
    assert "give --out NAME.onnx" in capsys.readouterr().err


@pytest.mark.slow  # every registered generator, 2D and 3D (about 2 min on 2 shared cores)
@pytest.mark.parametrize("name,kwargs", [
    ("unet", dict(depth=2, base_channels=4)), ("r2unet", dict(depth=2, base_channels=4)),
    ("unet_chain", dict(stages=2, depth=2, base_channels=4)),
    ("tfill_coarse", dict(base_channels=4, max_channels=8, n_down=2, embed_dim=16, n_blocks=1, n_heads=2,
                          ref_size=16)),
])
@pytest.mark.parametrize("dims", [2, 3])
def test_every_generator_exports_in_2d_and_3d(name, kwargs, dims, tmp_path, trained_looking_batchnorm):
    from cytogen.errors import CytogenError
    from cytogen.predict.model_folder import load_model_folder
    from cytogen.predict.onnx_export import write_onnx

    assert sorted(n for n in MODELS.names() if not n.startswith("_")) == ["r2unet", "tfill_coarse", "unet", "unet_chain"]
    try:
        _folder(trained_looking_batchnorm, tmp_path / "model", name, dims, **kwargs)
    except CytogenError as exc:  # tfill_coarse is 2D only
        assert name == "tfill_coarse" and dims == 3 and "2D only" in str(exc)
        return
    report = write_onnx(load_model_folder(tmp_path / "model"), tmp_path / "m.onnx")
    assert report["parity_rel_range"] <= 1e-4


@pytest.mark.slow  # one tfill_coarse export (~10 s)
def test_an_export_fixed_to_its_example_size_is_refused(tmp_path):
    """tfill_coarse exported at its reference size keeps only the no-resize branch of its position
    embedding: the check at another size refuses it (write_onnx never exports at that size)."""
    from cytogen.errors import CytogenError
    from cytogen.predict.onnx_backend import export_onnx
    from cytogen.predict.onnx_export import check_onnx

    net = build_model("tfill_coarse", in_channels=1, out_channels=1, dims=2, base_channels=4, max_channels=8,
                      n_down=2, embed_dim=16, n_blocks=1, n_heads=2, ref_size=16).eval()
    export_onnx(net, torch.randn(2, 1, 16, 16), tmp_path / "m.onnx", net.size_multiple)
    assert check_onnx(net, tmp_path / "m.onnx", (16, 16), 1, "tfill") <= 1e-4  # fine at the example size
    with pytest.raises(CytogenError, match=r"does not run at \(20, 20\) px"):
        check_onnx(net, tmp_path / "m.onnx", (20, 20), 1, "tfill")
