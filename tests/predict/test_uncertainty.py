"""Predictions with a spread: TTA, ensembles, MC dropout and GAN samples (cytogen.predict.uncertainty)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cytogen.cli import main
from cytogen.config import recipe_from_dict
from cytogen.data.normalize import Normalizer
from cytogen.io.images import Image, read_image, write_image
from cytogen.models import build_model
from cytogen.predict.model_folder import load_model_folder, save_model_folder
from cytogen.predict.uncertainty import DIHEDRAL, Uncertainty, dihedral, undo_dihedral
from cytogen.workflows.predict import predict, predict_image, predict_image_spread

PX = 0.4
KW = {"depth": 2, "base_channels": 4}


def _field(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((1, size, size)) * 100 + 50).astype(np.float32)


def _save(folder, net, *, task="translate", target_scale=1.0, kwargs=KW, channels=("actin",)):
    src = Normalizer().fit([_field()])
    tgt = Normalizer(method="zscore", scope="dataset")
    tgt.offset, tgt.scale = [10.0 * target_scale], [3.0 * target_scale]
    recipe = recipe_from_dict({"task": task, "predict": {"tile": [64, 64], "overlap": 0.25, "batch_size": 2}})
    arch = {"name": "unet", "dims": 2, "in_channels": len(channels), "out_channels": 1, "kwargs": dict(kwargs)}
    return save_model_folder(folder, net.eval(), architecture=arch, source_norm=src, target_norm=tgt,
                             source_channels=list(channels), target_channels=["nucleus"],
                             pixel_size_um=[PX, PX], patch_size=[32, 32], recipe=recipe.to_dict())


def _net(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", in_channels=1, out_channels=1, dims=2, **{**KW, **kwargs})


def _symmetrise(net: torch.nn.Module) -> torch.nn.Module:
    """Every kernel averaged over the 8 dihedral transforms: the network becomes D4-equivariant."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                w = m.weight
                m.weight.copy_(sum(dihedral(w, k, f) for k, f in DIHEDRAL) / 8)
    return net


@pytest.fixture
def image_file(tmp_path):
    return str(write_image(tmp_path / "in" / "f.tif", Image(_field(1, 96), "CYX", (PX, PX), ["actin"])))


def test_dihedral_transforms_are_eight_distinct_exactly_inverted():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 1, 3, 4, 6)  # 3D, non-square
    seen = set()
    for k, f in DIHEDRAL:
        y = dihedral(x[..., :4, :4], k, f)
        seen.add(tuple(y.flatten().tolist()))
        assert torch.equal(undo_dihedral(dihedral(x, k, f), k, f), x)
    assert len(DIHEDRAL) == 8 and len(seen) == 8


def test_tta_of_an_equivariant_model_equals_the_model_output(tmp_path):
    net = _symmetrise(_net(0))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():  # precondition: the network really is equivariant
        np.testing.assert_allclose(net.eval()(torch.rot90(x, 1, (-2, -1))),
                                   torch.rot90(net(x), 1, (-2, -1)), atol=1e-5)
    model = load_model_folder(_save(tmp_path / "m", net))
    image = Image(_field(2, 96), "CYX", (PX, PX), ["actin"])
    plain = predict_image(model, image, settings=None)
    mean, spread = predict_image_spread(model, image, Uncertainty(tta=True))
    np.testing.assert_allclose(mean, plain, atol=1e-4 * np.abs(plain).max())
    assert spread.max() < 1e-4 * np.abs(plain).max()
    # ... and a network that is not equivariant gets a real spread from it
    model2 = load_model_folder(_save(tmp_path / "m2", _net(0)))
    assert predict_image_spread(model2, image, Uncertainty(tta=True))[1].mean() > 1e-3


def test_ensemble_of_two_identical_folders_has_zero_spread(tmp_path, image_file):
    a = _save(tmp_path / "a" / "model", _net(0))
    b = shutil.copytree(a, tmp_path / "b" / "model")
    assert main(["predict", str(a), image_file, "--out", str(tmp_path / "one")]) == 0
    assert main(["predict", str(a), image_file, "--out", str(tmp_path / "two"), "--ensemble", str(b)]) == 0
    one, mean = read_image(tmp_path / "one" / "f.tif"), read_image(tmp_path / "two" / "f.tif")
    spread = read_image(tmp_path / "two" / "f_spread.tif")
    assert np.all(spread.data == 0)
    np.testing.assert_allclose(mean.data, one.data, rtol=0, atol=1e-6 * np.abs(one.data).max())
    assert spread.pixel_size_um == pytest.approx((PX, PX)) == mean.pixel_size_um
    assert spread.channel_names == mean.channel_names == ["nucleus"] and spread.data.shape == mean.data.shape
    rt = json.loads((tmp_path / "two" / "runtime.json").read_text())["uncertainty"]
    assert rt["passes_per_tile"] == 2 and rt["ensemble"] == [str(b)]


