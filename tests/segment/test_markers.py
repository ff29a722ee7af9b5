import numpy as np
import pytest
from scipy.spatial import cKDTree

from cytogen.errors import CytogenError
from cytogen.evaluate.markers import detect_markers
from cytogen.segment.markers import markers_from_image, markers_from_labels, merge_close


def blobs(shape, centres, sigmas, amps=None, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float64)
    img = np.zeros(shape)
    amps = np.ones(len(centres)) if amps is None else amps
    for c, s, a in zip(centres, sigmas, amps):
        img += a * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grid, c)) / (2 * s ** 2))
    return img + rng.normal(0, noise, shape)


CENTRES = np.array([[20.0, 20.0], [22.0, 70.0], [50.0, 45.0], [75.0, 15.0], [78.0, 80.0]])


def assert_matches(found, centres, tol=1.0):
    assert found.shape == centres.shape
    dist, idx = cKDTree(found).query(centres)
    assert dist.max() <= tol and len(set(idx.tolist())) == len(centres)


@pytest.mark.parametrize("method", ["dog", "log"])
def test_planted_blobs_found_within_one_pixel(method):
    img = blobs((96, 96), CENTRES, [3.0] * 5)
    assert_matches(markers_from_image(img, method=method, nucleus_diameter_px=8.5), CENTRES)


def test_planted_blobs_3d():
    centres = np.array([[8.0, 12.0, 12.0], [16.0, 36.0, 20.0], [10.0, 20.0, 38.0]])
    img = blobs((24, 48, 48), centres, [2.5] * 3)
    found = markers_from_image(img, nucleus_diameter_px=7.0)
    assert_matches(found, centres)


def test_return_sigma_keeps_the_centres():
    img = blobs((96, 96), CENTRES, [3.0] * 5)
    plain = detect_markers(img, nucleus_diameter_px=8.5)
    pts, sig = detect_markers(img, nucleus_diameter_px=8.5, return_sigma=True)
    np.testing.assert_array_equal(pts, plain)
    assert sig.shape == pts.shape and np.all((sig > 1.5) & (sig < 4.6))  # within the search range
    empty, esig = detect_markers(np.zeros((16, 16)), return_sigma=True)
    assert empty.shape == esig.shape == (0, 2)


def test_close_markers_merged_keeping_the_stronger():
    centres = np.array([[30.0, 30.0], [30.0, 37.0], [70.0, 70.0]])  # first pair 7 px apart
    img = blobs((96, 96), centres, [2.0] * 3, amps=[0.6, 1.0, 1.0])
    both = markers_from_image(img, nucleus_diameter_px=5.6)
    assert_matches(both, centres)  # the detector separates them
    merged = markers_from_image(img, nucleus_diameter_px=5.6, min_distance_px=10.0)
    assert_matches(merged, centres[1:])  # the dimmer blob of the pair is dropped
    far = markers_from_image(img, nucleus_diameter_px=5.6, min_distance_px=5.0)
    assert_matches(far, centres)


def test_min_size_drops_small_blobs():
    centres = np.array([[25.0, 25.0], [70.0, 30.0], [25.0, 70.0], [70.0, 72.0]])
    img = blobs((96, 96), centres, [4.0, 4.0, 1.8, 1.8])
    assert_matches(markers_from_image(img, nucleus_diameter_px=8.5), centres)
    # blob area pi (sigma sqrt 2)^2: ~14 px for the small blobs, ~90 px for the large ones
    assert_matches(markers_from_image(img, nucleus_diameter_px=8.5, min_size_px=40), centres[:2])


def test_um_settings_equal_pixel_settings_twice_as_large():
    centres = np.array([[30.0, 30.0], [30.0, 37.0], [70.0, 70.0], [70.0, 20.0]])
    img = blobs((96, 96), centres, [2.0, 2.0, 2.0, 1.0], amps=[0.6, 1.0, 1.0, 1.0])
    px = markers_from_image(img, nucleus_diameter_px=5.6, min_distance_px=10.0, min_size_px=10.0)
    um = markers_from_image(img, pixel_size_um=(0.5, 0.5), nucleus_diameter_um=2.8,
                            min_distance_um=5.0, min_size_um2=2.5)
    np.testing.assert_array_equal(um, px)
    assert len(px) == 2  # the merge and the size filter both acted
    seg_px = markers_from_image(img, method="segment", nucleus_diameter_px=5.6, min_size_px=12)
    seg_um = markers_from_image(img, method="segment", pixel_size_um=(0.5, 0.5),
                                nucleus_diameter_um=2.8, min_size_um2=3.0)
    np.testing.assert_array_equal(seg_um, seg_px)


