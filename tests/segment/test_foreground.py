"""Foreground masks: the Eq 2 graph cut is the exact energy minimum and recovers planted foregrounds;
the scribble-trained pixel classifier separates textures that intensity cannot."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

pytest.importorskip("maxflow")
pytest.importorskip("sklearn")

from cytogen.errors import CytogenError  # noqa: E402
from cytogen.segment.foreground import (  # noqa: E402
    DEFAULT_KAPPA,
    PixelClassifier,
    estimate_alpha,
    foreground_mask,
    graph_cut,
    pixel_features,
    scale01,
    train_pixel_classifier,
    intensity_alpha,
)


# --------------------------------------------------------------------------- helpers (independent of the module)

def energy(y: np.ndarray, x: np.ndarray, alpha: float, kappa: float, eps: float = 1e-6) -> float:
    """Eq 2 written out: unary -ln(alpha x) / -ln((1-alpha)(1-x)) plus kappa per unequal neighbour pair."""
    xc = np.clip(x.astype(np.float64), eps, 1 - eps)
    unary = np.where(y, -np.log(alpha * xc), -np.log((1 - alpha) * (1 - xc))).sum()
    cuts = sum(int(np.count_nonzero(np.diff(y.astype(np.int8), axis=a))) for a in range(y.ndim))
    return float(unary + kappa * cuts)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def two_disks(shape=(128, 128)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - 40) ** 2 + (xx - 40) ** 2 < 20 ** 2) | ((yy - 85) ** 2 + (xx - 90) ** 2 < 25 ** 2)


def noisy(truth: np.ndarray, seed: int, lo=0.3, hi=0.7, sd=0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.where(truth, hi, lo) + sd * rng.standard_normal(truth.shape), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- graph cut

@pytest.mark.parametrize("seed", [0, 1])
def test_graph_cut_recovers_planted_noisy_foreground(seed):
    truth = two_disks()
    x = noisy(truth, seed)
    thr = x > 0.5
    cut = graph_cut(x, alpha=0.5, kappa=2.0, eps=0.01)
    assert cut.dtype == bool and cut.shape == truth.shape
    assert iou(cut, truth) > 0.95
    assert iou(cut, truth) > iou(thr, truth) + 0.3  # thresholding at 0.5 gets ~0.36 here
    # foreground is the bright side (source/sink not swapped): inverting the image inverts the mask
    inv = graph_cut(1 - x, alpha=0.5, kappa=2.0, eps=0.01)
    assert iou(~inv, truth) > 0.95


def test_kappa_zero_is_pixelwise_minimum_of_unary():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (40, 50)).astype(np.float32)
    for alpha in (0.2, 0.5, 0.8):
        want = alpha * x.astype(np.float64) > (1 - alpha) * (1 - x.astype(np.float64))
        assert np.array_equal(graph_cut(x, alpha=alpha, kappa=0.0), want)
        # the max-flow path with a negligible penalty gives the same (orientation of the terminals)
        assert np.array_equal(graph_cut(x, alpha=alpha, kappa=1e-9), want)
        # Eq 2 without a penalty is the threshold x > 1 - alpha
        assert np.array_equal(want, x > 1 - alpha)


@pytest.mark.parametrize("kappa", [0.3, 1.0, 3.0])
def test_graph_cut_energy_not_above_truth_threshold_or_flips(kappa):
    truth = two_disks((64, 64))
    x = noisy(truth, 5)
    alpha = 0.4
    cut = graph_cut(x, alpha=alpha, kappa=kappa)
    e = energy(cut, x, alpha, kappa)
    assert e <= energy(truth, x, alpha, kappa) + 1e-6
    assert e <= energy(x > 1 - alpha, x, alpha, kappa) + 1e-6
    rng = np.random.default_rng(0)
    for _ in range(20):  # no single-pixel flip lowers it
        y = cut.copy()
        i = tuple(rng.integers(0, s) for s in y.shape)
        y[i] = ~y[i]
        assert e <= energy(y, x, alpha, kappa) + 1e-6


@pytest.mark.parametrize("shape", [(3, 4), (2, 2, 3)])
def test_graph_cut_is_exact_minimum_by_enumeration(shape):
    rng = np.random.default_rng(11)
    n = int(np.prod(shape))
    for trial in range(4):
        x = rng.uniform(0, 1, shape)
        alpha, kappa = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.1, 1.5))
        best = min(energy(np.array(bits, dtype=bool).reshape(shape), x, alpha, kappa)
                   for bits in itertools.product((0, 1), repeat=n))
        cut = graph_cut(x, alpha=alpha, kappa=kappa)
        assert energy(cut, x, alpha, kappa) == pytest.approx(best, abs=1e-9)


def test_graph_cut_3d_recovers_ball():
    zz, yy, xx = np.mgrid[:24, :40, :40]
    truth = (zz - 12) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 10 ** 2
    x = noisy(truth, 2)
    cut = graph_cut(x, alpha=0.5, kappa=1.5, eps=0.01)
    assert cut.shape == truth.shape
    assert iou(cut, truth) > 0.93
    assert iou(cut, truth) > iou(x > 0.5, truth) + 0.3
    # 3D uses z neighbours: the same stack cut slice by slice (no z coupling) is worse
    per_slice = np.stack([graph_cut(s, alpha=0.5, kappa=1.5, eps=0.01) for s in x])
    assert iou(cut, truth) > iou(per_slice, truth)


def test_larger_kappa_never_adds_boundary():
    truth = two_disks((64, 64))
    x = noisy(truth, 7)
    cuts = [int(sum(np.count_nonzero(np.diff(graph_cut(x, alpha=0.5, kappa=k).astype(np.int8), axis=a))
                    for a in (0, 1))) for k in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert cuts == sorted(cuts, reverse=True)
    assert cuts[-1] < cuts[0] / 5


# --------------------------------------------------------------------------- alpha, scaling

def test_estimate_alpha_planted_fraction():
    rng = np.random.default_rng(0)
    truth = np.zeros((100, 100), dtype=bool)
    truth[:30] = True  # 30 % foreground
    x = np.where(truth, 0.8, 0.2) + 0.05 * rng.standard_normal(truth.shape)
    assert estimate_alpha(x) == pytest.approx(0.3, abs=0.01)
    small = np.zeros((100, 100))
    small[0, :5] = 1.0  # 0.05 %
    assert estimate_alpha(small) == 0.02
    assert estimate_alpha(1.0 - small) == 0.98
    assert estimate_alpha(np.full((8, 8), 0.3)) == 0.02


def test_scale01_known_values():
    ramp = np.arange(1001, dtype=np.float64)  # percentile p of 0..1000 is 10 p
    out = scale01(ramp)
    assert out.dtype == np.float32 and out.shape == ramp.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[505] == pytest.approx((505 - 10) / (998 - 10), abs=1e-6)
    assert (out[:11] == 0).all() and (out[998:] == 1).all()
    assert np.array_equal(scale01(np.full((5, 6), 7.0)), np.zeros((5, 6), np.float32))
    # mostly-constant image: the percentiles coincide, min/max are used
    sparse = np.zeros((50, 50))
    sparse[3, 4] = 5.0
    s = scale01(sparse)
    assert s[3, 4] == 1.0 and s.sum() == 1.0
    # affine invariance
    assert np.allclose(scale01(3.0 * ramp + 100.0), out, atol=1e-6)


# --------------------------------------------------------------------------- features and classifier

def texture_image(seed: int, shape=(128, 128)):
    """Cells: white-noise texture (sd 0.25); background: flat (sd 0.01); both with mean 0.5."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = ((yy - 38) ** 2 + (xx - 38) ** 2 < 28 ** 2) | ((np.abs(yy - 92) < 24) & (np.abs(xx - 84) < 32))
    img = 0.5 + np.where(truth, 0.25, 0.01) * rng.standard_normal(shape)
    return img.astype(np.float32), truth


