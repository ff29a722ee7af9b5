"""Random layouts of library shapes keep exact masks; density, overlap and clustering take effect."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

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
