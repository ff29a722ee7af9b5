import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from cytogen.errors import CytogenError
from cytogen.evaluate.chance import (
    chance_probability_image,
    chance_probability_region,
    chance_union_image,
    chance_union_region,
    mean_chance,
)
from cytogen.evaluate.stats import binom_log10_sf, clopper_pearson, fraction_within, wilson

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


def _brute_union(cs, shape, r, spacing):
    """Pixels whose centre lies within r (physical) of any centroid, by brute force over all pixels."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    d = np.sqrt((((grid[:, None, :] - cs[None]) * np.asarray(spacing)) ** 2).sum(-1)).min(1)
    return (d <= r).reshape(shape)


@pytest.mark.parametrize("seed", [0, 1])
def test_union_image_equals_brute_force_union_of_discs(seed):
    rng = np.random.default_rng(seed)
    shape = (60, 80)
    cs = np.concatenate([rng.uniform(-3, [63, 83], size=(12, 2)), [[10.0, 10.0], [13.0, 12.0]]])  # overlaps
    want = _brute_union(cs, shape, 7.3, (1.0, 1.0)).mean()
    assert chance_union_image(cs, shape, 7.3) == want
    # overlapping discs: the union is smaller than the paper's sum of one disc per nucleus
    assert want < chance_probability_image(cs, shape, 7.3).sum()
    # disjoint interior discs: union = sum of the per-nucleus chances
    far = np.array([[15.2, 15.7], [40.1, 60.3]])
    assert chance_union_image(far, shape, 7.3) == pytest.approx(chance_probability_image(far, shape, 7.3).sum())
    # 3D with anisotropic voxels (z 2 um, y/x 0.5 um), radius in um
    shape3, sp = (12, 30, 30), (2.0, 0.5, 0.5)
    c3 = rng.uniform(0, [12, 30, 30], size=(6, 3))
    assert chance_union_image(c3, shape3, 4.0, spacing=sp) == _brute_union(c3, shape3, 4.0, sp).mean()
    assert chance_union_image(np.zeros((0, 2)), shape, 5.0) == 0.0


def _brute_allowed(labels, lbl, exclusion, spacing):
    """Pixels of cell lbl farther than exclusion from every pixel of another label (image border no edge)."""
    from scipy.spatial import cKDTree

    idx = np.argwhere(labels == lbl) * np.asarray(spacing)
    other = np.argwhere(labels != lbl) * np.asarray(spacing)
    out = np.zeros(labels.shape, bool)
    d = cKDTree(other).query(idx)[0] if len(other) else np.full(len(idx), np.inf)
    out[tuple(np.argwhere(labels == lbl)[d > exclusion].T)] = True
    return out


def test_union_region_equals_brute_force_and_each_point_gets_its_own_cell():
    labels = np.zeros((70, 110), np.int32)
    labels[5:65, 5:60] = 1
    labels[10:60, 60:105] = 2  # touches cell 1
    sp = (1.0, 0.8)
    true = np.array([[30.2, 20.1], [36.0, 27.5], [40.3, 80.6]])  # two real nuclei in cell 1, one in cell 2
    at = np.array([[12.0, 50.0], [55.0, 100.0], [2.0, 2.0]])  # cell 1, cell 2, background near cell 1
    r, excl = 6.0, 7.0
    got = chance_union_region(true, labels, r, excl, spacing=sp, at_px=at)
    want = []
    for lbl, mine in ((1, true[:2]), (2, true[2:]), (1, true[:2])):
        allowed = _brute_allowed(labels, lbl, excl, sp)
        want.append(np.count_nonzero(allowed & _brute_union(mine, labels.shape, r, sp)) / allowed.sum())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] > chance_probability_region(true[:1], labels, r, excl, spacing=sp)[0]  # union of two discs
    # per-nucleus null at the same points: the mean over the real nuclei of the point's cell
    per = chance_probability_region(true, labels, r, excl, spacing=sp)
    np.testing.assert_allclose(chance_probability_region(true, labels, r, excl, spacing=sp, at_px=at),
                               [per[:2].mean(), per[2], per[:2].mean()])
    # a cell without a real nucleus has chance 0
    assert chance_union_region(true[:2], labels, r, excl, spacing=sp, at_px=at[1:2])[0] == 0.0


def test_region_filling_its_whole_box_has_no_phantom_edge():
    """One cell covering the whole field: no edge anywhere, so every pixel is a possible position.

    scipy's distance transform of an all-True crop measures from a phantom zero before the first
    corner; the allowed positions must not depend on that.
    """
    labels = np.ones((40, 50), np.int32)
    c = np.array([[20.3, 24.6]])
    want = _brute_union(c, labels.shape, 6.0, (1.0, 1.0)).sum() / labels.size
    assert chance_probability_region(c, labels, 6.0, 8.0)[0] == pytest.approx(want, rel=1e-12)
    assert chance_union_region(c, labels > 0, 6.0, 8.0)[0] == pytest.approx(want, rel=1e-12)
    # a rectangle filling the corner of the field: brute force agrees as well
    corner = np.zeros((40, 50), np.int32)
    corner[:25, :30] = 3
    allowed = _brute_allowed(corner, 3, 4.0, (1.0, 1.0))
    c2 = np.array([[12.0, 14.0]])
    want2 = np.count_nonzero(allowed & _brute_union(c2, corner.shape, 6.0, (1.0, 1.0))) / allowed.sum()
    assert chance_probability_region(c2, corner, 6.0, 4.0)[0] == pytest.approx(want2, rel=1e-12)
