"""Derived segmentation recovers the cells and nuclei of synthetic fields (exact labels known)."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.segment.cells import match_nuclei, segment_cells, segment_nuclei
from cytogen.synth.cells import synth_field


@pytest.mark.parametrize("seed", [0, 4])
def test_synthetic_field_recovered(seed):
    f = synth_field((256, 256), seed=seed)
    n_true = len(np.unique(f.cells)) - 1
    nuclei = segment_nuclei(f.image[2], f.pixel_size_um)
    assert abs(nuclei.max() - n_true) <= 0.2 * n_true
    for source, membrane in ((1, True), (0, False)):
        cells = segment_cells(f.image[source], nuclei, f.pixel_size_um, membrane=membrane)
        labels = np.unique(cells[cells > 0])
        assert abs(len(labels) - n_true) <= 0.2 * n_true
        # every nucleus lies in its cell
        assert ((cells == nuclei) | (nuclei == 0)).all()
        # most derived cells overlap one true cell mostly
        good = 0
        for lab in labels:
            t = f.cells[cells == lab]
            t = t[t > 0]
            good += len(t) > 0 and np.bincount(t).max() >= 0.6 * (cells == lab).sum()
        assert good >= 0.7 * len(labels)


def test_touching_nuclei_split_3d_and_blank():
    z, y, x = np.mgrid[:16, :40, :60]
    a = (z - 8) ** 2 + (y - 20) ** 2 + (x - 22) ** 2 <= 36
    b = (z - 8) ** 2 + (y - 20) ** 2 + (x - 33) ** 2 <= 36
    img = (a | b).astype(np.float32)
    assert segment_nuclei(img, (1.0, 1.0, 1.0), min_distance_um=4.0).max() == 2
    assert segment_nuclei(np.zeros((32, 32))).max() == 0


def test_match_nuclei_by_overlap():
    cells = np.zeros((10, 10), np.int32)
    cells[:, :5], cells[:, 5:] = 3, 7
    nuclei = np.zeros_like(cells)
    nuclei[2:5, 1:4] = 1  # in cell 3
    nuclei[2:5, 4:9] = 2  # mostly in cell 7, one column in cell 3 (smaller than nucleus 1 there)
    m = match_nuclei(cells, nuclei)
    assert set(np.unique(m)) == {0, 3, 7}
    assert (m[2:5, 1:4] == 3).all() and (m[2:5, 5:9] == 7).all() and (m[2:5, 4] == 0).all()
