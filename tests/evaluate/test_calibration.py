"""Known answers of the spread calibration (cytogen.evaluate.calibration)."""

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.calibration import field_calibration, pool_calibration


def _fields(make, n=4, shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = rng.uniform(0, 1000, shape)
        pred, spread = make(truth, rng)
        out.append(field_calibration(f"f{i}", pred, spread, truth, seed=i))
    return out


def _gauss(truth, rng):
    yy = np.linspace(0, 1, truth.shape[0])[:, None] * np.ones(truth.shape)
    sigma = (20 + 280 * yy)  # known spread map, target units
    return truth + rng.normal(0, 1, truth.shape) * sigma, sigma


def test_calibrated_gaussian_spread_has_ratio_one_and_rising_deciles():
    r = pool_calibration(_fields(_gauss), n_boot=200)
    assert r["calibration_ratio"]["value"] == pytest.approx(1.0, abs=0.03)
    lo, hi = r["calibration_ratio"]["ci95"]
    assert lo < 1.0 < hi or abs(lo - 1) < 0.03
    assert r["pooled_spearman"]["value"] > 0.3 and r["pooled_spearman"]["ci95"][0] > 0.3
    means = [b["mean_abs_error"] for b in r["bins"]]
    assert np.all(np.diff(means) > 0) and r["decile_spearman"]["value"] == pytest.approx(1.0)
    for b in r["bins"]:  # each decile on the Gaussian line within 15 %
        assert b["mean_abs_error"] == pytest.approx(b["gaussian_reference"], rel=0.15)


def test_independent_spread_gives_rho_near_zero_and_exact_error_gives_one():
    fields = _fields(lambda t, rng: (t + rng.normal(0, 50, t.shape), rng.uniform(1, 100, t.shape)))
    r = pool_calibration(fields, n_boot=100)
    n = r["pooled_spearman"]["n_pixels"]
    assert abs(r["pooled_spearman"]["value"]) < 4 / np.sqrt(n)
    exact = _fields(lambda t, rng: ((p := t + rng.normal(0, 50, t.shape)), np.abs(p - t)))
    r1 = pool_calibration(exact, n_boot=50)
    assert r1["pooled_spearman"]["value"] == pytest.approx(1.0)
    assert all(f.spearman == pytest.approx(1.0) for f in exact)


def test_scale_invariance_and_errors():
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 10, (40, 40))
    p, s = t + rng.normal(0, 1, t.shape), rng.uniform(0.5, 2, t.shape)
    a, b = field_calibration("a", p, s, t), field_calibration("a", 7 * p + 3, 7 * s, 7 * t + 3)
    assert a.spearman == pytest.approx(b.spearman) and a.mean_spread == pytest.approx(b.mean_spread)
    with pytest.raises(CytogenError, match="negative"):
        field_calibration("a", p, -s, t)
    with pytest.raises(CytogenError, match="shape"):
        field_calibration("a", p, s[:-1], t)
