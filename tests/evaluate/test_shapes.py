"""Shape descriptors (SPHARM 3D, contour Fourier 2D), PCA and the kNN-purity test: known answers,
invariances, calibration of the p values, flags and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cytogen.errors import CytogenError
from cytogen.evaluate.purity import knn_purity_score, neighbour_weights, purity_test
from cytogen.evaluate.shapes import fourier_shape, object_descriptors, shape_pca
from cytogen.evaluate.spharm import sh_evaluate, sh_shape

pytest.importorskip("pyshtools")


def _ellipsoid(axes_um, spacing=(1.0, 1.0, 1.0), rot=None):
    """Voxelised ellipsoid of semi-axes ``axes_um`` (along x, y, z of its frame), rotated by ``rot``."""
    sp = np.asarray(spacing)
    half = np.ceil(max(axes_um) / sp).astype(int) + 3
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    p = np.stack([g.ravel() for g in grids], 1)  # (z, y, x) um
    if rot is not None:
        p = p @ rot  # frame coordinates of each voxel
    a, b, c = axes_um
    inside = (p[:, 2] / a) ** 2 + (p[:, 1] / b) ** 2 + (p[:, 0] / c) ** 2 <= 1
    return inside.reshape(grids[0].shape)


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# ------------------------------------------------------------------------------------------- 3D
def test_sphere_has_only_degree_zero():
    s = sh_shape(_ellipsoid((10, 10, 10)), lmax=31)
    amp = s.descriptor
    assert amp.shape == (32,)
    assert abs(amp[0] - 10.0) < 0.3  # mean radius of the 0.5 level set, um
    assert amp[1:].max() < 0.01 * amp[0]
    assert s.star_shaped and s.hausdorff_um < 1.0


def test_anisotropic_sphere_in_um_has_only_degree_zero():
    s = sh_shape(_ellipsoid((4, 4, 4), spacing=(0.5, 0.2, 0.2)), spacing=(0.5, 0.2, 0.2), lmax=15)
    assert abs(s.descriptor[0] - 4.0) < 0.2
    assert s.descriptor[1:].max() < 0.03 * s.descriptor[0]
    assert s.hausdorff_um < 0.75  # 1.5 z voxels (the coarse z steps make a staircase cap)
    assert s.star_shaped  # grazing rays over the z staircase are not concavities


@pytest.mark.parametrize("align", [False, True])
def test_ellipsoid_reconstructs_within_a_voxel(align):
    s = sh_shape(_ellipsoid((12, 8, 5)), lmax=31, align=align)
    assert s.hausdorff_um < 1.0
    if not align:
        assert s.descriptor[2] > 0.1 * s.descriptor[0]  # elongation lives in degree 2
        assert s.descriptor[1] < 1e-6 * s.descriptor[0]  # centrally symmetric: no odd degrees
        assert s.descriptor[3] < 1e-6 * s.descriptor[0]


def test_sh_descriptors_are_rotation_invariant_and_alignment_recovers_the_frame():
    ref_p = sh_shape(_ellipsoid((12, 8, 5)), lmax=15)
    rot_p = sh_shape(_ellipsoid((12, 8, 5), rot=_rotation(3)), lmax=15)
    scale = ref_p.descriptor[0]
    assert np.abs(ref_p.descriptor - rot_p.descriptor).max() < 0.02 * scale
    ref_c = sh_shape(_ellipsoid((12, 8, 5)), lmax=15, align=True)
    rot_c = sh_shape(_ellipsoid((12, 8, 5), rot=_rotation(3)), lmax=15, align=True)
    other = sh_shape(_ellipsoid((8, 8, 8)), lmax=15, align=True)
    gap = np.abs(ref_c.descriptor - rot_c.descriptor).max()
    assert gap < 0.05 * scale and gap < 0.2 * np.abs(ref_c.descriptor - other.descriptor).max()
    # the reconstruction evaluated along the longest principal axis is the long semi-axis
    assert abs(sh_evaluate(rot_c.coefficients, np.array([[0.0, 0.0, 1.0]]))[0] - 12.0) < 0.8


def test_cup_is_not_star_shaped():
    ball = _ellipsoid((10, 10, 10))
    cup = ball & ~np.roll(np.pad(_ellipsoid((8, 8, 8)), 2), 6, axis=0)  # a hollow bowl
    s = sh_shape(cup, lmax=15)
    assert not s.star_shaped
    assert sh_shape(ball, lmax=15).star_shaped


# ------------------------------------------------------------------------------------------- 2D
def _blob(cx, cy, ang, size=120):
    yy, xx = np.mgrid[0:size, 0:size]
    a = np.radians(ang)
    x = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    y = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    return ((x / 30) ** 2 + (y / 15) ** 2 <= 1) | ((x - 22) ** 2 + (y - 10) ** 2 <= 64)


@pytest.mark.parametrize("align", [False, True])
def test_fourier_descriptors_invariant_to_rotation_translation_and_start(align):
    ref = fourier_shape(_blob(60, 60, 0), degree=16, align=align).descriptor
    other = fourier_shape(_blob(60, 60, 0, size=120) | _blob(40, 40, 90), degree=16, align=align).descriptor
    for ang, cx, cy in [(37, 55, 62), (90, 60, 60), (180, 61, 58), (251, 57, 63)]:
        d = fourier_shape(_blob(cx, cy, ang), degree=16, align=align).descriptor
        assert np.abs(d - ref).max() < 0.015 * np.abs(ref).max()
        assert np.abs(d - ref).max() < 0.1 * np.abs(other - ref).max()


def test_fourier_circle_radius_and_reconstruction():
    yy, xx = np.mgrid[0:80, 0:80]
    f = fourier_shape((yy - 40) ** 2 + (xx - 40) ** 2 <= 20 ** 2, spacing=(0.5, 0.5), degree=8)
    assert abs(f.descriptor[0] - 10.0) < 0.3  # |Z_1| = radius in um
    assert f.descriptor[1:].max() < 0.02 * f.descriptor[0]
    assert f.hausdorff_um < 0.5 and f.star_shaped


def test_u_shape_is_flagged_not_star_shaped():
    u = np.zeros((60, 60), bool)
    u[10:50, 10:20] = u[40:50, 10:50] = u[10:50, 40:50] = True
    assert not fourier_shape(u).star_shaped
    assert fourier_shape(_ellipse_only()).star_shaped


def _ellipse_only():
    yy, xx = np.mgrid[0:120, 0:120]
    return ((xx - 60) / 30) ** 2 + ((yy - 60) / 15) ** 2 <= 1


# -------------------------------------------------------------------------------- label images
def test_object_descriptors_sizes_border_small_and_units():
    lab = np.zeros((60, 60), np.uint16)
    lab[10:20, 10:30] = 1
    lab[40:50, 40:48] = 2
    lab[0:6, 0:6] = 3  # at the border
    lab[30, 30:33] = 4  # 3 px: too small
    t = object_descriptors(lab, 0.5, exclude_border=True)
    assert t.label.tolist() == [1, 2] and t.skipped == {"border": 1, "small": 1}
    assert np.allclose(t.size, [200 * 0.25, 80 * 0.25])
    assert t.descriptors.shape == (2, 32) and t.kind == "fourier_amplitude"
    assert np.allclose(t.centroid_um[0], [14.5 * 0.5, 19.5 * 0.5])
    assert len(object_descriptors(lab).label) == 3
    n = object_descriptors(lab, 0.5, normalize_scale=True)
    assert np.allclose(n.descriptors[:, 0], object_descriptors(lab, 0.5).descriptors[:, 0])
    assert n.descriptors[:, 1:].max() < 1.0


def test_object_in_pieces_keeps_the_largest_and_holes_are_filled():
    lab = np.zeros((60, 60), np.int32)
    lab[10:30, 10:30] = 1
    lab[40:44, 40:44] = 1  # a second piece of object 1
    yy, xx = np.mgrid[0:60, 0:60]
    ring = ((yy - 45) ** 2 + (xx - 15) ** 2 <= 100) & ((yy - 45) ** 2 + (xx - 15) ** 2 > 16)
    lab[ring] = 2
    t = object_descriptors(lab, 1.0)
    assert t.n_components.tolist() == [2, 1]
    assert t.kept_fraction[0] == pytest.approx(400 / 416) and t.size[0] == 400
    alone = lab.copy()
    alone[40:44, 40:44] = 0
    assert np.allclose(object_descriptors(alone, 1.0).descriptors[0], t.descriptors[0])
    assert t.star_shaped[1] and t.size[1] == ((yy - 45) ** 2 + (xx - 15) ** 2 <= 100).sum()
    raw = object_descriptors(lab, 1.0, largest_component=False, fill_holes=False)
    assert not raw.star_shaped[1] and raw.size[0] == 416


def test_object_descriptors_3d_and_bad_labels():
    lab = np.zeros((24, 32, 32), np.int32)
    e = _ellipsoid((6, 4, 3))
    lab[2:2 + e.shape[0], 5:5 + e.shape[1], 5:5 + e.shape[2]][e] = 7
    t = object_descriptors(lab, (1.0, 0.5, 0.5), degree=8)
    assert t.label.tolist() == [7] and t.descriptors.shape == (1, 9) and t.kind == "sh_amplitude"
    assert object_descriptors(lab, 1.0, degree=4, align=True).descriptors.shape == (1, 25)
    with pytest.raises(CytogenError, match="non-integer"):
        object_descriptors(np.full((10, 10), 0.5))
    with pytest.raises(CytogenError, match="negative"):
        object_descriptors(-np.ones((10, 10), np.int32))
    with pytest.raises(CytogenError, match="2D"):
        object_descriptors(np.ones((2, 3, 4, 5), np.int32))


# ---------------------------------------------------------------------------------------- PCA
def test_pca_is_fitted_on_the_pooled_standardised_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 5)) * [1, 10, 100, 1, 0]
    b = rng.normal(size=(20, 5)) * [1, 10, 100, 1, 0] + [5, 0, 0, 0, 0]
    b[:, 3] = b[:, 0] * 2  # a correlated column: one PC carries it
    p = shape_pca(a, b)
    pooled = np.vstack([a, b])
    assert [s.shape for s in p.scores] == [(30, 3), (20, 3)]
    assert np.allclose(p.mean, pooled.mean(0)) and np.allclose(p.scale[:4], pooled.std(0)[:4])
    assert p.scale[4] == 1.0  # a constant column is only centred
    assert np.allclose(np.vstack(p.scores).mean(0), 0, atol=1e-9)
    assert np.allclose(p.transform(b), p.scores[1])
    assert np.allclose(p.components @ p.components.T, np.eye(3), atol=1e-9)
    assert 0 < p.explained_variance_ratio.sum() <= 1 + 1e-9
    # standardised: the 100x column gets no more weight than the others
    assert abs(p.components[0][2]) < 0.9
    with pytest.raises(CytogenError):
        shape_pca(a, b[:, :3])


# ------------------------------------------------------------------------------- kNN purity
def test_knn_purity_known_values():
    real = np.array([[0.0], [0.1], [0.2]])
    gen = np.array([[5.0]])
    # k = 1: every neighbour is real, p_i = 0, q = 1/4: KL = log(4/3) for all
    assert knn_purity_score(real, gen, 1) == pytest.approx(np.log(4 / 3))
    # k = 3: reals see 1 generated of 3, the generated sees none
    kl13 = (1 / 3) * np.log((1 / 3) / (1 / 4)) + (2 / 3) * np.log((2 / 3) / (3 / 4))
    assert knn_purity_score(real, gen, 3) == pytest.approx((3 * kl13 + np.log(4 / 3)) / 4)
    # two separated pairs, k = 1: p in {0, 1}, q = 1/2: log 2 each
    assert knn_purity_score([[0.0], [1.0]], [[10.0], [11.0]], 1) == pytest.approx(np.log(2))
    with pytest.raises(CytogenError):
        knn_purity_score(real, gen, 4)


def test_neighbour_weights_exclude_self_and_share_ties():
    w = neighbour_weights(np.zeros((5, 2)), 2).toarray()  # all tied: the 4 others share weight
    np.testing.assert_allclose(w, (1 - np.eye(5)) / 4)
    x = np.array([[0.0], [1.0], [2.0], [-2.0], [5.0]])
    w = neighbour_weights(x, 2).toarray()  # object 0: 1 at distance 1, then 2 and -2 tie at 2
    np.testing.assert_allclose(w[0], [0, 0.5, 0.25, 0.25, 0])
    np.testing.assert_allclose(w.sum(1), 1)


def test_exact_ties_do_not_separate_two_samples_of_one_discrete_distribution():
    # small objects repeat pixel shapes exactly: many identical descriptors. Tied neighbours chosen
    # by row order (real rows first) made such samples look different and the score a lottery.
    rng = np.random.default_rng(3)
    res = [purity_test(rng.integers(0, 3, (80, 2)), rng.integers(0, 3, (70, 2)), ks=(8,), n_permutations=199,
                       seed=s)[0] for s in range(6)]
    ps = [r["p_permutation"] for r in res]
    assert np.median(ps) > 0.2 and min(ps) > 0.01
    assert max(r["score"] for r in res) < 0.05


def test_purity_p_values_uniform_for_one_distribution_and_small_for_a_shift():
    rng = np.random.default_rng(1)
    p_perm, p_rvr = [], []
    for s in range(20):
        res = purity_test(rng.normal(size=(60, 3)), rng.normal(size=(50, 3)), ks=(8,), n_permutations=199, seed=s)
        p_perm.append(res[0]["p_permutation"])
        p_rvr.append(res[0]["p_real_vs_real"])
        assert res[0]["score"] < 0.15
    assert stats.kstest(p_perm, "uniform").pvalue > 0.01
    assert np.mean(np.array(p_perm) > 0.05) >= 0.8 and np.mean(np.array(p_rvr) > 0.05) >= 0.8
    shifted = purity_test(rng.normal(size=(80, 3)), rng.normal(size=(70, 3)) + [2.0, 0, 0], ks=(4, 8, 16),
                          n_permutations=199, seed=0)
    for r in shifted:
        assert r["p_permutation"] < 0.01 and r["p_real_vs_real"] < 0.01
        assert r["score"] > r["null_permutation"]["q95"]


def test_purity_real_split_by_image_and_too_large_k():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(6), 10)
    res = purity_test(rng.normal(size=(60, 2)), rng.normal(size=(30, 2)), ks=(4, 200), n_permutations=50,
                      real_image_ids=ids)
    assert res[0]["p_real_vs_real"] is not None and 0 < res[0]["p_real_vs_real"] <= 1
    assert res[1]["score"] is None and "needs more" in res[1]["note"]


# ---------------------------------------------------------------------------------- real data
def test_allen_nuclei_reconstruct_to_about_a_micrometre(shared_path):
    """Four real 3D nuclei (Allen segmentation; voxel 0.29 x 0.108 x 0.108 um assumed, not stored):
    the degree-16 reconstruction is within ~1 um, and the mean radius matches the volume's."""
    import tifffile
    from scipy import ndimage as ndi

    lab = tifffile.imread(shared_path("allen_3d_cell_nucleus_masks", "aicsimage_test_segmentation",
                                      "input_2_nucWholeIndex.tiff"))
    sl = ndi.find_objects(lab)
    sub = np.zeros_like(lab)
    for i in (4, 5, 10, 11):  # (nearly) single-piece nuclei
        sub[sl[i - 1]][lab[sl[i - 1]] == i] = i
    t = object_descriptors(sub, (0.29, 0.108, 0.108), degree=16)
    assert t.label.tolist() == [4, 5, 10, 11] and (t.kept_fraction > 0.999).all()
    assert np.median(t.hausdorff_um) < 1.0 and t.hausdorff_um.max() < 1.5
    r_eq = (3 * t.size / (4 * np.pi)) ** (1 / 3)
    assert np.all(np.abs(t.descriptors[:, 0] / r_eq - 1) < 0.2)
    assert (t.concave_fraction < 0.01).all()
