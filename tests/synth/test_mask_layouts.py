"""Random layouts of library shapes keep exact masks; density, overlap and clustering take effect."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.synth.mask_layouts import ShapeLibrary, placed_footprint, random_layout


def _library(px: float = 0.5) -> ShapeLibrary:
    lab = np.zeros((80, 80), np.int32)
    yy, xx = np.mgrid[:80, :80]
    lab[((yy - 20) / 8) ** 2 + ((xx - 20) / 5) ** 2 <= 1] = 1  # an ellipse
    lab[50:60, 45:70] = 2  # a bar
    lab[0:10, 60:70] = 3  # cut by the image edge: left out
    return ShapeLibrary.from_labels([lab], px)


def test_library_keeps_whole_objects_and_resamples():
    lib = _library()
    assert len(lib) == 2 and sorted(lib.areas()) == sorted([int(s.sum()) for s in lib.shapes])
    half = lib.at_pixel_size(1.0)  # coarser pixels: a quarter of the area
    assert half.pixel_size_um == 1.0
    assert np.allclose(half.areas(), lib.areas() / 4, rtol=0.25)
    with pytest.raises(CytogenError, match="no whole objects"):
        ShapeLibrary.from_labels([np.ones((5, 5), np.int32)])


@pytest.mark.parametrize("max_overlap", [0.0, 0.3])
def test_every_label_is_its_placed_shape_minus_earlier_ones(max_overlap):
    lib = _library()
    labels, placed = random_layout(lib, (128, 160), area_fraction=0.45, max_overlap=max_overlap,
                                   rng=np.random.default_rng(4))
    assert len(placed) > 10
    covered = np.zeros(labels.shape, bool)
    for p in placed:
        full = placed_footprint(lib, p, labels.shape)
        assert np.array_equal(labels == p.label, full & ~covered)  # exact mask: footprint minus occlusion
        hidden = (full & covered).sum() / lib.shapes[p.shape].sum()
        assert hidden <= max_overlap + 1e-9
        covered |= full
    if max_overlap == 0:  # touching is allowed, overlap is not: each label is its whole (canvas-cut) shape
        assert all((labels == p.label).sum() == placed_footprint(lib, p, labels.shape).sum() for p in placed)


def test_density_and_clustering_take_effect():
    lib = _library()
    labels, placed = random_layout(lib, 400, density=20.0, rng=np.random.default_rng(0))  # 200 x 200 um
    assert len(placed) == 80  # 20 per 100 x 100 um over 4 such squares
    spread = []
    for clustered in (0.0, 1.0):
        _, placed = random_layout(lib, 400, density=10.0, clustered=clustered, cluster_radius_um=8,
                                  rng=np.random.default_rng(1))
        c = np.array([[p.corner[0], p.corner[1]] for p in placed], float)
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        spread.append(np.sort(d, axis=1)[:, 1].mean())  # mean nearest-neighbour distance
    assert spread[1] < 0.8 * spread[0]  # clustered layouts are tighter than uniform ones
    with pytest.raises(CytogenError, match="pixel size"):
        random_layout(ShapeLibrary(lib.shapes, None), 64, density=5.0)
    with pytest.raises(CytogenError, match="not both"):
        random_layout(lib, 64, density=5.0, area_fraction=0.2)


def _ellipse(shape, centre, radii, angle_deg=0.0):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    t = np.deg2rad(angle_deg)
    dy, dx = yy - centre[0], xx - centre[1]
    u, v = dy * np.cos(t) - dx * np.sin(t), dy * np.sin(t) + dx * np.cos(t)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1


def test_rotation_keeps_the_shape_and_a_smooth_outline():
    from cytogen.synth.mask_layouts import _transformed

    shape = np.pad(_ellipse((25, 15), (12, 7), (11, 6)), 1)
    for angle in (30.0, 73.0, 145.0):
        rot = _transformed(shape, angle, False)
        # against the ellipse drawn analytically at that angle, centred in the rotated crop
        c = ((rot.shape[0] - 1) / 2, (rot.shape[1] - 1) / 2)
        best = max((_ellipse(rot.shape, c, (11, 6), s * angle) & rot).sum() / (_ellipse(rot.shape, c, (11, 6), s * angle)
                                                                             | rot).sum() for s in (1, -1))
        assert best > 0.9
        assert abs(int(rot.sum()) - int(shape.sum())) <= 0.05 * shape.sum()
    assert np.array_equal(_transformed(shape, 0.0, True), shape[:, ::-1])


def test_rescaled_and_shape_indices_take_effect():
    lib = ShapeLibrary.from_labels([_ellipse((40, 40), (20, 20), (8, 5)).astype(np.int32),
                                    (np.pad(np.ones((6, 6), np.int32), 10) * 1)], 0.5)
    assert lib.sources == [0, 1] and lib.ndim == 2
    big = lib.rescaled(2.0)
    assert np.allclose(big.areas(), 4 * lib.areas(), rtol=0.15) and big.pixel_size_um == 0.5 and big.sources == [0, 1]
    labels, placed = random_layout(lib, 128, area_fraction=0.2, shape_indices=np.array([1]),
                                   rng=np.random.default_rng(0))
    assert placed and all(p.shape == 1 for p in placed)
    with pytest.raises(CytogenError, match="shape_indices"):
        random_layout(lib, 64, area_fraction=0.2, shape_indices=np.array([5]))


def test_3d_layouts_keep_exact_masks_and_rotate_about_z():
    zz, yy, xx = np.mgrid[:12, :40, :40].astype(float)
    lab = np.zeros((12, 40, 40), np.int32)
    lab[((zz - 5.5) / 3) ** 2 + ((yy - 12) / 7) ** 2 + ((xx - 12) / 4) ** 2 <= 1] = 1
    lab[((zz - 6) / 2.5) ** 2 + ((yy - 28) / 5) ** 2 + ((xx - 28) / 5) ** 2 <= 1] = 2
    lab[0:3, 30:35, 2:6] = 3  # touches z = 0: not whole, left out
    lib = ShapeLibrary.from_labels([lab], 0.5, z_step_um=1.0)
    assert len(lib) == 2 and lib.ndim == 3
    labels, placed = random_layout(lib, (16, 64, 64), area_fraction=0.15, max_overlap=0.2,
                                   rng=np.random.default_rng(2))
    assert labels.shape == (16, 64, 64) and len(placed) > 5
    covered = np.zeros(labels.shape, bool)
    for p in placed:
        full = placed_footprint(lib, p, labels.shape)
        assert np.array_equal(labels == p.label, full & ~covered)
        covered |= full
        zs = np.flatnonzero(full.any(axis=(1, 2)))  # rotation is about the optical axis: z extent kept
        if zs.size and 0 < zs[0] and zs[-1] < 15:
            assert zs.size == lib.shapes[p.shape].any(axis=(1, 2)).sum()
    with pytest.raises(CytogenError, match=r"\(Z, Y, X\)"):
        random_layout(lib, 64, area_fraction=0.1)
    _, dense = random_layout(lib, (16, 200, 200), density=25.0, rng=np.random.default_rng(0))
    assert len(dense) == 25  # per 100 x 100 um of canvas area (200 px at 0.5 um), whole depth
