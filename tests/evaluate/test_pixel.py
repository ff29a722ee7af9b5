import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve
from skimage.metrics import structural_similarity

from cytogen.errors import CytogenError
from cytogen.evaluate.pixel import (METRICS, calibration_fit, channel_metrics, image_metrics, pearson_r,
                                    summarize)


def _truth(seed: int = 1, shape: tuple[int, ...] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2, 10, size=shape)


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float, kernel: np.ndarray) -> float:
    """Wang et al. 2004 SSIM written out: windowed moments by 'valid' convolution, mean of the map."""
    def f(a):
        return convolve(a, kernel, mode="valid")
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))))


def _gaussian_kernel(ndim: int, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    g /= g.sum()
    k = g
    for _ in range(ndim - 1):
        k = np.multiply.outer(k, g)
    return k


def test_pearson_known_answers():
    x = np.arange(100.0)
    assert pearson_r(x, 3 * x + 2) == pytest.approx(1.0)
    assert pearson_r(x, -x) == pytest.approx(-1.0)
    assert np.isnan(pearson_r(x, np.ones(100)))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(size=500)
    assert pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_every_metric_is_reported_in_order():
    m = channel_metrics(_truth() + 1, _truth())
    assert tuple(m) == METRICS


def test_anti_correlated_prediction_keeps_its_sign_and_gets_no_flattering_fit():
    t = _truth()
    p = -t + np.random.default_rng(2).normal(0, 1, t.shape)
    m = channel_metrics(p, t)
    assert m["pearson_r"] == pytest.approx(np.corrcoef(p.ravel(), t.ravel())[0, 1]) and m["pearson_r"] < -0.99
    assert m["calibration_slope"] == 0.0 and m["calibration_offset"] == pytest.approx(t.mean())
    lo, hi = np.percentile(t, [1, 99.8])
    tn = (t - lo) / (hi - lo)
    # slope 0: the calibrated image is the truth's mean, whose MSE is the truth's variance
    assert m["calibrated_mse"] == pytest.approx(tn.var(), rel=1e-9)
    assert m["calibrated_l1"] == pytest.approx(np.abs(tn - tn.mean()).mean(), rel=1e-9)
    pn = (p - lo) / (hi - lo)  # raw: the same transform, taken from the truth
    assert m["raw_mse"] == pytest.approx(((pn - tn) ** 2).mean(), rel=1e-9)
    assert m["raw_mse"] > 10 * m["calibrated_mse"]


def test_affine_prediction_positive_control():
    t = _truth()
    m = channel_metrics(2 * t + 5, t)
    assert m["pearson_r"] == pytest.approx(1.0)
    assert m["raw_l1"] > 0.1 and m["raw_mse"] > 0.01 and m["raw_ssim"] < 0.9 and m["raw_psnr"] < 20
    assert m["calibrated_l1"] == pytest.approx(0, abs=1e-9) and m["calibrated_mse"] == pytest.approx(0, abs=1e-12)
    assert m["calibrated_ssim"] == pytest.approx(1.0) and m["calibrated_psnr"] > 100
    assert m["calibration_slope"] == pytest.approx(0.5) and m["calibration_offset"] == pytest.approx(-2.5)
    # a perfect prediction is perfect in both families
    same = channel_metrics(t, t)
    assert same["raw_mse"] == 0 and same["raw_psnr"] == np.inf and same["raw_ssim"] == pytest.approx(1.0)


def test_calibration_fit_is_least_squares_with_nonnegative_slope():
    rng = np.random.default_rng(4)
    p = rng.normal(size=300)
    t = 3 * p - 1 + rng.normal(0, 0.1, 300)
    a, b = calibration_fit(p, t)
    np.testing.assert_allclose((a, b), np.polyfit(p, t, 1), rtol=1e-10)
    assert calibration_fit(-p, t) == (0.0, pytest.approx(t.mean()))
    assert calibration_fit(np.ones(300), t) == (0.0, pytest.approx(t.mean()))


def test_raw_metrics_without_normalisation_are_in_target_units():
    rng = np.random.default_rng(2)
    t = rng.random((40, 50))
    p = t + rng.normal(0, 0.1, size=t.shape)
    m = channel_metrics(p, t, normalize="none")
    assert m["raw_l1"] == pytest.approx(np.abs(p - t).mean())
    assert m["raw_mse"] == pytest.approx(((p - t) ** 2).mean())
    # percentile normalisation divides squared errors by the truth's range squared
    lo, hi = np.percentile(t, [1, 99.8])
    assert channel_metrics(p, t)["raw_mse"] == pytest.approx(m["raw_mse"] / (hi - lo) ** 2)


def test_ssim_window_is_11px_gaussian_sigma_1_5():
    rng = np.random.default_rng(5)
    t = gaussian_filter(rng.random((48, 56)), 2)  # structure at the scale where windows differ
    p = 0.7 * t + rng.normal(0, 0.5 * t.std(), t.shape)
    lo, hi = np.percentile(t, [1, 99.8])
    cases = {"none": (t, p, hi - lo), "percentile": ((t - lo) / (hi - lo), (p - lo) / (hi - lo), 1.0)}
    for normalize, (x, y, data_range) in cases.items():
        ref = _ssim_reference(x, y, data_range, _gaussian_kernel(2))
        assert channel_metrics(p, t, normalize=normalize)["raw_ssim"] == pytest.approx(ref, abs=1e-10)
    # the window matters: a 7x7 uniform window (cytogen's former one) gives another value
    uniform7 = structural_similarity(t, p, data_range=hi - lo, win_size=7, use_sample_covariance=False)
    assert uniform7 == pytest.approx(_ssim_reference(t, p, hi - lo, np.full((7, 7), 1 / 49)), abs=1e-10)
    assert abs(uniform7 - channel_metrics(p, t, normalize="none")["raw_ssim"]) > 0.03


def test_ssim_3d_uses_the_same_window_per_axis_and_refuses_small_images():
    rng = np.random.default_rng(6)
    t = rng.random((13, 20, 20))
    p = t + rng.normal(0, 0.2, t.shape)
    m = channel_metrics(p, t, normalize="none")
    assert m["raw_ssim"] == pytest.approx(_ssim_reference(t, p, m["psnr_data_range"], _gaussian_kernel(3)),
                                          abs=1e-10)
    small = channel_metrics(p[:10], t[:10], normalize="none")  # 10 < 11 planes: no full window
    assert np.isnan(small["raw_ssim"]) and np.isnan(small["calibrated_ssim"])
    assert np.isfinite(small["raw_mse"]) and np.isfinite(small["pearson_r"])


def test_psnr_data_range_is_the_truth_percentile_range_not_one_hot_pixel():
    rng = np.random.default_rng(7)
    t = rng.random((64, 64))
    p = t + rng.normal(0, 0.05, t.shape)
    m = channel_metrics(p, t, normalize="none")
    lo, hi = np.percentile(t, [1, 99.8])
    assert m["psnr_data_range"] == pytest.approx(hi - lo)
    assert m["raw_psnr"] == pytest.approx(10 * np.log10((hi - lo) ** 2 / m["raw_mse"]))
    assert channel_metrics(p, t)["psnr_data_range"] == 1.0
    # a hot pixel (in both images, so the error is unchanged) leaves PSNR exactly as it was
    i = np.unravel_index(np.argmax(t), t.shape)
    t2, p2 = t.copy(), p.copy()
    t2[i], p2[i] = 1000.0, 1000.0 + (p[i] - t[i])
    for normalize in ("none", "percentile"):
        a, b = channel_metrics(p, t, normalize=normalize), channel_metrics(p2, t2, normalize=normalize)
        assert b["raw_psnr"] == pytest.approx(a["raw_psnr"], rel=1e-12)
    # whereas a max - min range would have moved it by about 60 dB
    assert 10 * np.log10((t2.max() - t2.min()) ** 2 / (t.max() - t.min()) ** 2) > 50


def test_noise_lowers_scores_3d_and_multichannel():
    rng = np.random.default_rng(3)
    t = rng.random((2, 12, 32, 32))
    good = image_metrics(t + rng.normal(0, 0.05, t.shape), t)
    bad = image_metrics(t + rng.normal(0, 0.5, t.shape), t)
    assert len(good) == 2 and [g["channel"] for g in good] == [0, 1]
    for g, b in zip(good, bad):
        assert g["pearson_r"] > b["pearson_r"] and g["raw_ssim"] > b["raw_ssim"] and g["raw_l1"] < b["raw_l1"]
        assert g["calibrated_mse"] < b["calibrated_mse"] and g["raw_psnr"] > b["raw_psnr"]


def test_errors_and_summary():
    with pytest.raises(CytogenError, match="shape"):
        image_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(CytogenError, match="NaN"):
        channel_metrics(np.full((8, 8), np.nan), np.zeros((8, 8)))
    with pytest.raises(CytogenError, match="flat"):
        channel_metrics(np.random.default_rng(0).random((16, 16)), np.zeros((16, 16)))
    with pytest.raises(CytogenError, match="normalize"):
        channel_metrics(np.ones((16, 16)), np.ones((16, 16)), normalize="zscore")
    s = summarize([{"raw_l1": 1.0}, {"raw_l1": 3.0}, {"raw_l1": float("nan")}], ("raw_l1",))
    assert s["raw_l1"]["median"] == 2.0 and s["raw_l1"]["n"] == 2
