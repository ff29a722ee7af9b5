"""Streaming OME-TIFF writer: exact round trips (2D, 3D), same metadata as write_image, bounded
memory, and nothing left behind when it fails."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile

from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_image, write_image
from cytogen.io.lazy import open_image_lazy
from cytogen.io.tiff import create_tiff


def _write_in_blocks(path, data, axes, pixel, names, sizes, **kwargs):
    with create_tiff(path, data.shape, data.dtype, axes, pixel, names, **kwargs) as writer:
        start = 0
        for n in sizes:
            writer.write(start, data[:, start:start + n])
            start += n
    return path


def test_2d_round_trip_reads_like_write_image(tmp_path):
    data = np.random.default_rng(0).normal(size=(3, 300, 517)).astype(np.float32)
    # uneven blocks that do not line up with the 256-pixel tiles, and edge tiles on both axes
    got = _write_in_blocks(tmp_path / "s.tif", data, "CYX", (0.4, 0.5), ["a", "b", "c"],
                           [1, 37, 200, 62])
    ref = write_image(tmp_path / "w.tif", Image(data, "CYX", (0.4, 0.5), ["a", "b", "c"]))
    s, w = read_image(got), read_image(ref)
    np.testing.assert_array_equal(s.data, data)
    assert s.data.dtype == np.float32
    assert (s.axes, s.pixel_size_um, s.channel_names) == (w.axes, w.pixel_size_um, w.channel_names)
    assert (s.axes, s.channel_names) == ("CYX", ["a", "b", "c"])
    assert s.pixel_size_um == pytest.approx((0.4, 0.5))
    with tifffile.TiffFile(got) as a, tifffile.TiffFile(ref) as b:
        assert a.is_ome and len(a.pages) == len(b.pages) == 3
        assert a.series[0].axes == b.series[0].axes == "CYX"
        for tag in ("XResolution", "YResolution", "ResolutionUnit"):  # for non-OME readers
            assert a.pages[0].tags[tag].value == b.pages[0].tags[tag].value
        assert a.pages[0].is_tiled and a.pages[0].compression == b.pages[0].compression  # zlib
    with open_image_lazy(got) as lazy:
        np.testing.assert_array_equal(lazy.data[:, 250:270, 500:], data[:, 250:270, 500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "w.tif"]


def test_3d_round_trip_streams_z_planes(tmp_path):
    data = np.random.default_rng(1).integers(0, 60000, size=(2, 7, 40, 50)).astype(np.uint16)
    got = _write_in_blocks(tmp_path / "z.tif", data, "CZYX", (2.0, 0.3, 0.3), None, [3, 1, 3],
                           compression=None)
    image = read_image(got)
    np.testing.assert_array_equal(image.data, data)
    assert image.axes == "CZYX" and image.channel_names is None
    assert image.pixel_size_um == pytest.approx((2.0, 0.3, 0.3))
    with tifffile.TiffFile(got) as tif:
        assert len(tif.pages) == 14 and tif.pages[0].compression == 1  # uncompressed, as asked


def test_an_error_leaves_no_file_and_keeps_the_old_one(tmp_path):
    data = np.ones((1, 64, 64), np.float32)
    old = write_image(tmp_path / "o.tif", Image(data * 7, "CYX"))
    with pytest.raises(RuntimeError, match="boom"):
        with create_tiff(old, data.shape, np.float32, "CYX", None, None) as writer:
            writer.write(0, data[:, :32])
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="only 32 of 64 rows"):
        with create_tiff(tmp_path / "n.tif", data.shape, np.float32, "CYX", None, None) as writer:
            writer.write(0, data[:, :32])
    with pytest.raises(ValueError, match="in order; expected row 32, got 40"):
        with create_tiff(tmp_path / "n.tif", data.shape, np.float32, "CYX", None, None) as writer:
            writer.write(0, data[:, :32])
            writer.write(40, data[:, :8])
    with pytest.raises(ValueError, match="does not fit"):
        with create_tiff(tmp_path / "n.tif", data.shape, np.float32, "CYX", None, None) as writer:
            writer.write(0, np.ones((2, 8, 64), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]  # no spool, no temporary
    np.testing.assert_array_equal(read_image(old).data, data * 7)


def test_refusals(tmp_path):
    with pytest.raises(CytogenError, match="shape"):
        create_tiff(tmp_path / "a.tif", (1, 0, 5), np.float32, "CYX", None, None).__enter__()
    with pytest.raises(CytogenError, match="axes"):
        create_tiff(tmp_path / "a.tif", (1, 5, 5), np.float32, "CZYX", None, None).__enter__()
    with pytest.raises(CytogenError, match="compression"):
        create_tiff(tmp_path / "a.tif", (1, 5, 5), np.float32, "CYX", None, None, "lzma").__enter__()
    with pytest.raises(CytogenError, match="2 channel names for 1 channels"):
        create_tiff(tmp_path / "a.tif", (1, 5, 5), np.float32, "CYX", None, ["a", "b"]).__enter__()
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(CytogenError, match="existing folder"):
        create_tiff(tmp_path / "d.tif", (1, 5, 5), np.float32, "CYX", None, None).__enter__()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tif"]


def test_memory_stays_at_a_band_of_tiles(tmp_path):
    """A 64 MiB image written in 64-row blocks: allocations peak near one 4 MiB band of tiles."""
    shape = (1, 4096, 4096)
    tracemalloc.start()
    try:
        with create_tiff(tmp_path / "big.tif", shape, np.float32, "CYX", None, None,
                         compression=None) as writer:
            for start in range(0, shape[1], 64):
                writer.write(start, np.full((1, 64, shape[2]), start, np.float32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 64 MiB image"
    with open_image_lazy(tmp_path / "big.tif") as lazy:
        assert lazy.shape == shape
        np.testing.assert_array_equal(lazy.data[0, ::512, ::1000], np.arange(0, 4096, 512)[:, None]
                                      // 64 * 64 * np.ones((1, 5)))
