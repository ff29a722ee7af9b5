import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from cytogen.errors import CytogenError
from cytogen.evaluate.stats import (
    binom_log10_sf,
    chance_probability_image,
    chance_probability_region,
    clopper_pearson,
    fraction_within,
    mean_chance,
    wilson,
)

CASES = [(0, 1), (0, 10), (10, 10), (3, 10), (1, 2), (5785, 8151), (2328, 8151), (0, 8151), (8151, 8151)]


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("conf", [0.95, 0.99])
def test_intervals_equal_scipy(k, n, conf):
    exact = binomtest(k, n).proportion_ci(conf, method="exact")
    score = binomtest(k, n).proportion_ci(conf, method="wilson")
    assert clopper_pearson(k, n, conf) == (pytest.approx(exact.low, abs=1e-15), pytest.approx(exact.high, abs=1e-15))
    assert wilson(k, n, conf) == (pytest.approx(score.low, abs=1e-15), pytest.approx(score.high, abs=1e-15))


def test_intervals_known_values_and_errors():
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    # CP upper bound for k=0: 1 - (alpha/2)^(1/n)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** 0.1, rel=1e-10)
    # the paper: 5785/8151 -> 71.0 +/- 1.0 %
    lo, hi = wilson(5785, 8151)
    assert lo == pytest.approx(0.700, abs=0.002) and hi == pytest.approx(0.720, abs=0.002)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0) + wilson(0, 0))
    for bad in [(5, 3), (-1, 3), (1.5, 3)]:
        with pytest.raises(CytogenError):
            clopper_pearson(*bad)
    with pytest.raises(CytogenError, match="confidence"):
        wilson(1, 2, 95)


@pytest.mark.parametrize("k,n,p", [(1, 10, 0.1), (7, 10, 0.3), (50, 100, 0.2), (300, 1000, 0.1), (40, 8151, 0.002)])
def test_log10_sf_equals_scipy_where_representable(k, n, p):
    sf = binom.sf(k - 1, n, p)
    assert sf > 1e-300
    assert binom_log10_sf(k, n, p) == pytest.approx(math.log10(sf), rel=1e-12)


def _exact_log10_tail(k: int, n: int, num: int, den: int) -> float:
    """log10 P(X >= k), X ~ Binomial(n, num/den), in exact integer arithmetic.

    P = sum_j C(n, j) num^j (den-num)^(n-j) / den^n; the terms are built from j = n downwards by the
    exact recurrence term_{j-1} = term_j * j * (den-num) / ((n-j+1) * num).
    """
    term = num**n  # j = n
    total = term
    for j in range(n, k, -1):
        term = term * j * (den - num)
        assert term % ((n - j + 1) * num) == 0
        term //= (n - j + 1) * num
        total += term
    shift = max(total.bit_length() - 64, 0)
    return math.log10(total >> shift) + shift * math.log10(2) - n * math.log10(den)


def test_log10_sf_far_below_double_range_matches_exact_integer_sum():
    # the paper's setting: 5785 of 8151 nuclei within 4 um, chance 1/500 per nucleus
    value = binom_log10_sf(5785, 8151, 1 / 500)
    assert np.isfinite(value) and value < -308
    assert value == pytest.approx(_exact_log10_tail(5785, 8151, 1, 500), abs=1e-6)
    # the largest term bounds the sum: pmf(k) <= P(X >= k) <= (n - k + 1) * pmf(k)
    top = binom.logpmf(5785, 8151, 1 / 500) / math.log(10)
    assert top <= value <= top + math.log10(8151 - 5785 + 1)
    # the cell-restricted null (chance 1/2) and the 1 um radius also agree with exact sums
    assert binom_log10_sf(5785, 8151, 0.5) == pytest.approx(_exact_log10_tail(5785, 8151, 1, 2), abs=1e-6)
    assert binom_log10_sf(2328, 8151, 1 / 8000) == pytest.approx(_exact_log10_tail(2328, 8151, 1, 8000), abs=1e-6)


