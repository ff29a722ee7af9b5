import numpy as np
import pytest
from skimage.metrics import structural_similarity

from cytogen.errors import CytogenError
from cytogen.evaluate.pixel import channel_metrics, image_metrics, pearson_r, summarize


def test_pearson_known_answers():
    x = np.arange(100.0)
    assert pearson_r(x, 3 * x + 2) == pytest.approx(1.0)
    assert pearson_r(x, -x) == pytest.approx(-1.0)
    assert np.isnan(pearson_r(x, np.ones(100)))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(size=500)
    assert pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_identical_and_affine_predictions_are_perfect():
    t = np.random.default_rng(1).gamma(2, 10, size=(64, 64))
    m = channel_metrics(5 * t + 100, t)  # affine-fitted before L1/MSE/SSIM
    assert m["l1"] == pytest.approx(0, abs=1e-9) and m["ssim"] == pytest.approx(1.0)
    assert m["pearson_r"] == pytest.approx(1.0) and m["psnr"] > 100


def test_metrics_without_normalisation_match_skimage_and_numpy():
    rng = np.random.default_rng(2)
    t = rng.random((40, 50))
    p = t + rng.normal(0, 0.1, size=t.shape)
    m = channel_metrics(p, t, normalize="none")
    assert m["l1"] == pytest.approx(np.abs(p - t).mean())
    assert m["mse"] == pytest.approx(((p - t) ** 2).mean())
    rng_t = t.max() - t.min()
    assert m["ssim"] == pytest.approx(structural_similarity(t, p, data_range=rng_t, win_size=7))
    assert m["psnr"] == pytest.approx(10 * np.log10(rng_t ** 2 / m["mse"]))


def test_noise_lowers_scores_3d_and_multichannel():
    rng = np.random.default_rng(3)
    t = rng.random((2, 8, 32, 32))
    good = image_metrics(t + rng.normal(0, 0.05, t.shape), t)
    bad = image_metrics(t + rng.normal(0, 0.5, t.shape), t)
    assert len(good) == 2
    for g, b in zip(good, bad):
        assert g["pearson_r"] > b["pearson_r"] and g["ssim"] > b["ssim"] and g["l1"] < b["l1"]


def test_errors_and_summary():
    with pytest.raises(CytogenError, match="shape"):
        image_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(CytogenError, match="NaN"):
        channel_metrics(np.full((8, 8), np.nan), np.zeros((8, 8)))
    s = summarize([{"l1": 1.0}, {"l1": 3.0}, {"l1": float("nan")}], ("l1",))
    assert s["l1"]["median"] == 2.0 and s["l1"]["n"] == 2
