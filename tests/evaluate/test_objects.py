import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.objects import as_labels, measure_objects, segment_nuclei

SHAPE = (128, 128)
DISCS = [((30.0, 30.0), 10), ((30.0, 90.0), 14), ((90.0, 30.0), 12), ((95.0, 95.0), 9), ((62.0, 62.0), 7.5)]


def disc(shape, centre, radius):
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def planted(shape=SHAPE, discs=DISCS):
    masks = [disc(shape, c, r) for c, r in discs]
    img = np.full(shape, 0.1)
    for m in masks:
        img[m] = 1.0
    return img, masks


def object_under(labels, mask):
    ids, counts = np.unique(labels[mask], return_counts=True)
    return ids[np.argmax(counts)]


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_noise_free_discs_are_recovered_exactly():
    img, masks = planted()
    lab = segment_nuclei(img, sigma_px=0)
    assert lab.dtype == np.int32 and lab.max() == len(masks)
    assert set(np.unique(lab)) == set(range(len(masks) + 1))  # sequential
    for m in masks:
        assert np.array_equal(lab == object_under(lab, m), m)


def test_noisy_discs_masks_centroids_sizes():
    img, masks = planted()
    img = img + np.random.default_rng(0).normal(0, 0.05, SHAPE)
    lab = segment_nuclei(img, sigma_px=1.0)
    assert lab.max() == len(masks)
    table = measure_objects(lab)
    for (centre, _), m in zip(DISCS, masks):
        k = object_under(lab, m)
        assert iou(lab == k, m) >= 0.98
        row = np.flatnonzero(table.label == k)[0]
        np.testing.assert_allclose(table.centroid_px[row], centre, atol=0.5)
        assert table.size_px[row] == pytest.approx(m.sum(), rel=0.03)


def test_touching_discs_are_split_and_not_without_splitting():
    img, masks = planted(discs=[((64.0, 50.0), 12), ((64.0, 72.0), 12)])
    assert (masks[0] | masks[1]).sum() < masks[0].sum() * 2  # they do overlap
    lab = segment_nuclei(img, sigma_px=0)
    assert lab.max() == 2
    cents = measure_objects(lab).centroid_px
    np.testing.assert_allclose(sorted(cents[:, 1]), [50, 72], atol=1.0)
    assert segment_nuclei(img, sigma_px=0, split_touching=False).max() == 1


def test_min_area_in_pixels_and_um2():
    img, _ = planted(discs=[((64.0, 64.0), 10)])
    img[10:13, 10:13] = 1.0  # a 9-pixel speck
    assert segment_nuclei(img, sigma_px=0, min_area_px=20).max() == 1
    assert segment_nuclei(img, sigma_px=0, min_area_px=5).max() == 2
    ps = (0.5, 0.5)  # speck = 2.25 um^2
    assert segment_nuclei(img, sigma_px=0, pixel_size_um=ps, min_area_um2=3.0, min_area_px=1).max() == 1
    assert segment_nuclei(img, sigma_px=0, pixel_size_um=ps, min_area_um2=2.0, min_area_px=100).max() == 2
    with pytest.warns(UserWarning, match="pixel size"):  # no pixel size: falls back to px
        assert segment_nuclei(img, sigma_px=0, min_area_um2=3.0, min_area_px=5).max() == 2


def test_exclude_border_removes_cut_disc():
    img, masks = planted(discs=[((64.0, 64.0), 10), ((3.0, 40.0), 9)])
    assert segment_nuclei(img, sigma_px=0).max() == 2
    lab = segment_nuclei(img, sigma_px=0, exclude_border=True)
    assert lab.max() == 1 and np.array_equal(lab > 0, masks[0])


def test_thresholds_and_constant_images():
    img, masks = planted()
    for thr in ("li", "triangle", 0.5):
        assert segment_nuclei(img, sigma_px=0, threshold=thr).max() == len(masks)
    assert not segment_nuclei(np.zeros(SHAPE)).any()
    assert not segment_nuclei(np.full((16, 16, 16), 7.0), threshold=1.0).any()
    assert not segment_nuclei(img, threshold=5.0).any()  # nothing above an absolute threshold
    assert np.array_equal(segment_nuclei(img + 5.0, threshold=1.0), np.ones(SHAPE, np.int32))  # all above


