"""Three-class targets and their inversion by seeded watershed: known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.data.instance_targets import BOUNDARY, INTERIOR, instance_classes
from cytogen.errors import CytogenError
from cytogen.segment.instances import classes_to_instances


def _one_hot(classes: np.ndarray) -> np.ndarray:
    return np.stack([(classes == k).astype(np.float32) for k in range(3)])


def test_touching_objects_get_boundaries_on_both_sides_and_come_back_exactly():
    lab = np.zeros((10, 14), np.int32)
    lab[2:8, 1:7], lab[2:8, 7:13] = 1, 2  # two touching boxes
    c = instance_classes(lab)
    assert (c[lab == 0] == 0).all()
    assert (c[2:8, 6] == BOUNDARY).all() and (c[2:8, 7] == BOUNDARY).all()  # the shared edge, both sides
    assert (c[3:7, 2:6] == INTERIOR).all() and (c[3:7, 8:12] == INTERIOR).all()
    assert np.array_equal(classes_to_instances(_one_hot(c), min_size_px=1), lab)
    wide = instance_classes(lab, boundary_px=2)
    assert (wide[2:8, 5:9] == BOUNDARY).all() and (wide[4:6, 3:5] == INTERIOR).all()


def test_objects_cut_by_the_image_edge_and_3d():
    lab = np.zeros((6, 6), np.int32)
    lab[:, :3] = 1  # touches the top, bottom and left edges
    c = instance_classes(lab)
    assert (c[:, 2] == BOUNDARY).all() and (c[:, :2] == INTERIOR).all()  # no boundary along the image edge
    vol = np.zeros((7, 9, 9), np.int32)
    vol[1:6, 1:8, 1:8] = 3
    cv = instance_classes(vol)
    assert cv[3, 4, 4] == INTERIOR and cv[1, 4, 4] == BOUNDARY
    out = classes_to_instances(_one_hot(cv), min_size_px=1)
    assert out.max() == 1 and np.array_equal(out > 0, vol > 0)


def test_watershed_keeps_unseeded_foreground_and_drops_small_objects():
    probs = np.zeros((3, 12, 12), np.float32)
    probs[0] = 1.0
    probs[:, 1:6, 1:6] = [[[0.0]], [[1.0]], [[0.0]]]  # a seeded object of 25 px
    probs[:, 8:11, 8:11] = [[[0.2]], [[0.0]], [[0.8]]]  # boundary only: foreground without a seed, 9 px
    probs[:, 0, 11] = [0.0, 1.0, 0.0]  # a 1 px speck
    out = classes_to_instances(probs, min_size_px=4)
    assert out.max() == 2 and (out[1:6, 1:6] > 0).all() and (out[8:11, 8:11] > 0).all() and out[0, 11] == 0
    with pytest.raises(CytogenError, match=r"\(3, \[Z,\] Y, X\)"):
        classes_to_instances(np.zeros((2, 4, 4)))