@pytest.mark.parametrize("kw", [{"nucleus_diameter_um": 5.0}, {"min_distance_um": 3.0},
                                {"min_size_um2": 10.0}])
def test_um_without_pixel_size_is_an_error(kw):
    with pytest.raises(CytogenError, match="pixel size is unknown"):
        markers_from_image(np.random.default_rng(0).random((32, 32)), **kw)


def test_bad_settings_are_errors():
    img = np.random.default_rng(0).random((32, 32))
    with pytest.raises(CytogenError, match="unknown marker method"):
        markers_from_image(img, method="blob")
    with pytest.raises(CytogenError, match="min_size_px"):
        markers_from_image(img, min_size_px=-1)
    with pytest.raises(CytogenError, match="pixel_size_um"):
        markers_from_image(img, pixel_size_um=(0.5,))


def disk_image(shape, centres, radii):
    yy, xx = np.indices(shape)
    img = np.zeros(shape)
    for (cy, cx), r in zip(centres, radii):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2] = 1.0
    return img


def rows(a):
    return np.asarray(sorted(map(tuple, np.asarray(a))))


def test_segment_method_gives_object_centroids_and_drops_small_objects():
    centres = np.array([[20.0, 20.0], [6.0, 60.0], [20.0, 60.0], [60.0, 40.0]])
    img = disk_image((80, 80), centres, [6, 3, 6, 6])  # areas 113, 29, 113, 113 px; 2nd/3rd 14 px apart
    found = markers_from_image(img, method="segment", nucleus_diameter_px=12)
    np.testing.assert_allclose(rows(found), rows(centres), atol=1e-9)
    big = markers_from_image(img, method="segment", nucleus_diameter_px=12, min_size_px=50)
    np.testing.assert_allclose(rows(big), rows(centres[[0, 2, 3]]), atol=1e-9)
    # merging keeps the larger object of the close pair, whatever its label order
    merged = markers_from_image(img, method="segment", nucleus_diameter_px=12, min_distance_px=15)
    np.testing.assert_allclose(rows(merged), rows(centres[[0, 2, 3]]), atol=1e-9)


def test_merge_close_is_greedy_non_maximum_suppression():
    line = np.array([[0.0, 0.0], [0.0, 5.0], [0.0, 10.0]])
    np.testing.assert_array_equal(merge_close(line, 6.0), line[[0, 2]])  # first wins, 3rd survives
    np.testing.assert_array_equal(merge_close(line, 6.0, strength=[0, 1, 0]), line[[1]])
    np.testing.assert_array_equal(merge_close(line, 5.0), line)  # exactly min distance: kept
    np.testing.assert_array_equal(merge_close(line, 11.0, strength=[1, 2, 3]), line[[2]])
    assert merge_close(np.zeros((0, 2)), 3.0).shape == (0, 2)
    with pytest.raises(CytogenError, match="strength"):
        merge_close(line, 3.0, strength=[1, 2])


def test_labels_to_centroids_exact_on_squares():
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[2:7, 3:8] = 7      # 5x5: centre (4, 5)
    labels[10:14, 20:30] = 3  # 4x10: centre (11.5, 24.5)
    labels[30:39, 40:49] = 12
    found = markers_from_labels(labels)
    np.testing.assert_array_equal(found, [[11.5, 24.5], [4.0, 5.0], [34.0, 44.0]])  # sorted labels
    assert markers_from_labels(np.zeros((8, 8), dtype=int)).shape == (0, 2)


def test_largest_component_and_c_shape_moved_inside():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:25, 5:25] = 1
    labels[8:22, 8:25] = 0          # C-shape open to the right: centroid falls in the gap
    labels[35:38, 35:38] = 1        # a small second piece of label 1: ignored
    (m,) = markers_from_labels(labels)
    comp = labels.copy()
    comp[35:38, 35:38] = 0
    pix = np.argwhere(comp == 1)
    centroid = pix.mean(axis=0)
    assert comp[tuple(np.round(centroid).astype(int))] == 0  # the plain centroid is outside
    assert comp[tuple(m.astype(int))] == 1 and np.all(m == np.round(m))
    best = np.min(np.linalg.norm(pix - centroid, axis=1))
    assert np.linalg.norm(m - centroid) == pytest.approx(best)  # the nearest pixel of the C


def test_labels_3d_and_errors():
    labels = np.zeros((10, 12, 12), dtype=np.uint16)
    labels[1:4, 2:6, 2:6] = 1
    np.testing.assert_array_equal(markers_from_labels(labels), [[2.0, 3.5, 3.5]])
    with pytest.raises(CytogenError, match="negative"):
        markers_from_labels(-np.ones((4, 4), dtype=int))
    with pytest.raises(CytogenError, match="non-integer"):
        markers_from_labels(np.full((4, 4), 0.5))
