"""Object positions in the normalised cell frame: known answers, invariance, KL and its tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cytogen.errors import CytogenError
from cytogen.evaluate.spatial import cell_frames, concat_positions, object_positions, unit_coordinates
from cytogen.evaluate.spatial_density import (
    default_bandwidth,
    frame_grid,
    positional_density,
    positional_test,
    real_vs_real,
    shape_position_regression,
)


def _ball(shape, centre, radii):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((x - c) / r) ** 2 for x, c, r in zip(g, centre, radii)) <= 1.0


def test_circle_known_radii():
    cell = _ball((201, 201), (100, 100), (60, 60)).astype(np.int32)
    nuc = _ball((201, 201), (100, 100), (20, 20)).astype(np.int32)
    obj = np.zeros_like(cell)
    obj[100, 100] = 1  # nucleus centre
    obj[100, 160] = 2  # last pixel of the cell along +x
    obj[40, 100] = 3  # last pixel along -y
    obj[100, 120] = 4  # last pixel of the nucleus
    obj[130, 100] = 5  # cytoplasm, 30 px out
    p = object_positions(obj, cell, nuc, 0.5)
    r = dict(zip(p.object, p.r))
    rho = dict(zip(p.object, p.rho))
    assert r[1] == 0 and rho[1] == 0
    # the membrane lies on the outer face of the last pixel: 60.5 px; the pixel centre at 60 px
    assert r[2] == pytest.approx(60 / 60.5, abs=0.01) and r[3] == pytest.approx(60 / 60.5, abs=0.01)
    assert rho[4] == pytest.approx(0.5 * 20 / 20.5, abs=0.01)  # just inside the nucleus boundary
    assert rho[5] == pytest.approx(0.5 + 0.5 * (30 - 20.5) / 40, abs=0.01)
    assert r[5] == pytest.approx(30 / 60.5, abs=0.01)
    assert p.in_nucleus.tolist() == [True, False, False, True, False]
    assert dict(zip(p.object, p.membrane_um))[2] == pytest.approx(30.25, abs=0.07)  # um at 0.5 um/px


def test_sphere_known_radii_anisotropic():
    sp = (0.5, 0.25, 0.25)  # z voxels twice as deep: the sphere is 40 um wide in every direction
    cell = _ball((61, 181, 181), (30, 90, 90), (28, 56, 56)).astype(np.int32)
    nuc = _ball((61, 181, 181), (30, 90, 90), (10, 20, 20)).astype(np.int32)
    obj = np.zeros_like(cell)
    obj[30, 90, 90] = 1
    obj[58, 90, 90] = 2  # top of the cell along z
    obj[30, 146, 90] = 3  # along y
    p = object_positions(obj, cell, nuc, sp)
    r = dict(zip(p.object, p.r))
    assert r[1] == 0
    assert r[2] == pytest.approx(28 / 28.5, abs=0.01) and r[3] == pytest.approx(56 / 56.5, abs=0.01)
    phi = dict(zip(p.object, p.phi))
    assert abs(phi[2]) == pytest.approx(np.pi / 2, abs=1e-6)  # align="xy" keeps z as the third axis
    assert phi[3] == pytest.approx(0, abs=1e-6)


def test_ellipse_aligned_by_major_axis():
    """A tilted ellipse: the end of its major axis is at r ~ 1 and on the frame's first axis."""
    t = np.radians(30)
    yy, xx = np.mgrid[:240, :240].astype(float) - 120
    u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
    cell = ((u / 90) ** 2 + (v / 40) ** 2 <= 1).astype(np.int32)
    nuc = ((u / 15) ** 2 + (v / 15) ** 2 <= 1).astype(np.int32)
    obj = np.zeros_like(cell)
    end = np.array([120 + 88 * np.sin(t), 120 + 88 * np.cos(t)]).round().astype(int)  # (y, x) near the tip
    obj[end[0], end[1]] = 1
    side = np.array([120 + 38 * np.cos(t), 120 - 38 * np.sin(t)]).round().astype(int)  # near the minor tip
    obj[side[0], side[1]] = 2
    p = object_positions(obj, cell, nuc)
    d = dict(zip(p.object, p.direction))
    assert abs(d[1][0]) == pytest.approx(1, abs=0.01)  # on the major axis
    assert abs(d[2][1]) == pytest.approx(1, abs=0.02)  # on the minor axis
    r = dict(zip(p.object, p.r))
    assert r[1] > 0.96 and r[2] > 0.93