def test_spheres_3d_exact_and_anisotropic():
    shape = (40, 64, 64)
    spheres = [((12.0, 16.0, 16.0), 6), ((26.0, 44.0, 20.0), 7), ((20.0, 30.0, 48.0), 5)]
    masks = [disc(shape, c, r) for c, r in spheres]
    img = np.zeros(shape)
    for m in masks:
        img[m] = 1.0
    lab = segment_nuclei(img, sigma_px=0)
    assert lab.max() == 3
    for m in masks:
        assert np.array_equal(lab == object_under(lab, m), m)
    table = measure_objects(lab, pixel_size_um=(0.5, 0.5, 0.5))
    for (centre, r), m in zip(spheres, masks):
        row = np.flatnonzero(table.label == object_under(lab, m))[0]
        np.testing.assert_allclose(table.centroid_um[row], np.asarray(centre) * 0.5, atol=1e-9)
        assert table.equivalent_radius_px[row] == pytest.approx(r, rel=0.05)
    # physical spheres sampled on anisotropic voxels (z twice as coarse) stay single objects
    grid = np.indices((24, 64, 64), dtype=np.float64)
    ball = ((grid[0] - 12) * 1.0) ** 2 + ((grid[1] - 32) * 0.5) ** 2 + ((grid[2] - 32) * 0.5) ** 2 <= 5.0 ** 2
    lab = segment_nuclei(ball.astype(float), sigma_px=1.0, pixel_size_um=(1.0, 0.5, 0.5))
    assert lab.max() == 1 and iou(lab > 0, ball) > 0.9


def test_segment_errors():
    with pytest.raises(CytogenError, match="2D"):
        segment_nuclei(np.zeros((2, 3, 8, 8)))
    with pytest.raises(CytogenError, match="NaN"):
        segment_nuclei(np.full((8, 8), np.nan))
    with pytest.raises(CytogenError, match="otsu"):
        segment_nuclei(np.eye(8), threshold="median")
    with pytest.raises(CytogenError, match="pixel_size_um"):
        segment_nuclei(np.eye(8), pixel_size_um=(0.5,))


def test_measure_rectangle_known_answers():
    lab = np.zeros((10, 12), dtype=np.uint16)
    lab[2:6, 3:10] = 4  # 4 rows x 7 cols
    lab[7:10, 0:2] = 9  # touches the bottom and left border
    t = measure_objects(lab, pixel_size_um=(0.5, 0.25))
    assert len(t) == 2 and list(t.label) == [4, 9]
    assert t.size_px[0] == 28 and list(t.bbox[0]) == [2, 3, 6, 10]
    np.testing.assert_allclose(t.centroid_px[0], [3.5, 6.0])
    np.testing.assert_allclose(t.centroid_um[0], [1.75, 1.5])
    assert t.size_um[0] == pytest.approx(28 * 0.125)
    assert list(t.touches_border) == [False, True]
    rows = t.to_rows()
    assert rows[0]["centroid_y_um"] == pytest.approx(1.75) and rows[0]["bbox_x_max"] == 10
    assert rows[1]["touches_border"] is True
    plain = measure_objects(lab)
    assert plain.centroid_um is None and plain.size_um is None and np.isnan(plain.to_rows()[0]["size_um"])


def test_equivalent_radius_and_empty():
    t = measure_objects(disc((100, 100), (50, 50), 20).astype(np.int32), pixel_size_um=(0.2, 0.2))
    assert t.equivalent_radius_px[0] == pytest.approx(20, rel=0.01)
    assert t.equivalent_radius_um[0] == pytest.approx(4.0, rel=0.01)
    empty = measure_objects(np.zeros((5, 6, 7), np.int32))
    assert len(empty) == 0 and empty.centroid_px.shape == (0, 3) and empty.bbox.shape == (0, 6)
    assert empty.to_rows() == []


def test_as_labels_relabels_and_refuses_floats():
    lab = as_labels(np.array([[0, 5, 5], [0, 0, 9], [2, 0, 9]], dtype=np.uint16))
    np.testing.assert_array_equal(lab, [[0, 2, 2], [0, 0, 3], [1, 0, 3]])
    assert lab.dtype == np.int32
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    assert as_labels(mask).max() == 2
    with pytest.raises(CytogenError, match="--labels only for label images"):
        as_labels(np.random.default_rng(0).random((8, 8)))
    with pytest.raises(CytogenError, match="negative"):
        as_labels(np.array([[0, -1]]))