def test_ensemble_mean_and_spread_of_two_models_in_target_units(tmp_path):
    """One tile (no blending): mean = average and SD = |difference| / 2 of the members' predictions,
    each member through its own target statistics."""
    a = load_model_folder(_save(tmp_path / "a", _net(0)))
    b = load_model_folder(_save(tmp_path / "b", _net(1), target_scale=2.0))
    image = Image(_field(3, 64), "CYX", (PX, PX), ["actin"])
    pa, pb = predict_image(a, image), predict_image(b, image)
    mean, spread = predict_image_spread(a, image, Uncertainty(members=[b]))
    tol = 1e-4 * np.abs(pa).max()
    np.testing.assert_allclose(mean, (pa + pb) / 2, atol=tol)
    np.testing.assert_allclose(spread, np.abs(pa - pb) / 2, atol=tol)


def test_tta_with_ensemble_multiplies_passes_and_streams_both_formats(tmp_path, image_file):
    a = _save(tmp_path / "a" / "model", _net(0))
    b = _save(tmp_path / "b" / "model", _net(1))
    model, other = load_model_folder(a), load_model_folder(b)
    whole = predict_image_spread(model, read_image(image_file), Uncertainty(tta=True, members=[other]),
                                 settings=None)
    for fmt, ext in (("tif", ".tif"), ("ome-zarr", ".ome.zarr")):
        out = tmp_path / fmt
        predict(a, out, files=[image_file], tta=True, ensemble=[b], output_format=fmt, progress=False)
        mean, spread = read_image(out / f"f{ext}"), read_image(out / f"f_spread{ext}")
        np.testing.assert_allclose(mean.data, whole[0], atol=1e-3 * np.abs(whole[0]).max())
        np.testing.assert_allclose(spread.data, whole[1], atol=1e-3 * np.abs(whole[0]).max())
        assert spread.pixel_size_um == pytest.approx((PX, PX))
        assert json.loads((out / "runtime.json").read_text())["uncertainty"]["passes_per_tile"] == 16


def test_mc_dropout_is_seeded_and_refused_without_dropout(tmp_path, image_file, capsys):
    drop = _save(tmp_path / "d" / "model", _net(0, decoder_dropout=0.3), kwargs={**KW, "decoder_dropout": 0.3})
    outs = {}
    for name, seed in (("s0", 0), ("s0b", 0), ("s1", 1)):
        assert main(["predict", str(drop), image_file, "--out", str(tmp_path / name), "--mc-dropout", "4",
                     "--seed", str(seed)]) == 0
        outs[name] = read_image(tmp_path / name / "f_spread.tif").data
    assert (outs["s0"] > 0).mean() > 0.9  # the draws disagree almost everywhere
    np.testing.assert_array_equal(outs["s0"], outs["s0b"])
    assert not np.array_equal(outs["s0"], outs["s1"])
    plain = _save(tmp_path / "p" / "model", _net(0))
    capsys.readouterr()
    assert main(["predict", str(plain), image_file, "--out", str(tmp_path / "x"), "--mc-dropout", "4"]) == 2
    err = capsys.readouterr().err
    assert "no dropout layer" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()
    assert main(["predict", str(drop), image_file, "--out", str(tmp_path / "x"), "--samples", "4"]) == 2
    assert "--samples is for adversarial generators" in capsys.readouterr().err


def test_gan_samples_give_a_spread_and_mc_dropout_is_pointed_to_samples(tmp_path, image_file, capsys):
    gan = _save(tmp_path / "g" / "model", _net(0, decoder_dropout=0.5), task="gan",
                kwargs={**KW, "decoder_dropout": 0.5})
    assert main(["predict", str(gan), image_file, "--out", str(tmp_path / "o"), "--samples", "3"]) == 0
    assert read_image(tmp_path / "o" / "f_spread.tif").data.max() > 0
    capsys.readouterr()
    assert main(["predict", str(gan), image_file, "--out", str(tmp_path / "x"), "--mc-dropout", "3"]) == 2
    assert "use --samples N" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--mc-dropout", "1"], "at least 2 draws"),
    (["--mc-dropout", "2", "--samples", "2"], "not both"),
    (["--tta", "--devices", "2"], "run in one process"),
])
def test_bad_uncertainty_flags_exit_2_in_one_line(tmp_path, image_file, capsys, extra, message):
    a = _save(tmp_path / "a" / "model", _net(0))
    assert main(["predict", str(a), image_file, "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_ensemble_member_with_other_channels_is_refused(tmp_path, image_file, capsys):
    a = _save(tmp_path / "a" / "model", _net(0))
    torch.manual_seed(0)
    two = build_model("unet", in_channels=2, out_channels=1, dims=2, **KW)
    b = _save(tmp_path / "b" / "model", two, channels=("actin", "tubulin"))
    assert main(["predict", str(a), image_file, "--out", str(tmp_path / "o"), "--ensemble", str(b)]) == 2
    err = capsys.readouterr().err
    assert "ensemble member differs" in err and "input channels" in err


def test_resume_predicts_again_when_the_spread_is_missing(tmp_path, image_file):
    a = _save(tmp_path / "a" / "model", _net(0))
    out = tmp_path / "o"
    assert main(["predict", str(a), image_file, "--out", str(out)]) == 0  # a mean without spread
    assert main(["predict", str(a), image_file, "--out", str(out), "--tta", "--resume"]) == 0
    assert (out / "f_spread.tif").exists()
