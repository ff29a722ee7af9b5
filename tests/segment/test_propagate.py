import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.segment.propagate import propagate

SHAPE = (48, 84)
LEFT = (slice(8, 40), slice(8, 40))    # cell 1: columns 8..39
RIGHT = (slice(8, 40), slice(41, 76))  # cell 2: columns 41..75; column 40 is the dark line
MARKERS = np.array([[24.0, 20.0], [24.0, 60.0]])


def box(sl):
    m = np.zeros(SHAPE, dtype=bool)
    m[sl] = True
    return m


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def field(line=True, right_level=1.0, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(SHAPE)
    img[LEFT] = 1.0
    img[RIGHT] = right_level
    if not line:
        img[8:40, 40] = right_level
    fg = np.zeros(SHAPE, dtype=bool)
    fg[8:40, 8:76] = True  # one touching clump, the line included
    return img + rng.normal(0, 0.02, SHAPE), fg


def assert_split(labels, order=(1, 2), right=RIGHT):
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    assert iou(labels == order[0], box(LEFT)) > 0.95
    assert iou(labels == order[1], box(right)) > 0.95


def test_dark_line_splits_touching_cells():
    img, fg = field(line=True)
    labels = propagate(img, MARKERS, fg)
    assert_split(labels)
    # marker order decides the labels: label i+1 belongs to marker i
    assert_split(propagate(img, MARKERS[::-1], fg), order=(2, 1))
    assert_split(propagate(img, MARKERS, fg, compactness=0.0))  # the plain watershed too


def test_brightness_step_splits_touching_cells():
    img, fg = field(line=False, right_level=0.4)
    # a marker near the boundary still stops at the step
    labels = propagate(img, np.array([[24.0, 20.0], [24.0, 46.0]]), fg)
    assert_split(labels, right=(slice(8, 40), slice(40, 76)))  # column 40 is the right cell's now


def test_foreground_is_respected():
    img, fg = field()
    fg[30:40, 50:76] = False  # part of the right cell is declared background
    fg[0:4, 0:10] = True      # a foreground patch without a marker stays unlabelled
    labels = propagate(img, MARKERS, fg)
    assert not labels[~fg].any()
    assert not labels[0:4, 0:10].any()
    assert iou(labels == 2, box(RIGHT) & fg) > 0.95
    assert iou(labels == 1, box(LEFT)) > 0.95


def test_markers_outside_foreground_or_image_give_no_object():
    img, fg = field()
    markers = np.vstack([MARKERS[:1], [[2.0, 2.0]], [[-5.0, 30.0]], [[24.0, 200.0]], MARKERS[1:]])
    labels = propagate(img, markers, fg)
    assert set(np.unique(labels).tolist()) == {0, 1, 5}
    assert iou(labels == 1, box(LEFT)) > 0.95 and iou(labels == 5, box(RIGHT)) > 0.95
    assert not propagate(img, np.zeros((0, 2)), fg).any()


def test_flat_region_split_by_distance_with_default_compactness():
    fg = np.zeros((40, 80), dtype=bool)
    fg[5:35, 5:75] = True
    img = fg.astype(float)
    markers = np.array([[20.0, 25.0], [20.0, 55.0]])  # bisector at x = 40
    labels = propagate(img, markers, fg)
    xx = np.indices(fg.shape)[1]
    assert iou(labels == 1, fg & (xx < 40)) > 0.95 and iou(labels == 2, fg & (xx >= 40)) > 0.95


def test_channels_averaged_after_scaling():
    img, fg = field(line=False, right_level=0.4)
    one = propagate(img, MARKERS, fg)
    # a second channel with the same content at another scale and offset changes nothing
    np.testing.assert_array_equal(propagate(np.stack([img, 100 * img + 7]), MARKERS, fg), one)
    # a channel carrying the boundary rescues a channel that has none
    flat = fg * 1.0
    assert_split(propagate(np.stack([img, flat]), MARKERS, fg), right=(slice(8, 40), slice(40, 76)))


def test_input_errors():
    img, fg = field()
    with pytest.raises(CytogenError, match="does not match foreground"):
        propagate(img[:, :40], MARKERS, fg)
    with pytest.raises(CytogenError, match="markers have shape"):
        propagate(img, np.zeros((2, 3)), fg)
    with pytest.raises(CytogenError, match="compactness"):
        propagate(img, MARKERS, fg, compactness=-1.0)
    with pytest.raises(CytogenError, match="NaN"):
        propagate(np.full(SHAPE, np.nan), MARKERS, fg)


def test_3d_stack_split_along_the_dark_plane():
    img = np.zeros((12, 20, 40))
    img[2:10, 4:16, 4:19] = 1.0
    img[2:10, 4:16, 20:36] = 1.0  # x = 19 is a dark plane between two touching cells
    fg = np.zeros(img.shape, dtype=bool)
    fg[2:10, 4:16, 4:36] = True
    labels = propagate(img, np.array([[6.0, 10.0, 10.0], [6.0, 10.0, 28.0]]), fg)
    left = np.zeros_like(fg)
    left[2:10, 4:16, 4:19] = True
    right = np.zeros_like(fg)
    right[2:10, 4:16, 20:36] = True
    off_line = np.ones_like(fg)
    off_line[:, :, 19] = False  # the dark plane may go to either cell
    assert iou((labels == 1) & off_line, left) > 0.99 and iou((labels == 2) & off_line, right) > 0.99
    assert not labels[~fg].any()
