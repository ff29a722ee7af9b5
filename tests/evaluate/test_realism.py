"""Realism features and their comparison: known answers on planted objects."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.realism import FEATURES, compare_features, frechet_distance, object_features, real_halves_frechet


def _field(seed: int, bright: float = 1.0, noise: float = 0.05, n: int = 12):
    rng = np.random.default_rng(seed)
    lab = np.zeros((128, 128), np.int32)
    yy, xx = np.mgrid[:128, :128]
    for k in range(n):
        cy, cx = 12 + (k // 4) * 36 + rng.integers(-3, 4), 12 + (k % 4) * 30 + rng.integers(-3, 4)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(5, 9) ** 2] = k + 1
    img = 0.1 + bright * (lab > 0) + rng.normal(0, noise, lab.shape)
    return img, lab


def test_features_of_planted_discs():
    img, lab = _field(0)
    f = object_features(img, lab)
    assert set(f) == set(FEATURES) and all(len(v) == 12 for v in f.values())
    assert np.all(f["contrast"] > 0.7) and np.all(f["eccentricity"] < 0.3) and np.all(f["solidity"] > 0.9)
    assert np.allclose(f["area_px"], np.bincount(lab.ravel())[1:])


def test_same_process_is_close_and_a_different_one_is_far():
    fields = [_field(s) for s in range(6)]
    real = [object_features(i, l) for i, l in fields]
    same = object_features(*_field(10))
    noisy = object_features(*_field(11, noise=0.4))
    pooled = {k: np.concatenate([r[k] for r in real]) for k in FEATURES}
    near, far = compare_features(pooled, same), compare_features(pooled, noisy)
    assert far["frechet"] > 5 * max(near["frechet"], 1e-3)
    assert far["features"]["intensity_sd"]["ks"] > 0.9 and far["features"]["intensity_sd"]["p"] < 1e-3
    assert near["features"]["intensity_sd"]["p"] > 0.01 and far["features"]["area_px"]["p"] > 0.01  # same shapes
    ref = real_halves_frechet(real, n_splits=5)
    assert ref["min"] <= ref["median"] <= ref["max"] < far["frechet"]


def test_frechet_known_answer_and_errors():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 2))
    b = a + np.array([3.0, 4.0])  # same covariance, shifted mean: distance = |shift|^2 = 25
    assert frechet_distance(a, b) == pytest.approx(25.0, rel=1e-6)
    with pytest.raises(CytogenError, match="two objects"):
        frechet_distance(a[:1], b)
    with pytest.raises(CytogenError, match="one shape"):
        object_features(np.zeros((4, 4)), np.zeros((5, 5), int))