def _asymmetric_cell(shape=(200, 200)):
    """An ellipse with a bud (skewed along both axes), a nucleus off the centre and a few objects."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    cell = ((xx - 100) / 70) ** 2 + ((yy - 100) / 35) ** 2 <= 1
    cell |= (xx - 140) ** 2 + (yy - 125) ** 2 <= 22**2
    nuc = (xx - 85) ** 2 + (yy - 97) ** 2 <= 14**2
    obj = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate([(100, 40), (130, 140), (80, 120), (96, 86), (115, 60)], start=1):
        obj[y - 1 : y + 2, x - 1 : x + 2] = i
    return obj, cell.astype(np.int32), nuc.astype(np.int32)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_invariance_exact(k):
    obj, cell, nuc = _asymmetric_cell()
    a = object_positions(obj, cell, nuc)
    b = object_positions(*(np.rot90(x, k) for x in (obj, cell, nuc)))
    np.testing.assert_allclose(unit_coordinates(a), unit_coordinates(b), atol=1e-2)
    np.testing.assert_allclose(a.r, b.r, atol=1e-2)


def test_rotation_invariance_any_angle_and_mirror():
    obj, cell, nuc = _asymmetric_cell()
    a = object_positions(obj, cell, nuc)
    rot = [ndi.rotate(x, 37, order=0, reshape=True) for x in (obj, cell, nuc)]
    b = object_positions(*rot)
    np.testing.assert_allclose(unit_coordinates(a), unit_coordinates(b), atol=0.04)
    m = object_positions(*(x[:, ::-1] for x in (obj, cell, nuc)))  # mirror: the skew rule undoes it
    np.testing.assert_allclose(unit_coordinates(a), unit_coordinates(m), atol=1e-2)
    # and the frame really depends on the positions: moving one object changes its coordinates
    obj2 = obj.copy()
    obj2[obj2 == 1] = 0
    obj2[99:102, 149:152] = 1
    c = object_positions(obj2, cell, nuc)
    assert np.abs(unit_coordinates(c)[0] - unit_coordinates(a)[0]).max() > 0.3


def test_dropped_and_border_counts():
    cells = np.zeros((100, 160), np.int32)
    nuclei = np.zeros_like(cells)
    cells[10:50, 10:50], nuclei[25:35, 25:35] = 1, 1
    cells[0:40, 100:140], nuclei[15:25, 115:125] = 2, 2  # touches the top border
    cells[60:95, 60:95] = 3  # no nucleus
    obj = np.zeros_like(cells)
    obj[40, 40], obj[30, 130], obj[80, 80], obj[90, 10] = 1, 2, 3, 4  # the last is outside every cell
    p = object_positions(obj, cells, nuclei)
    assert p.counts["dropped_outside_cells"] == 1 and p.counts["dropped_no_nucleus"] == 1
    assert len(p) == 2 and p.counts["n_cells_border"] == 1
    q = object_positions(obj, cells, nuclei, exclude_border=True)
    assert len(q) == 1 and q.counts["dropped_border_cells"] == 1 and q.cell.tolist() == [1]
    frames = cell_frames(cells, None, centre="cell")
    assert set(frames) == {1, 2, 3} and all(f is not None for f in frames.values())
    both = concat_positions([p, q], ["a", "b"])
    assert len(both) == 3 and both.file.tolist() == ["a", "a", "b"] and both.counts["dropped_outside_cells"] == 2


def test_bad_input():
    with pytest.raises(CytogenError, match="differ in shape"):
        object_positions(np.zeros((10, 10), int), np.zeros((10, 12), int), None, centre="cell")
    with pytest.raises(CytogenError, match="pixel size"):
        object_positions(np.zeros((10, 10), int), np.zeros((10, 10), int), np.zeros((10, 10), int), (1, 2, 3))
    with pytest.raises(CytogenError, match="no objects"):
        positional_test(np.zeros((0, 2)), np.zeros((5, 2)))
    with pytest.raises(CytogenError, match="2D"):
        positional_test(np.zeros((5, 2)), np.zeros((5, 3)))


def _disc(rng, n, lo=0.0, hi=1.0, d=2):
    v = rng.normal(size=(n, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = rng.uniform(lo**d, hi**d, n) ** (1 / d)  # uniform in the shell [lo, hi]
    return v * r[:, None]


def test_density_integrates_to_one_and_peaks_where_the_points_are():
    rng = np.random.default_rng(0)
    pts = _disc(rng, 400, 0.0, 0.3) + [0.4, 0.0]
    _, inside, vol = frame_grid(2)
    dens = positional_density(pts, 0.1)
    assert dens.sum() * vol == pytest.approx(1.0)
    assert dens[~inside].max() == 0
    c, _, _ = frame_grid(2)
    i, j = np.unravel_index(np.argmax(dens), dens.shape)
    assert c[i] == pytest.approx(0.4, abs=0.1) and abs(c[j]) < 0.1


@pytest.mark.parametrize("d", [2, 3])
def test_same_distribution_small_kl_large_p(d):
    rng = np.random.default_rng(1)
    ps, kls = [], []
    for s in range(12 if d == 2 else 8):  # p values of a valid test are uniform under the null
        t = positional_test(_disc(rng, 200, d=d), _disc(rng, 200, d=d), n_permutations=99 if d == 2 else 49, seed=s)
        ps.append(t["p_permutation"])
        kls.append(t["kl"])
    shifted = positional_test(_disc(rng, 200, 0.0, 0.5, d=d), _disc(rng, 200, 0.5, 1.0, d=d), n_permutations=99)
    assert 0.3 < np.mean(ps) < 0.75 and np.sum(np.asarray(ps) < 0.05) <= 2
    assert max(kls) < 0.25 * shifted["kl"]


@pytest.mark.parametrize("d", [2, 3])
def test_moved_towards_membrane_detected(d):
    rng = np.random.default_rng(2)
    real = _disc(rng, 150, 0.1, 0.6, d=d)
    moved = real / np.linalg.norm(real, axis=1, keepdims=True) * rng.uniform(0.6, 0.95, (150, 1))
    t = positional_test(real, moved, n_permutations=199, seed=0)
    assert t["p_permutation"] < 0.01 and t["kl"] > t["kl_null_95"]


def test_angles_wrap_in_the_disc():
    """Points on both sides of theta = +-pi are one cluster: no seam at the angle's cut."""
    rng = np.random.default_rng(3)
    th = rng.normal(np.pi, 0.15, 300)
    a = np.c_[0.7 * np.cos(th), 0.7 * np.sin(th)]
    th2 = rng.normal(np.pi, 0.15, 300)
    b = np.c_[0.7 * np.cos(th2), 0.7 * np.sin(th2)]
    assert positional_test(a, b, n_permutations=99)["p_permutation"] > 0.05