def scribbles_for(truth: np.ndarray) -> np.ndarray:
    """A few short strokes per class, well inside each region (128 x 128 layout)."""
    s = np.zeros(truth.shape, dtype=np.int32)
    s[38, 20:56] = 2          # disk
    s[20:56, 38] = 2
    s[92, 60:110] = 2         # rectangle
    s[4, 4:124] = 1           # background strokes
    s[4:124, 123] = 1
    s[123, 4:60] = 1
    s[70:80, 4] = 1
    assert (truth[s == 2]).all() and (~truth[s == 1]).all()
    return s


def test_pixel_features_shape_and_values():
    img, _ = texture_image(0)
    img = img[:48, :40]
    f = pixel_features(img, sigmas=(1.0, 2.0))
    assert f.shape == (6, 48, 40) and f.dtype == np.float32
    x = scale01(img).astype(np.float64)
    g = ndi.gaussian_filter(x, 2.0)
    assert np.allclose(f[3], g, atol=1e-5)                                     # Gaussian, sigma 2
    assert np.allclose(f[4], ndi.gaussian_filter(x * x, 2.0) - g * g, atol=1e-5)  # local variance
    assert np.allclose(f[5], ndi.gaussian_laplace(x, 2.0), atol=1e-5)          # LoG
    two = pixel_features(np.stack([img, 10 * img + 3]), sigmas=(1.0, 2.0))
    assert two.shape == (12, 48, 40)
    assert np.allclose(two[:6], two[6:], atol=1e-5)  # scaled per channel
    assert np.all(pixel_features(np.ones((20, 20)), sigmas=(1.0,)) == 0)


def test_classifier_separates_texture_intensity_cannot():
    img, truth = texture_image(0)
    # intensity alone fails: the graph cut of the smoothed intensity does not find the cells
    assert iou(foreground_mask(img, alpha=0.5), truth) < 0.6
    scr = scribbles_for(truth)
    mask = foreground_mask(img, scribbles=scr)
    assert mask.shape == truth.shape and mask.dtype == bool
    assert iou(mask, truth) > 0.9
    clf = train_pixel_classifier(img, scr, n_estimators=30, seed=1)
    assert isinstance(clf, PixelClassifier) and clf.n_channels == 1
    p = clf.probability(img)
    assert p.shape == truth.shape and p.dtype == np.float32
    assert p[truth].mean() > 0.7 and p[~truth].mean() < 0.3
    # a trained classifier applies to another field of the same kind
    img2, truth2 = texture_image(5)
    assert iou(foreground_mask(img2, classifier=clf), truth2) > 0.9
    # reproducible with the same seed
    assert np.array_equal(train_pixel_classifier(img, scr, n_estimators=30, seed=1).probability(img), p)