def test_log10_sf_edges():
    assert binom_log10_sf(0, 10, 0.3) == 0.0 and binom_log10_sf(-2, 10, 0.3) == 0.0
    assert binom_log10_sf(1, 10, 0.0) == -math.inf
    assert binom_log10_sf(10, 10, 1.0) == 0.0
    assert binom_log10_sf(10, 10, 0.5) == pytest.approx(-10 * math.log10(2))
    with pytest.raises(CytogenError):
        binom_log10_sf(3, 10, 1.5)


def _brute_count(c, shape, r):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return np.count_nonzero(sum(((g - x) / rr) ** 2 for g, x, rr in zip(grids, c, r)) <= 1)


def test_chance_image_centre_corner_and_brute_force():
    shape, r = (1000, 1000), 20.3
    p = chance_probability_image(np.array([[500.5, 500.5], [-0.5, -0.5], [0.0, 0.0], [3.2, 997.7]]), shape, r)
    area = math.pi * r**2 / 1e6
    assert p[0] == pytest.approx(area, rel=0.01)
    # a centroid at the image corner sees exactly one quadrant of the same lattice disc
    assert p[1] == pytest.approx(p[0] / 4, rel=1e-12)
    small = (60, 60)
    cs = np.array([[0.0, 0.0], [3.2, 57.7], [30.4, 29.9], [59.0, 10.0]])
    got = chance_probability_image(cs, small, (7.5, 11.2)) * 3600
    want = [_brute_count(c, small, (7.5, 11.2)) for c in cs]
    np.testing.assert_array_equal(np.rint(got), want)


def test_chance_image_3d_and_anisotropic():
    shape = (80, 120, 120)
    c = np.array([[40.0, 60.0, 60.0], [0.0, 0.0, 0.0]])
    r = (10.0 / 1.0, 10.0 / 0.5, 10.0 / 0.5)  # 10 um sphere, z step 1 um, xy pixel 0.5 um
    p = chance_probability_image(c, shape, r)
    assert p[0] == pytest.approx(4 / 3 * math.pi * np.prod(r) / np.prod(shape), rel=0.01)
    assert p[1] * np.prod(shape) == _brute_count(c[1], shape, r)
    p2d = chance_probability_image(np.array([[100.3, 99.6]]), (200, 200), (20.5, 50.5))
    assert p2d[0] == pytest.approx(math.pi * 20.5 * 50.5 / 4e4, rel=0.01)
    with pytest.raises(CytogenError):
        chance_probability_image(np.zeros((1, 3)), (10, 10), 2.0)
    with pytest.raises(CytogenError):
        chance_probability_image(np.zeros((1, 2)), (10, 10), (1.0, 2.0, 3.0))


def _disc(shape, centre, radius, spacing=(1.0, 1.0)):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) * spacing[0]) ** 2 + ((xx - centre[1]) * spacing[1]) ** 2 <= radius**2


def test_chance_region_disc_cell_matches_analytic_ratio():
    R, r_nuc = 80.0, 20.0
    cell = _disc((201, 201), (100, 100), R)
    c = np.array([[100.0, 100.0]])
    p = chance_probability_region(c, cell, radius=10.0, exclusion=r_nuc)
    assert p[0] == pytest.approx(10.0**2 / (R - r_nuc) ** 2, rel=0.03)
    # radius beyond the possible disc: every possible position is right
    assert chance_probability_region(c, cell, radius=70.0, exclusion=r_nuc)[0] == 1.0
    # no exclusion: right / whole cell
    assert chance_probability_region(c, cell, radius=10.0, exclusion=0.0)[0] == pytest.approx((10 / R) ** 2, rel=0.02)