def test_group_permutation_and_real_vs_real():
    rng = np.random.default_rng(4)
    pts = _disc(rng, 300)
    groups = np.repeat(np.arange(30), 10)
    r = real_vs_real(pts, groups, n_splits=10, n_permutations=99, seed=0)
    assert r["p_median"] > 0.2 and r["n_groups"] == 30 and len(r["p"]) == 10
    g = positional_test(pts[:150], pts[150:], groups=(groups[:150], groups[150:]), n_permutations=99)
    assert g["permute_by"] == "group" and 0 < g["p_permutation"] <= 1
    # objects clustered by cell: a whole-cell shuffle is more conservative than an object shuffle
    centres = _disc(rng, 30, 0.2, 0.8)
    clustered = np.repeat(centres, 10, axis=0) + rng.normal(0, 0.03, (300, 2))
    obj = real_vs_real(clustered, groups, n_splits=5, n_permutations=99, seed=1)
    cell = real_vs_real(clustered, groups, n_splits=5, n_permutations=99, seed=1, permute_groups=True)
    assert cell["p_median"] > obj["p_median"]
    with pytest.raises(CytogenError, match="two cells"):
        real_vs_real(pts, np.zeros(len(pts)))


def test_bandwidth_is_scott_on_pooled_points():
    rng = np.random.default_rng(5)
    a, b = _disc(rng, 100), _disc(rng, 300)
    pooled = np.vstack([a, b])
    assert default_bandwidth(a, b) == pytest.approx(np.sqrt(pooled.var(0).mean()) * 400 ** (-1 / 6))


def test_shape_position_regression():
    rng = np.random.default_rng(6)
    pos = _disc(rng, 400)
    radius = np.linalg.norm(pos, axis=1)
    x = np.column_stack([pos, radius])
    strong = shape_position_regression(3 * radius + rng.normal(0, 0.1, 400), x)
    none = shape_position_regression(rng.normal(size=400), x)
    assert strong["r2"] > 0.9 and strong["p_value"] < 1e-10 and strong["n_objects"] == 400
    assert none["r2"] < 0.03 and none["p_value"] > 0.001
    assert strong["coefficients"][3] == pytest.approx(3, abs=0.1)
    with pytest.raises(CytogenError, match="objects"):
        shape_position_regression(np.zeros(3), np.zeros((3, 3)))


def test_allen_crop_nuclei_and_structure(shared_path):
    """Real 3D segmentations: each nucleus lands in its own cell, near the centre; structure objects
    are counted into kept / outside cells / cells without nucleus."""
    import tifffile
    from skimage.measure import label

    d = "allen_3d_cell_nucleus_masks", "fov_processing_pipeline_test_resources"
    cells = tifffile.imread(shared_path(*d, "MembraneSegmentationReadPath.tiff"))
    nuclei = tifffile.imread(shared_path(*d, "NucleusSegmentationReadPath.tiff"))
    sp = (0.29, 0.108, 0.108)  # assumed Allen voxel size (not stored in the files)
    p = object_positions(nuclei, cells, None, sp, centre="cell")
    assert len(p) == len(np.unique(nuclei[nuclei > 0])) and np.array_equal(p.object, p.cell)
    assert np.all(p.r < 0.8) and np.median(p.r) < 0.5
    s = label(tifffile.imread(shared_path(*d, "StructureSegmentationReadPath.tiff")) > 0, connectivity=3)
    q = object_positions(s, cells, nuclei, sp)
    c = q.counts
    assert c["n_objects"] + c["dropped_outside_cells"] + c["dropped_no_nucleus"] == c["n_objects_in_image"] == s.max()
    assert c["n_cells_no_nucleus"] == 1 and 0 <= q.rho.min() and q.rho.max() <= 1
    # the shell frame puts objects in the nucleus inside radius 0.5 (bar re-entrant nucleus shapes)
    assert q.in_nucleus.any() and np.mean(q.rho[q.in_nucleus] <= 0.5) > 0.9
    assert np.mean(q.rho[~q.in_nucleus] > 0.5) > 0.9
