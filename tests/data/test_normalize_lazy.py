"""Normalisation statistics from a bounded subsample of an image that is never loaded."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from cytogen.data.normalize import Normalizer, spread_sample


class Recording:
    """Wraps an array and records the size of every read."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.sizes = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        out = self.data[key]
        self.sizes.append(out.size)
        return out


def test_spread_sample_is_bounded_spread_and_read_in_blocks():
    x = np.arange(2 * 900 * 700, dtype=np.int64).reshape(2, 900, 700)
    rec = Recording(x)
    s = spread_sample(rec, max_pixels=10_000, read_pixels=2_000)
    assert s.shape[0] == 2 and 5_000 <= s.shape[1] <= 10_000
    assert max(rec.sizes) <= 2 * 2_000 + 2 * 700  # blocks, never the image
    rows, cols = np.unravel_index(s[0], (900, 700))
    assert rows.min() < 20 and rows.max() > 880 and cols.min() < 20 and cols.max() > 680
    np.testing.assert_array_equal(s[1] - s[0], 900 * 700)  # channels sampled at the same pixels
    small = np.ones((1, 3, 5, 4))
    assert spread_sample(small).shape == (1, 60)  # small images: every pixel


@pytest.mark.parametrize("method", ["percentile", "zscore"])
def test_lazy_field_stats_are_close_to_exact_ones(tmp_path, method):
    rng = np.random.default_rng(0)
    data = (rng.gamma(2.0, 300.0, size=(2, 1200, 1100)) + 100 * np.arange(2)[:, None, None])
    data = data.astype(np.uint16)
    arr = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=data.shape, dtype=data.dtype,
                          chunks=(1, 256, 256))
    arr[...] = data
    norm = Normalizer(method=method)
    exact_off, exact_scale = norm.stats_for(data)
    off, scale = norm.stats_for_lazy(arr, max_pixels=200_000)  # a 1 in 13 subsample
    np.testing.assert_allclose(off, exact_off, rtol=0.03, atol=2.0)
    np.testing.assert_allclose(scale, exact_scale, rtol=0.03)
    assert not np.allclose(scale, exact_scale, rtol=1e-9)  # it really is a subsample
    fitted = Normalizer(method=method, scope="dataset").fit([data])
    assert [a.tolist() for a in fitted.stats_for_lazy(arr)] == [fitted.offset, fitted.scale]
