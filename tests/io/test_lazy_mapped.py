"""Uncompressed TIFF inputs are mapped, read by copies and leave no pages resident."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytogen.io.lazy import ReleasingMap, open_image_lazy


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_mapped_tiff_reads_exact_values(tmp_path: Path, byteorder: str) -> None:
    data = np.random.default_rng(0).integers(0, 60000, (3, 70, 90)).astype(f"{byteorder}u2")
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, byteorder=byteorder, metadata={"axes": "CYX"})
    with open_image_lazy(path) as img:
        assert isinstance(img.data.base, ReleasingMap)  # the uncompressed file is mapped
        np.testing.assert_array_equal(img.data[:, 10:20, 5:50], data[:, 10:20, 5:50])
        np.testing.assert_array_equal(np.asarray(img.data), data)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read VmRSS")
def test_reading_a_mapped_tiff_strip_by_strip_keeps_resident_memory_flat(tmp_path: Path) -> None:
    rows, cols = 4096, 4096  # 32 MiB of uint16
    path = tmp_path / "big.tif"
    with tifffile.TiffWriter(path) as tw:  # written without holding the image
        tw.write(shape=(rows, cols), dtype=np.uint16,
                 data=(np.full((64, cols), i % 7, np.uint16) for i in range(rows // 64)),
                 rowsperstrip=64)
    with open_image_lazy(path) as img:
        before = _rss_kib()
        total = 0
        for r in range(0, rows, 128):
            total += int(img.data[:, r:r + 128].sum())
        grown_mib = (_rss_kib() - before) / 1024
    assert total == sum((i % 7) * 64 * cols for i in range(rows // 64))
    # a plain memory map would leave all 32 MiB resident after one pass
    assert grown_mib < 8, f"resident memory grew by {grown_mib:.1f} MiB reading 32 MiB"
