"""Known answers for argmax integration of patch outputs (cytogen.segment.assemble)."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.segment.assemble import Integrator, integrate, segment_with_patches


def test_integrate_known_labels():
    probs = np.zeros((4, 3, 3), np.float32)
    probs[0] = 0.6                      # patch 0 at (0, 0)
    probs[1] = 0.8                      # patch 1 at (1, 1): wins the 2x2 overlap with patch 0
    probs[1, 2, 2] = 0.4                # ... except where it is below the threshold
    probs[2] = 0.6                      # patch 2 at (0, 4) ties with patch 3: the first wins
    probs[3] = 0.6                      # patch 3 at (-1, 5): partly outside the image
    probs[3, 2, 2] = 0.9                # its pixels (0, 7), (1, 7) are outside patch 2
    origins = np.array([[0, 0], [1, 1], [0, 4], [-1, 5]])
    labels = integrate(probs, origins, (5, 8))
    expected = np.array([
        [1, 1, 1, 0, 3, 3, 3, 4],
        [1, 2, 2, 2, 3, 3, 3, 4],
        [1, 2, 2, 2, 3, 3, 3, 0],
        [0, 2, 2, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    assert labels.dtype == np.int32
    assert np.array_equal(labels, expected)
    # everything below the threshold -> background; threshold is inclusive
    assert not integrate(probs * 0.5, origins, (5, 8)).any()
    assert np.array_equal(integrate(probs, origins, (5, 8), threshold=0.6) > 0, expected > 0)
    # a patch entirely outside the image changes nothing
    far = integrate(np.concatenate([probs, np.ones((1, 3, 3), np.float32)]),
                    np.concatenate([origins, [[10, 10]]]), (5, 8))
    assert np.array_equal(far, expected)


def test_integrate_into_out_and_3d():
    out = np.full((4, 4), 7, np.int32)
    res = integrate(np.full((1, 2, 2), 0.9, np.float32), np.array([[1, 1]]), (4, 4), out=out)
    assert res is out and out.sum() == 4 and out[1:3, 1:3].tolist() == [[1, 1], [1, 1]]
    probs = np.zeros((2, 2, 3, 3), np.float32)
    probs[0], probs[1] = 0.7, 0.9
    lab = integrate(probs, np.array([[0, 0, 0], [1, 2, 2]]), (3, 5, 5))
    assert lab[0, :3, :3].tolist() == [[1] * 3] * 3
    assert lab[1, 2, 2] == 2 and lab[1, 0, 0] == 1 and lab[2, 4, 4] == 2 and lab[0, 4, 4] == 0
    with pytest.raises(CytogenError):
        integrate(probs, np.array([[0, 0], [1, 1]]), (3, 5, 5))


def test_integrator_chunks_equal_one_go_in_any_order():
    rng = np.random.default_rng(0)
    n, k, shape = 40, 7, (30, 35)
    probs = rng.random((n, k, k)).astype(np.float32)
    probs[5:10] = probs[0]              # exact ties between patches at the same place
    origins = rng.integers(-3, 30, size=(n, 2))
    origins[5:10] = origins[0]
    whole = integrate(probs, origins, shape)
    assert set(np.unique(whole)) - {0} and not np.isin(np.arange(6, 11), whole).any()
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        acc = Integrator(shape, 0.5)
        for c in order:
            s = slice(8 * c, 8 * c + 8)
            acc.add(probs[s], origins[s], 8 * c)
        assert np.array_equal(acc.labels(), whole)
    # bounded memory: one float32 and one int32 array of the field
    assert acc.best.dtype == np.float32 and acc.best.shape == shape and acc.labels().dtype == np.int32


def _disk_predict(r: float):
    """Fake network: probability 1 - d / (2 r) at distance d from the patch centre (>= 0.5 inside r)."""

    def predict(patches: np.ndarray) -> np.ndarray:
        k = patches.shape[-1]
        yy, xx = np.mgrid[:k, :k]
        d = np.hypot(yy - k // 2, xx - k // 2)
        p = np.clip(1 - d / (2 * r), 0, 1).astype(np.float32)
        return np.broadcast_to(p, (len(patches), k, k)).copy()

    return predict


def _voronoi(markers: np.ndarray, shape, r: float, k: int) -> np.ndarray:
    """Nearest marker within r (lower index on equal distance), restricted to its patch."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d = np.stack([np.hypot(yy - m[0], xx - m[1]) for m in markers])
    o = np.floor(markers + 0.5).astype(int) - k // 2
    for i in range(len(markers)):
        inside = (yy >= o[i, 0]) & (yy < o[i, 0] + k) & (xx >= o[i, 1]) & (xx < o[i, 1] + k)
        d[i][~inside] = np.inf
    best = np.argmin(d, axis=0)
    return np.where(d.min(0) <= r, best + 1, 0).astype(np.int32)


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_segment_with_patches_gives_voronoi_cells(chunk):
    rng = np.random.default_rng(1)
    shape, k, r = (40, 48), 15, 6.0
    markers = np.stack([rng.integers(0, shape[0], 12), rng.integers(0, shape[1], 12)], 1).astype(float)
    markers[0] = (0, 0)                 # a cell at the corner (patch partly outside the image)
    markers[1] = (10, 10)
    markers[2] = (10, 16)               # equidistant pixels between 1 and 2 (x = 13) go to 1
    image = rng.random((2,) + shape).astype(np.float32)
    labels = segment_with_patches(_disk_predict(r), image, markers, k, 5.0, chunk=chunk)
    expected = _voronoi(markers, shape, r, k)
    assert labels.shape == shape and labels.dtype == np.int32
    assert np.array_equal(labels, expected)
    assert labels[10, 13] == 2 and labels[0, 0] == 1
    assert set(np.unique(labels)) <= set(range(13))


