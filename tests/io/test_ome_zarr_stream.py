"""Tests for the streaming OME-Zarr writer (cytogen.io.ome_zarr.create_ome_zarr)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_image, write_image
from cytogen.io.ome_zarr import create_ome_zarr


@pytest.mark.parametrize("shape,axes,pixel", [((2, 37, 23), "CYX", (0.5, 0.25)),
                                              ((1, 11, 9, 8), "CZYX", (2.0, 0.5, 0.5))])
def test_streamed_blocks_round_trip_with_metadata(tmp_path, shape, axes, pixel):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    names = [f"ch{k}" for k in range(shape[0])]
    path = tmp_path / "out.ome.zarr"
    n = shape[1]
    cuts = [0, 3, 4, n // 2, n - 1, n]  # uneven blocks that straddle chunk rows
    with create_ome_zarr(path, shape, np.float32, axes, pixel, names, "zlib",
                         chunks=(1, 5, *shape[2:])) as writer:
        for a, b in zip(cuts, cuts[1:]):
            writer.write(a, data[:, a:b])
            assert not path.exists()  # only the temporary folder exists until the end
    image = read_image(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.axes == axes and image.pixel_size_um == pytest.approx(pixel)
    assert image.channel_names == names
    attrs = json.loads((path / ".zattrs").read_text())
    windows = [c["window"] for c in attrs["omero"]["channels"]]
    for k, w in enumerate(windows):  # running min/max over the blocks = whole-array min/max
        assert w["start"] == pytest.approx(float(data[k].min()))
        assert w["end"] == pytest.approx(float(data[k].max()))
    assert zarr.open_array(path / "0", mode="r").chunks == (1, 5, *shape[2:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.zarr"]


def test_each_chunk_is_written_once(tmp_path, monkeypatch):
    writes = []
    original = zarr.Array.__setitem__

    def counting(self, key, value):
        writes.append(key[1])
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", counting)
    data = np.arange(3 * 50 * 4, dtype=np.uint16).reshape(3, 50, 4)
    with create_ome_zarr(tmp_path / "a.ome.zarr", data.shape, data.dtype, "CYX", None, None,
                         None, chunks=(1, 8, 4)) as writer:
        for a in range(0, 50, 7):  # blocks of 7 rows, chunks of 8
            writer.write(a, data[:, a:a + 7])
    assert all(w.start % 8 == 0 for w in writes)  # every write starts on a chunk row
    assert sum(w.stop - w.start for w in writes) == 50  # and no row is written twice
    np.testing.assert_array_equal(read_image(tmp_path / "a.ome.zarr").data, data)


def test_failures_leave_no_output_and_keep_the_old_one(tmp_path):
    path = tmp_path / "a.ome.zarr"
    old = Image(np.ones((1, 6, 6), np.uint8), "CYX")
    write_image(path, old)
    with pytest.raises(ValueError, match="boom"):
        with create_ome_zarr(path, (1, 20, 6), np.float32, "CYX", None, None, None) as writer:
            writer.write(0, np.zeros((1, 10, 6), np.float32))
            raise ValueError("boom")
    with pytest.raises(CytogenError, match="only 10 of 20 rows"):
        with create_ome_zarr(path, (1, 20, 6), np.float32, "CYX", None, None, None) as writer:
            writer.write(0, np.zeros((1, 10, 6), np.float32))
    with pytest.raises(ValueError, match="in order"):
        with create_ome_zarr(path, (1, 20, 6), np.float32, "CYX", None, None, None) as writer:
            writer.write(5, np.zeros((1, 10, 6), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        with create_ome_zarr(path, (1, 20, 6), np.float32, "CYX", None, None, None) as writer:
            writer.write(0, np.zeros((1, 10, 5), np.float32))
    np.testing.assert_array_equal(read_image(path).data, old.data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ome.zarr"]
    fresh = tmp_path / "sub" / "b.ome.zarr"
    with pytest.raises(RuntimeError):
        with create_ome_zarr(fresh, (1, 4, 4), np.uint8, "CYX", None, None, None) as writer:
            raise RuntimeError("mid-stream")
    assert list(fresh.parent.iterdir()) == []