def test_foreground_mask_intensity_route():
    truth = two_disks((64, 64))
    img = (1000 * noisy(truth, 4) + 50).astype(np.float32)
    scaled = scale01(ndi.gaussian_filter(img, 1.0))
    want = graph_cut(scaled, alpha=intensity_alpha(scaled), kappa=DEFAULT_KAPPA)
    got = foreground_mask(img)
    assert np.array_equal(got, want)
    assert iou(got, truth) > 0.9  # the 1 - Li prior keeps the disks
    # multi-channel: mean of the per-channel scaled images; a rescaled copy of a channel changes nothing
    assert np.array_equal(foreground_mask(np.stack([img, 0.01 * img])), got)
    assert iou(foreground_mask(img, alpha=0.5, kappa=1.0), truth) > 0.9


def test_intensity_alpha_is_one_minus_li():
    from skimage.filters import threshold_li

    x = np.concatenate([np.full(700, 0.1), np.full(300, 0.6)]).astype(np.float32).reshape(20, 50)
    assert intensity_alpha(x) == pytest.approx(1 - threshold_li(x))
    # with no cut penalty the cut is Li's threshold
    assert np.array_equal(graph_cut(x, alpha=intensity_alpha(x), kappa=0.0), x > threshold_li(x))


# --------------------------------------------------------------------------- errors

def test_bad_inputs_raise_with_fix():
    ok = np.full((10, 10), 0.5, dtype=np.float32)
    nan = ok.copy()
    nan[2, 3] = np.nan
    with pytest.raises(CytogenError, match="NaN"):
        graph_cut(nan)
    with pytest.raises(CytogenError, match="scale01"):
        graph_cut(ok * 3)
    with pytest.raises(CytogenError, match="2D or 3D"):
        graph_cut(np.zeros(10))
    with pytest.raises(CytogenError, match="2D or 3D"):
        graph_cut(np.zeros((2, 2, 2, 2)))
    with pytest.raises(CytogenError, match="alpha"):
        graph_cut(ok, alpha=1.0)
    with pytest.raises(CytogenError, match="kappa"):
        graph_cut(ok, kappa=-1)
    with pytest.raises(CytogenError, match="empty"):
        graph_cut(np.zeros((0, 5)))
    with pytest.raises(CytogenError, match="NaN"):
        foreground_mask(nan)
    img, truth = texture_image(0)
    img = img[:40, :40]
    with pytest.raises(CytogenError, match="shape"):
        train_pixel_classifier(img, np.zeros((40, 41), dtype=int))
    one = np.zeros((40, 40), dtype=int)
    one[5, :10] = 1
    with pytest.raises(CytogenError, match=r"no cells \(2\)"):
        train_pixel_classifier(img, one)
    with pytest.raises(CytogenError, match="both classes|no cells"):
        foreground_mask(img, scribbles=one)
    bad = one.copy()
    bad[6, :3] = 3
    with pytest.raises(CytogenError, match="0 = unlabelled"):
        train_pixel_classifier(img, bad)
    two = one.copy()
    two[20, 20:30] = 2
    clf = train_pixel_classifier(img, two, n_estimators=5)
    with pytest.raises(CytogenError, match="channel"):
        clf.probability(np.stack([img, img]))
    with pytest.raises(CytogenError, match="not both"):
        foreground_mask(img, scribbles=two, classifier=clf)
    with pytest.raises(CytogenError, match="sigmas"):
        pixel_features(img, sigmas=())


def test_missing_optional_dependencies(monkeypatch):
    ok = np.full((6, 6), 0.5)
    monkeypatch.setitem(sys.modules, "maxflow", None)
    with pytest.raises(CytogenError, match=r"pip install 'cytogen\[segment\]'"):
        graph_cut(ok, alpha=0.5)
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    scr = np.zeros((6, 6), dtype=int)
    scr[0], scr[5] = 1, 2
    with pytest.raises(CytogenError, match=r"pip install 'cytogen\[segment\]'"):
        train_pixel_classifier(ok, scr)


def test_holes_are_filled_up_to_the_given_area():
    img = np.zeros((60, 60), np.float32)
    img[5:55, 5:55] = 1.0
    img[10:14, 10:14] = 0.0  # a 16 px hole (a dark nucleus)
    img[25:45, 25:45] = 0.0  # a 400 px hole
    plain = foreground_mask(img, sigma_px=0, max_hole_px=0)
    assert not plain[12, 12] and not plain[35, 35]
    some = foreground_mask(img, sigma_px=0, max_hole_px=100)
    assert some[12, 12] and not some[35, 35]
    every = foreground_mask(img, sigma_px=0, max_hole_px=None)
    assert every[12, 12] and every[35, 35]