def test_segment_with_patches_uses_the_position_channel():
    """A fake network that finds its cell through the Gaussian channel: the cells are the
    Voronoi regions of the (sub-pixel) markers."""
    rng = np.random.default_rng(2)
    shape, k, r, sigma = (36, 36), 16, 5.0, 4.0
    markers = rng.uniform(3, 33, (9, 2))

    def predict(patches):
        g = np.clip(patches[:, -1].astype(np.float64), 1e-30, 1.0)
        d = np.sqrt(-2 * sigma ** 2 * np.log(g))
        return np.clip(1 - d / (2 * r), 0, 1).astype(np.float32)

    labels = segment_with_patches(predict, np.zeros((1,) + shape, np.float32), markers, k, sigma, chunk=4)
    expected = _voronoi(markers, shape, r, k)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d = np.sort(np.stack([np.hypot(yy - m[0], xx - m[1]) for m in markers]), axis=0)
    clear = (d[1] - d[0] > 1e-3) & (np.abs(d[0] - r) > 1e-3)
    assert clear.mean() > 0.95
    assert np.array_equal(labels[clear], expected[clear])
    assert len(np.unique(labels)) == 10


def test_segment_with_patches_checks_predict_fn_and_accepts_2d_images():
    markers = np.array([[5.0, 5.0]])
    one = segment_with_patches(_disk_predict(2.0), np.zeros((10, 10), np.float32), markers, 5, 2.0)
    assert one[5, 5] == 1 and one.sum() == 13   # the 13 pixels within 2 px of (5, 5)
    assert not segment_with_patches(_disk_predict(2.0), np.zeros((1, 10, 10)), np.zeros((0, 2)), 5, 2.0).any()
    with pytest.raises(CytogenError, match="predict_fn"):
        segment_with_patches(lambda p: np.zeros((len(p), 4, 4)), np.zeros((1, 10, 10)), markers, 5, 2.0)
    with pytest.raises(CytogenError, match="chunk"):
        segment_with_patches(_disk_predict(2.0), np.zeros((1, 10, 10)), markers, 5, 2.0, chunk=0)
