"""The 14 cell features: known answers on disks and spheres, units, crop segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.evaluate.features import (FEATURE_NAMES, FEATURE_NAMES_3D, cell_features, crop_features,
                                       feature_units, segment_crop)


def _disk(r, n=96, c=(48, 48)):
    y, x = np.mgrid[:n, :n]
    return (y - c[0]) ** 2 + (x - c[1]) ** 2 <= r * r


def test_names():
    assert len(FEATURE_NAMES) == 14 and len(FEATURE_NAMES_3D) == 14
    assert "cell_circularity" in FEATURE_NAMES and "nucleus_sphericity" in FEATURE_NAMES_3D
    u = feature_units(2, True)
    assert u["cell_area"] == "um^2" and u["cell_perimeter"] == "um" and feature_units(3, False)["cell_volume"] == "px^3"


def test_disk_features_in_um():
    cell, nuc = _disk(30), _disk(10)
    img = np.where(cell, 0.25, 0.0)
    img[nuc] = 0.75
    f = cell_features(cell, nuc, img, img, pixel_size_um=0.5)
    assert f["cell_area"] == pytest.approx(np.pi * 15**2, rel=0.01)  # r = 30 px = 15 um
    assert f["cell_perimeter"] == pytest.approx(2 * np.pi * 15, rel=0.03)
    assert f["cell_circularity"] == pytest.approx(1.0, abs=0.05)
    assert f["nucleus_intensity_mean"] == pytest.approx(0.75)
    frac = nuc.sum() / cell.sum()
    assert f["cell_intensity_mean"] == pytest.approx(0.25 + 0.5 * frac)
    assert f["cell_intensity_median"] == pytest.approx(0.25)
    assert f["cell_intensity_sd"] == pytest.approx(0.5 * np.sqrt(frac * (1 - frac)))
    p = np.array([frac, 1 - frac])
    assert f["cell_intensity_entropy"] == pytest.approx(-(p * np.log2(p)).sum())
    assert f["nucleus_intensity_entropy"] == 0.0
    # in pixels without a pixel size; an elongated shape is less circular
    assert cell_features(cell, nuc, img, img)["cell_area"] == cell.sum()
    y, x = np.mgrid[:96, :96]
    ell = ((y - 48) / 8.0) ** 2 + ((x - 48) / 40.0) ** 2 <= 1
    assert cell_features(ell, nuc & ell, None, None)["cell_circularity"] < 0.6


def test_sphere_volume_and_sphericity():
    z, y, x = np.mgrid[:40, :40, :40]
    s = (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 12**2
    f = cell_features(s, s, s.astype(float), s.astype(float), pixel_size_um=(0.5, 0.5, 0.5))
    assert f["cell_volume"] == pytest.approx(4 / 3 * np.pi * 6**3, rel=0.02)
    assert f["cell_surface_area"] == pytest.approx(4 * np.pi * 6**2, rel=0.03)
    assert f["cell_sphericity"] == pytest.approx(1.0, abs=0.03)
    flat = 9 * (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 12**2  # oblate 12:12:4, sphericity ~0.72
    assert cell_features(flat, flat, None, None)["cell_sphericity"] < 0.85


def test_segment_crop_and_empty_masks():
    cell, nuc = _disk(20, 64, (32, 32)), _disk(6, 64, (32, 32))
    rng = np.random.default_rng(0)
    crop = np.stack([cell * 0.8, nuc * 0.9 + 0.05 * cell, rng.random((64, 64)) * cell]).astype(np.float32)
    crop[0, 2:5, 2:5] = 0.8  # debris: the largest component wins
    c, n = segment_crop(crop)
    assert (c == cell).all() and (n == nuc).all()
    f = crop_features(crop, 0.5)
    assert f["nucleus_area"] == pytest.approx(nuc.sum() * 0.25)
    blank = crop_features(np.zeros((3, 32, 32), np.float32))
    assert blank["cell_area"] == 0 and np.isnan(blank["cell_intensity_mean"])
