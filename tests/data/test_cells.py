"""Single-cell crops: alignment, centring, skew flip, preprocessing and border handling (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.data.cells import (crop_cell, field_background, field_cells, major_axis_angle, measure_cell,
                                preprocess_field)


def _ellipse(shape, cy, cx, a, b, deg):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    t = np.radians(deg)
    dy, dx = y - cy, x - cx
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _moments(mask):
    yy, xx = np.nonzero(mask)
    return np.cov(np.stack([yy, xx]))


@pytest.mark.parametrize("deg", [0.0, 30.0, -55.0, 80.0])
def test_ellipse_is_turned_onto_x(deg):
    cell = _ellipse((120, 120), 60, 60, 28, 10, deg)
    nuc = _ellipse((120, 120), 60, 60, 6, 5, 0)
    assert major_axis_angle(cell) == pytest.approx(deg, abs=0.5)
    c = crop_cell([cell.astype(np.float32), nuc.astype(np.float32)], [True, True], cell, nuc, (64, 64))
    cov = _moments(c.image[0] > 0.5)
    assert cov[1, 1] > 5 * cov[0, 0]  # long along X
    assert abs(cov[0, 1]) < 0.05 * cov[1, 1]  # and not tilted
    assert c.image[0].sum() == pytest.approx(cell.sum(), rel=0.03)  # area kept at native sampling


def test_nucleus_centroid_at_crop_centre():
    cell = _ellipse((100, 140), 50, 70, 30, 14, 20)
    nuc = _ellipse((100, 140), 48, 60, 6, 5, 0)  # off the cell's centre
    c = crop_cell([cell, nuc], [True, True], cell, nuc, (64, 96))
    centre = np.argwhere(c.image[1] > 0.5).mean(axis=0)
    assert np.allclose(centre, [31.5, 47.5], atol=0.6)


def test_mirrored_cell_gives_the_same_crop():
    y, x = np.mgrid[:120, :120]
    cell = _ellipse((120, 120), 60, 60, 30, 12, 25) | ((y - 66) ** 2 + (x - 82) ** 2 <= 64)  # a lobe: skewed
    nuc = _ellipse((120, 120), 60, 52, 6, 5, 0)
    img = np.where(cell, 1.0 + 0.01 * x, 0).astype(np.float32)
    a = crop_cell([cell, nuc, img], [True, True, False], cell, nuc, (64, 80))
    b = crop_cell([cell[:, ::-1], nuc[:, ::-1], img[:, ::-1]], [True, True, False], cell[:, ::-1], nuc[:, ::-1],
                  (64, 80))
    assert a.angle_deg == pytest.approx(-b.angle_deg, abs=1e-6)
    assert a.flipped != b.flipped
    assert np.abs(a.image[:2] - b.image[:2]).max() == 0
    assert np.abs(a.image[2] - b.image[2]).max() < 1e-4
    # skew of the mask along both crop axes is positive after the flip
    m = a.image[0] > 0.5
    for ax in (0, 1):
        v = np.nonzero(m)[ax].astype(float)
        assert np.mean((v - v.mean()) ** 3) > 0


def test_preprocessing_constant_background():
    field = np.full((80, 80), 100, dtype=np.uint16)
    cell = _ellipse((80, 80), 40, 40, 15, 10, 0)
    nuc = _ellipse((80, 80), 40, 40, 5, 5, 0)
    field[cell] = 160
    field[39:42, 39:42] = 250  # a 3x3 peak: its maximum survives sub-pixel shifts
    assert field_background(field) == 100
    pre = preprocess_field(field)
    assert pre.min() == 0 and pre[0, 0] == 0 and pre[40, 40] == 150
    c = crop_cell([cell, pre, pre], [True, False, False], cell, nuc, (48, 48))
    outside = c.image[0] < 0.5
    assert (c.image[1:, outside] == 0).all()
    assert c.image[1].max() == pytest.approx(1.0) and c.image[1].min() == 0.0
    # the inside of the cell (background 60 over 150 max) at 0.4
    assert np.median(c.image[1][~outside]) == pytest.approx(60 / 150, abs=0.02)


def test_blank_target_gives_zeros_not_nan():
    cell = _ellipse((80, 80), 40, 40, 15, 10, 10)
    nuc = _ellipse((80, 80), 40, 40, 5, 5, 0)
    c = crop_cell([cell, nuc, np.zeros((80, 80), np.float32)], [True, True, False], cell, nuc, (48, 48))
    assert np.isfinite(c.image).all() and (c.image[2] == 0).all()
    f = measure_cell(cell, nuc, cell, nuc, np.zeros((80, 80)), None)
    assert np.isnan(f["target_nc_ratio"]) and f["cell_area"] == cell.sum()


def test_too_big_dropped_or_rescaled():
    cell = _ellipse((120, 120), 60, 60, 40, 10, 0)
    nuc = _ellipse((120, 120), 60, 60, 5, 5, 0)
    assert crop_cell([cell, nuc], [True, True], cell, nuc, (32, 32)) is None
    c = crop_cell([cell, nuc], [True, True], cell, nuc, (32, 32), rescale=True)
    assert c.scale < 0.4
    m = c.image[0] > 0.5
    assert m.any() and not (m[:, 0].any() or m[:, -1].any())
    assert c.pixel_size[-1] == pytest.approx(1 / c.scale)


def test_border_cells_dropped_and_counted():
    cells = np.zeros((100, 100), np.int32)
    cells[_ellipse((100, 100), 50, 50, 15, 8, 0)] = 1
    cells[_ellipse((100, 100), 50, 5, 12, 8, 0)] = 2  # cut by the left border
    nuclei = np.where(cells > 0, cells, 0) * _ellipse((100, 100), 50, 50, 40, 4, 0)
    mask = (cells > 0).astype(np.float32)
    fc = field_cells([mask, (nuclei > 0).astype(np.float32)], [True, True], cells, nuclei, (48, 48))
    assert fc.counts["n_cells"] == 1 and fc.counts["n_border_dropped"] == 1
    assert fc.rows[0]["cell_label"] == 1 and fc.crops[0].shape == (2, 48, 48)


def test_3d_crop_and_projection():
    z, y, x = np.mgrid[:20, :60, :60]
    cell = ((x - 30) / 20.0) ** 2 + ((y - 30) / 8.0) ** 2 + ((z - 10) / 6.0) ** 2 <= 1
    nuc = ((x - 30) ** 2 + (y - 30) ** 2 + (z - 10) ** 2) <= 16
    c = crop_cell([cell, nuc], [True, True], cell, nuc, (32, 48, 48), spacing=(1.0, 0.5, 0.5),
                  out_pixel_size=(0.5, 0.5, 0.5))
    assert c.image.shape == (2, 32, 48, 48)
    # z resampled from 1.0 to 0.5 um: twice the slices, so the volume in voxels doubles
    assert (c.image[0] > 0.5).sum() == pytest.approx(2 * cell.sum(), rel=0.06)
    cells = np.zeros((20, 60, 60), np.int32)
    cells[cell] = 1
    fc = field_cells([cell.astype(np.float32), nuc.astype(np.float32)], [True, True], cells, nuc.astype(np.int32),
                     (48, 48), spacing=(1.0, 0.5, 0.5), spacing_known=True, projection=True)
    assert fc.crops[0].shape == (2, 48, 48) and "cell_area" in fc.rows[0]
    assert fc.rows[0]["cell_area"] == pytest.approx(cell.any(axis=0).sum() * 0.25)
