"""Known answers for the latent-space statistics of the Statistical Cell (evaluate.latent)."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate import latent as L


def test_rank_by_mad_orders_by_spread():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 4)) * np.array([1.0, 5.0, 0.1, 2.0])
    order, mad = L.rank_by_mad(z)
    assert order.tolist() == [1, 3, 0, 2]
    # MAD of a normal is sd * sqrt(2 / pi)
    np.testing.assert_allclose(mad, np.array([1.0, 5.0, 0.1, 2.0]) * np.sqrt(2 / np.pi), rtol=0.1)


def test_informative_dims_threshold():
    assert L.informative_dims(np.array([0.1, 0.7, 2.0, 0.6, 0.59])).tolist() == [1, 2]
    assert L.informative_dims([0.5, 1.5], threshold=1.0).tolist() == [1]


def test_pca_recovers_planted_direction():
    rng = np.random.default_rng(1)
    u = np.array([3.0, 4.0, 0.0, 0.0]) / 5
    x = rng.normal(size=(400, 1)) * 10 * u + rng.normal(size=(400, 4)) * 0.2 + 7.0
    mean, comps, ratio = L.pca_fit(x, 2)
    assert abs(abs(comps[0] @ u) - 1) < 1e-3
    assert ratio[0] > 0.99 and ratio.sum() <= 1 + 1e-12
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-10)
    scores = L.pca_transform(x, mean, comps)
    assert scores.shape == (400, 2)
    np.testing.assert_allclose(scores.mean(axis=0), 0, atol=1e-9)
    with pytest.raises(CytogenError):
        L.pca_fit(x, 5)


def test_regression_r2_linear_and_noise():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(300, 6))
    y = z @ rng.normal(size=(6, 3)) + 2.5
    np.testing.assert_allclose(L.regression_r2(z, y), 1.0, atol=1e-9)
    r2 = L.regression_r2(z, rng.normal(size=(300, 2)), holdout=0.3)
    assert np.all(r2 < 0.1) and np.all(r2 > -0.5)
    # a seeded split: the same answer twice, a different one with another seed
    noisy = y[:, 0] + rng.normal(size=300)
    assert L.regression_r2(z, noisy, seed=3)[0] == L.regression_r2(z, noisy, seed=3)[0]
    assert L.regression_r2(z, noisy, seed=3)[0] != L.regression_r2(z, noisy, seed=4)[0]


def test_centroid_shift_and_direction_projection():
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[1.0, 3.0], [1.0, 5.0]])
    dist, per_dim = L.centroid_shift(a, b)
    assert dist == pytest.approx(4.0)
    np.testing.assert_allclose(per_dim, [0.0, 4.0])
    u = L.direction(a, b)
    np.testing.assert_allclose(u, [0.0, 1.0])
    np.testing.assert_allclose(L.project(b, a.mean(axis=0), u), [3.0, 5.0])
    np.testing.assert_allclose(L.project(np.array([[7.0, 2.0]]), [0, 0], [0, 10.0]), [2.0])
    with pytest.raises(CytogenError):
        L.direction(a, a)


def test_permutation_p_small_for_shift_uniform_for_identical():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(60, 5))
    b = rng.normal(size=(70, 5)) + np.array([1.0, 0, 0, 0, 0])
    p = L.permutation_test(a, b, n_permutations=999, seed=0)
    assert p == pytest.approx(1 / 1000)
    # identical distributions: p-values roughly uniform
    ps = np.array([L.permutation_test(rng.normal(size=(20, 3)), rng.normal(size=(25, 3)), 199, seed=s)
                   for s in range(60)])
    assert 0.3 < ps.mean() < 0.7
    assert 0.02 < np.mean(ps < 0.2) < 0.45
    assert ps.min() >= 1 / 200


def test_bonferroni():
    assert L.bonferroni(0.01, 10) == pytest.approx(0.1)
    np.testing.assert_allclose(L.bonferroni(np.array([0.2, 0.001]), 6), [1.0, 0.006])
    with pytest.raises(CytogenError):
        L.bonferroni(0.1, 0)


def test_z_prime_known_gaussians():
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(10, 1, 20000), rng.normal(0, 2, 20000)
    assert L.z_prime(pos, neg) == pytest.approx(1 - 3 * 3 / 10, abs=0.01)
    assert L.z_prime(neg, pos) == L.z_prime(pos, neg)
    lo, hi = L.z_prime_interval(pos[:200], neg[:200], n_boot=300)
    assert lo < 0.1 < hi and hi - lo < 0.3
    assert L.z_prime([1.0, 1.0], [0.0, 0.0]) == 1.0
    assert np.isnan(L.z_prime([1.0], [0.0, 1.0]))


def test_dose_response_monotone_and_violations():
    rng = np.random.default_rng(5)
    doses = np.repeat(np.arange(6.0), 30)
    up = L.dose_response(2 * doses + rng.normal(size=doses.size), doses)
    assert up["monotone"] and up["n_violations"] == 0
    assert up["spearman_rho"] > 0.9 and up["spearman_p"] < 1e-10
    assert up["doses"] == list(np.arange(6.0)) and up["n"] == [30] * 6
    down = L.dose_response(-doses + rng.normal(size=doses.size) * 0.1, doses)
    assert down["monotone"] and down["spearman_rho"] < -0.9
    means = np.array([0, 1, 2, 1, 4, 5.0])
    bumpy = L.dose_response(means[doses.astype(int)] + rng.normal(size=doses.size) * 0.01, doses)
    assert bumpy["n_violations"] == 1 and not bumpy["monotone"]
    assert bumpy["n_significant_violations"] == 1 and not bumpy["monotone_within_noise"]
    # a saturating response whose plateau wobbles by noise: strictly not monotone, within noise it is
    sat = np.minimum(doses, 3.0)
    plateau = L.dose_response(sat + rng.normal(size=doses.size), doses)
    assert plateau["n_significant_violations"] == 0 and plateau["monotone_within_noise"]
    assert plateau["spearman_rho"] > 0.5
    flat = L.dose_response(rng.normal(size=doses.size), doses)
    assert abs(flat["spearman_rho"]) < 0.3


def test_coupling_from_synthetic_elbos():
    own = np.array([-10.0, -20.0, -5.0])
    swapped = np.array([[-30.0, -50.0], [-20.0, -20.0], [-6.0, -4.0]])
    np.testing.assert_allclose(L.coupling(own, swapped), [30.0, 0.0, 0.0])
    # membrane-only, nucleus-only, neither
    assert L.differential_coupling([10.0, 12.0], [0.0, 0.0]) == pytest.approx(1.0)
    assert L.differential_coupling([0.0], [5.0]) == pytest.approx(-1.0)
    assert L.differential_coupling([3.0], [1.0]) == pytest.approx(0.5)
    assert np.isnan(L.differential_coupling([0.0], [0.0]))
    with pytest.raises(CytogenError):
        L.coupling(own, swapped[:2])


def test_bootstrap_interval_covers_mean():
    rng = np.random.default_rng(6)
    x = rng.normal(3.0, 1.0, 400)
    lo, hi = L.bootstrap_interval(x, np.mean, n_boot=500)
    assert lo < 3.0 < hi and hi - lo < 0.4
    assert L.bootstrap_interval(x, np.mean, n_boot=100, seed=1) == L.bootstrap_interval(x, np.mean, n_boot=100, seed=1)


def test_rate_distortion_summary():
    kl = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    rec = np.array([10.0, 20.0])
    s = L.rate_distortion(kl, rec)
    assert s["rate"] == pytest.approx(3.0) and s["distortion"] == pytest.approx(15.0)
    assert s["elbo"] == pytest.approx(-18.0) and s["n_active_dims"] == 2
    np.testing.assert_allclose(s["kl_per_dim"], [2.0, 0.0, 1.0])
