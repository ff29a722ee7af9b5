"""Tests for cytogen.io.lazy: lazily opened images equal what read_image loads."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_image, write_image
from cytogen.io.lazy import AxesView, open_image_lazy, open_spec_lazy, stack_lazy


def _data(shape, dtype="uint16", seed=0):
    return np.random.default_rng(seed).integers(0, 60000, size=shape).astype(dtype)


def _writers(tmp_path):
    """(path, how it was stored) for files whose stored axis orders differ."""
    d3 = _data((3, 2, 20, 30))  # Z C Y X
    tifffile.imwrite(tmp_path / "zcyx.tif", d3, imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "zcyx_zlib.tif", d3, compression="zlib",
                     metadata={"axes": "ZCYX"}, tile=(16, 16))
    tifffile.imwrite(tmp_path / "yx.tif", _data((25, 31), seed=1))
    tifffile.imwrite(tmp_path / "rgb.tif", _data((25, 31, 3), "uint8", seed=2), photometric="rgb")
    write_image(tmp_path / "cyx.ome.zarr", Image(_data((2, 40, 50), seed=3), "CYX", (0.5, 0.25),
                                                 ["dna", "actin"]))
    write_image(tmp_path / "czyx.ome.tif", Image(_data((2, 4, 20, 22), seed=4), "CZYX",
                                                 (2.0, 0.5, 0.5), ["a", "b"]))
    return ["zcyx.tif", "zcyx_zlib.tif", "yx.tif", "rgb.tif", "cyx.ome.zarr", "czyx.ome.tif"]


def test_lazy_equals_read_image_for_stored_axis_orders(tmp_path):
    for name in _writers(tmp_path):
        path = tmp_path / name
        ref = read_image(path)
        with open_image_lazy(path) as lazy:
            assert isinstance(lazy.data, AxesView), name
            assert lazy.axes == ref.axes and lazy.shape == ref.data.shape, name
            assert lazy.dtype == ref.data.dtype
            assert lazy.pixel_size_um == ref.pixel_size_um and lazy.channel_names == ref.channel_names
            np.testing.assert_array_equal(lazy.data[...], ref.data)
            np.testing.assert_array_equal(lazy.read().data, ref.data)
            # strided and integer keys, as tiling and subsampling use them
            key = (slice(None), slice(1, None, 3)) + (slice(2, -1),) * (lazy.ndim_spatial - 1)
            np.testing.assert_array_equal(lazy.data[key], ref.data[key])
            np.testing.assert_array_equal(lazy.data[-1, 2], ref.data[-1, 2])
            for c in range(lazy.shape[0]):  # channel pick, still lazy
                with open_image_lazy(path, channel=c) as one:
                    np.testing.assert_array_equal(one.data[..., 3:7], ref.data[c:c + 1, ..., 3:7])
                    assert one.channel_names == ([ref.channel_names[c]] if ref.channel_names else None)


def test_lazy_reads_nothing_until_sliced(tmp_path, monkeypatch):
    write_image(tmp_path / "a.ome.zarr", Image(_data((1, 64, 64)), "CYX"))
    reads = []
    original = zarr.Array.__getitem__

    def counting(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", counting)
    lazy = open_image_lazy(tmp_path / "a.ome.zarr")
    assert lazy.shape == (1, 64, 64) and reads == []
    lazy.data[:, 10:20]
    assert len(reads) == 1


def test_spec_and_stack(tmp_path):
    a, b = _data((1, 30, 40), seed=5), _data((2, 30, 40), "uint8", seed=6)
    write_image(tmp_path / "a.ome.zarr", Image(a, "CYX", (0.3, 0.3), ["x"]))
    write_image(tmp_path / "b.tif", Image(b, "CYX", None, ["y", "z"]))
    parts = [open_spec_lazy("a.ome.zarr", base_dir=tmp_path), open_spec_lazy(f"{tmp_path}/b.tif#c=1")]
    with stack_lazy(parts) as both:
        assert both.shape == (2, 30, 40) and both.dtype == np.uint16
        assert both.channel_names == ["x", "z"] and both.pixel_size_um == (0.3, 0.3)
        np.testing.assert_array_equal(both.data[:, 5:9, ::7], np.concatenate([a, b[1:]])[:, 5:9, ::7])
        np.testing.assert_array_equal(both.data[1], b[1])


def test_refusals(tmp_path):
    rgb = _data((2, 10, 12, 3), "uint8")  # channels on two stored axes: C and S
    tifffile.imwrite(tmp_path / "cyxs.ome.tif", rgb, photometric="rgb", metadata={"axes": "CYXS"})
    assert read_image(tmp_path / "cyxs.ome.tif").data.shape == (6, 10, 12)  # in memory: fine
    with pytest.raises(CytogenError, match="convert the file to OME-Zarr"):
        open_image_lazy(tmp_path / "cyxs.ome.tif")
    write_image(tmp_path / "c.ome.zarr", Image(_data((2, 10, 10)), "CYX"))
    with pytest.raises(CytogenError, match="channel 2 does not exist"):
        open_image_lazy(tmp_path / "c.ome.zarr", channel=2)
    with pytest.raises(CytogenError, match="does not exist"):
        open_image_lazy(tmp_path / "missing.ome.zarr")
    with pytest.raises(IndexError):
        open_image_lazy(tmp_path / "c.ome.zarr").data[[0, 1]]
