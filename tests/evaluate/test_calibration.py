"""Calibration of a prediction's spread (cytogen.evaluate.calibration, calibration_objects): known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.calibration import GAUSS_ABS, field_calibration, pool_calibration
from cytogen.evaluate.calibration_objects import placement_by_spread


def _fields(kind: str, n: int = 6, size: int = 96, seed: int = 0):
    """Truth with a 0..100 range, a spread map, and predictions whose error follows ``kind``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = np.linspace(0, 100, size * size).reshape(size, size)
        sigma = rng.uniform(0.5, 8.0, (size, size))
        if kind == "gaussian":  # calibrated: truth = pred + sigma z
            pred = truth - sigma * rng.standard_normal((size, size))
        elif kind == "independent":
            pred = truth - rng.uniform(0.5, 8.0, (size, size)) * rng.standard_normal((size, size))
        else:  # "exact": the spread is the absolute error
            pred = truth + sigma
        out.append(field_calibration(f"f{i}", pred, sigma, truth, max_pixels=4000, seed=i))
    return out


def test_calibrated_gaussian_spread_ranks_the_error_and_has_ratio_one():
    fields = _fields("gaussian")
    pooled = pool_calibration(fields, n_boot=200, seed=0)
    assert pooled["pooled_spearman"]["value"] > 0.3
    assert pooled["calibration_ratio"]["value"] == pytest.approx(1.0, abs=0.03)
    bins = pooled["bins"]
    errors = [b["mean_abs_error"] for b in bins]
    assert len(bins) == 10 and all(b > a for a, b in zip(errors, errors[1:]))
    assert pooled["decile_spearman"]["value"] == pytest.approx(1.0)
    for b in bins:  # each decile's error sits on the Gaussian reference line sqrt(2/pi) * spread
        assert b["mean_abs_error"] == pytest.approx(GAUSS_ABS * b["mean_spread"], rel=0.12)


def test_spread_independent_of_the_error_gives_rho_near_zero():
    pooled = pool_calibration(_fields("independent"), n_boot=200, seed=0)
    n = sum(f.sample_error.size for f in _fields("independent"))
    assert abs(pooled["pooled_spearman"]["value"]) < 4 / np.sqrt(n)  # ~4 standard errors of rho under H0
    lo, hi = pooled["pooled_spearman"]["ci95"]
    assert lo < 0.02 and hi > -0.02


def test_spread_equal_to_the_error_gives_rho_one_and_overconfidence_is_flagged():
    fields = _fields("exact")
    assert all(f.spearman == pytest.approx(1.0) for f in fields)
    ratio = pool_calibration(fields, n_boot=50)["calibration_ratio"]["value"]
    assert ratio == pytest.approx(1 / GAUSS_ABS, rel=1e-6)  # |e| = sigma: sigma*sqrt(2/pi) under-predicts


def test_bad_spread_is_refused():
    t = np.linspace(0, 1, 100).reshape(10, 10)
    with pytest.raises(CytogenError, match="negative"):
        field_calibration("f", t, -np.ones_like(t), t)
    with pytest.raises(CytogenError, match="flat"):
        field_calibration("f", t, np.ones_like(t), np.zeros_like(t))


def test_nuclei_with_large_spread_placed_worse_are_found_and_few_are_reported_as_too_few():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 1, 400)
    distance = rng.gamma(2.0, 0.5, 400) * (1 + 2 * (spread > 0.75))  # high spread: 3x the offset
    pairs = [{"field": "f", "distance": d, "spread_pred_nucleus": s} for d, s in zip(distance, spread)]
    r = placement_by_spread(pairs, "um", n_boot=200, seed=0)
    assert r["status"] == "ok" and r["top"]["median_distance"] > 2 * r["bottom"]["median_distance"]
    assert r["p_one_sided"] < 1e-10 and r["top"]["n"] + r["bottom"]["n"] == 200
    null = placement_by_spread([dict(p, spread_pred_nucleus=s) for p, s in zip(pairs, rng.permutation(spread))],
                               "um", n_boot=50, seed=0)
    assert null["p_one_sided"] > 1e-3
    assert "too few" in placement_by_spread(pairs[:5], "um")["status"]