def test_chance_region_anisotropic_spacing_and_labels():
    # the same physical disc cell (radius 80 um) sampled at 1 um rows x 2 um columns
    cell = _disc((201, 101), (100, 50), 80.0, spacing=(1.0, 2.0))
    p = chance_probability_region(np.array([[100.0, 50.0]]), cell, 10.0, 20.0, spacing=(1.0, 2.0))
    assert p[0] == pytest.approx(10.0**2 / 60.0**2, rel=0.04)
    # the same result from an integer label image
    q = chance_probability_region(np.array([[100.0, 50.0]]), cell.astype(np.int32) * 7, 10.0, 20.0, spacing=(1.0, 2.0))
    assert q[0] == p[0]


def test_chance_region_cells_do_not_mix_and_fallbacks():
    big, small = _disc((300, 300), (100, 100), 80.0), _disc((300, 300), (240, 240), 40.0)
    both = big | small
    cs = np.array([[100.0, 100.0], [240.0, 240.0]])
    p = chance_probability_region(cs, both, 10.0, 20.0)
    assert p[0] == chance_probability_region(cs[:1], big, 10.0, 20.0)[0]
    assert p[1] == chance_probability_region(cs[1:], small, 10.0, 20.0)[0]
    assert p[1] == pytest.approx(100 / 20.0**2, rel=0.06) and p[0] < p[1]
    # touching cells in a label image stay separate: the nucleus must fit inside its own half
    labels = np.zeros((100, 200), np.int32)
    labels[:, :100], labels[:, 100:] = 1, 2
    halves = chance_probability_region(np.array([[50.0, 50.0]]), labels, 5.0, 10.0)
    assert halves[0] == chance_probability_region(np.array([[50.0, 50.0]]), labels == 1, 5.0, 10.0)[0]
    merged = chance_probability_region(np.array([[50.0, 50.0]]), labels > 0, 5.0, 10.0)
    assert merged[0] < halves[0]
    # a centroid just outside a cell belongs to the nearest cell
    outside = np.array([[240.0, 282.0]])  # 2 px right of the small cell
    out = chance_probability_region(outside, both, 50.0, 20.0)
    assert 0 < out[0] == chance_probability_region(outside, small, 50.0, 20.0)[0]
    # a cell too thin for the nucleus falls back to the whole cell
    thin = np.zeros((50, 50), bool)
    thin[24:27, 5:45] = True
    pt = chance_probability_region(np.array([[25.0, 25.0]]), thin, 5.0, 4.0)
    assert pt[0] == pytest.approx((11 + 9 + 9) / (3 * 40))  # rows 24..26 within 5 px of (25, 25)
    with pytest.raises(CytogenError, match="foreground"):
        chance_probability_region(cs, np.zeros((10, 10), bool), 1.0, 1.0)
    with pytest.raises(CytogenError):
        chance_probability_region(cs, both.astype(float), 1.0, 1.0)


def test_mean_chance_and_fraction_within():
    assert mean_chance(np.array([0.1, 0.3])) == pytest.approx(0.2)
    with pytest.raises(CytogenError):
        mean_chance(np.array([]))
    with pytest.raises(CytogenError):
        mean_chance(np.array([0.5, 1.2]))
    d = np.array([0.2, 0.9, 1.0, 1.1, 3.9, 4.0])
    res = fraction_within(d, 1.0, n_trials=10)
    exact = binomtest(3, 10).proportion_ci(0.95, method="exact")
    score = binomtest(3, 10).proportion_ci(0.95, method="wilson")
    assert (res["k"], res["n"], res["fraction"], res["radius"]) == (3, 10, 0.3, 1.0)
    assert (res["cp_low"], res["cp_high"]) == pytest.approx((exact.low, exact.high))
    assert (res["wilson_low"], res["wilson_high"]) == pytest.approx((score.low, score.high))
    assert fraction_within(d, 4.0, n_trials=6)["fraction"] == 1.0
    assert math.isnan(fraction_within(np.array([]), 1.0, n_trials=0)["fraction"])
    with pytest.raises(CytogenError, match="n_trials"):
        fraction_within(d, 4.0, n_trials=3)
