"""Patch statistics, field-bootstrap Frechet distances and the real-vs-real baseline."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cytogen.evaluate.distribution import (BANDS, PATCH_FEATURES, bootstrap_frechet, patch_statistics,
                                           real_halves, standardised_frechet)
from cytogen.evaluate.objects import segment_nuclei
from cytogen.evaluate.realism import FEATURES, object_features

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "sbs_translocation"


def _fields(n, seed=0, rows=30, shift=0.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(shift + rng.normal(0, 0.3), 1.0, (rows, 4)) for _ in range(n)]


def test_self_distance_is_zero_and_its_interval_contains_zero():
    f = _fields(8)
    r = bootstrap_frechet(f, [m.copy() for m in f], n_boot=50, seed=1)
    assert r["distance"] == pytest.approx(0, abs=1e-9)
    assert r["ci_low"] <= 1e-9 and r["ci_high"] == pytest.approx(0, abs=1e-9)
    assert "paired" in r["bootstrap"] and r["n_boot"] == 50


def test_shift_is_detected_and_interval_contains_the_estimate():
    real, fake = _fields(10, 0), _fields(10, 1, shift=1.0)
    r = bootstrap_frechet(real, fake, n_boot=200, seed=0)
    # mean shift of 1 SD in 4 standardised features: about 4 (plus a small covariance term)
    assert 2 < r["distance"] < 7
    assert r["ci_low"] <= r["distance"] <= r["ci_high"]


def test_bootstrap_resamples_fields_not_rows():
    """Replicating each field's rows 10 times adds no information: resampling fields keeps the
    interval width, resampling rows would shrink it by about sqrt(10)."""
    real, fake = _fields(10, 0, rows=5), _fields(10, 1, rows=5, shift=0.5)
    w1 = bootstrap_frechet(real, fake, n_boot=200, seed=0)
    w10 = bootstrap_frechet([np.repeat(m, 10, 0) for m in real], [np.repeat(m, 10, 0) for m in fake],
                            n_boot=200, seed=0)
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(w10) == pytest.approx(width(w1), rel=0.25)


def test_real_halves_refuses_quietly_below_four_fields():
    r = real_halves(_fields(3))
    assert r["median"] is None and "at least 4" in r["note"]
    r = real_halves(_fields(8), n_splits=10)
    assert r["median"] > 0 and r["n_splits"] == 10 and r["ci_low"] <= r["median"] <= r["ci_high"]


def test_patch_statistics_known_answers():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(64, 96))
    s = patch_statistics(noise, patch=32)
    assert s.shape == (6, len(PATCH_FEATURES))  # non-overlapping grid: 2 x 3 patches
    assert patch_statistics(noise, patch=32, n=7, seed=3).shape == (7, len(PATCH_FEATURES))
    col = dict(zip(PATCH_FEATURES, s.T))
    # white noise: its power is spread evenly, so the fraction above a cut-off is the fraction of
    # non-DC frequencies above it (the Hann window keeps a white spectrum white)
    f = np.fft.fftfreq(32)
    r = np.hypot(f[:, None], f[None, :]).ravel()
    r = r[r > 0]
    assert col["power_above_4"].mean() == pytest.approx((r > BANDS[1]).mean(), abs=0.05)
    assert col["power_above_16"].mean() == pytest.approx((r > BANDS[0]).mean(), abs=0.05)
    assert abs(col["skewness"].mean()) < 0.2 and abs(col["kurtosis"].mean()) < 0.3
    smooth = dict(zip(PATCH_FEATURES, patch_statistics(ndi.gaussian_filter(noise, 2), patch=32).T))
    assert smooth["power_above_4"].max() < col["power_above_4"].min()
    assert smooth["log1"].mean() < col["log1"].mean()
    # the gain of an image does not matter (each image is scaled to its own percentiles)
    np.testing.assert_allclose(patch_statistics(3 * noise + 7, patch=32), s, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def hoechst():
    files = sorted(glob.glob(str(DATA / "Channel2-*.tif")))
    if len(files) < 24:
        pytest.skip(f"needs the Hoechst fields of {DATA} (../shared/data/sbs_translocation)")
    import tifffile

    return [tifffile.imread(p)[:160, :160].astype(np.float32) for p in files[::2][:24]]


def _degrade(images, kind, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for a in images:
        span = float(a.max() - a.min())
        out.append({"blur1": lambda: ndi.gaussian_filter(a, 1), "blur3": lambda: ndi.gaussian_filter(a, 3),
                    "noise_mild": lambda: a + rng.normal(0, 0.03 * span, a.shape),
                    "noise_strong": lambda: a + rng.normal(0, 0.15 * span, a.shape)}[kind]())
    return out


def _objects(images):
    out = []
    for a in images:
        f = object_features(a, segment_nuclei(a))
        out.append(np.stack([f[k] for k in FEATURES], axis=1))
    return out


def _patches(images):
    return [patch_statistics(a) for a in images]


def test_distances_rank_degradations_as_a_person_would(hoechst):
    real = hoechst[:12]
    for measure in (_objects, _patches):
        ref = measure(real)
        d = {k: bootstrap_frechet(ref, measure(_degrade(real, k)), n_boot=100, seed=0)
             for k in ("blur1", "blur3", "noise_mild", "noise_strong")}
        base = real_halves(ref, n_splits=30, seed=0)
        assert d["blur1"]["distance"] < d["blur3"]["distance"], measure.__name__
        assert d["noise_mild"]["distance"] < d["noise_strong"]["distance"], measure.__name__
        assert base["median"] < min(d["blur3"]["distance"], d["noise_strong"]["distance"]), measure.__name__
        for r in d.values():
            assert r["ci_low"] <= r["distance"] <= r["ci_high"], measure.__name__


def test_interval_narrows_with_more_fields(hoechst):
    ref = _patches(hoechst)
    fake = _patches(_degrade(hoechst, "noise_mild"))
    few = bootstrap_frechet(ref[:6], fake[:6], n_boot=200, seed=0)
    many = bootstrap_frechet(ref, fake, n_boot=200, seed=0)
    assert many["ci_high"] - many["ci_low"] < few["ci_high"] - few["ci_low"]
    assert standardised_frechet(np.concatenate(ref), np.concatenate(fake)) == pytest.approx(many["distance"])
