"""Tests for the OME-Zarr level and label listing (open_ome_zarr_levels, list_ome_zarr_labels),
on images written by ome-zarr-py itself (NGFF 0.4 and 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from cytogen.errors import CytogenError
from cytogen.io.ome_zarr import (
    list_ome_zarr_labels,
    open_ome_zarr,
    open_ome_zarr_levels,
)

writer = pytest.importorskip("ome_zarr.writer")
fmt = pytest.importorskip("ome_zarr.format")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_levels_and_labels_of_an_ome_zarr_py_image(tmp_path, version):
    f = fmt.FormatV04() if version == "0.4" else fmt.FormatV05()
    image = np.arange(2 * 32 * 24, dtype=np.uint16).reshape(2, 32, 24)
    labels = (np.arange(32 * 24).reshape(32, 24) // 100).astype(np.uint16)
    path = tmp_path / "a.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=f.zarr_format)
    writer.write_image(image, group, axes="cyx", fmt=f, scale_factors=[2, 4])
    writer.write_labels(labels, group, name="nuclei", axes="yx", fmt=f, scaler=None,
                         scale_factors=[2])
    writer.write_labels(labels + 1, group, name="cells", axes="yx", fmt=f, scaler=None,
                         scale_factors=[2])

    levels = open_ome_zarr_levels(path)
    assert [a.shape for a in levels] == [(2, 32, 24), (2, 16, 12), (2, 8, 6)]
    np.testing.assert_array_equal(levels[0][...], image)
    assert open_ome_zarr(path).data.shape == levels[0].shape

    assert list_ome_zarr_labels(path) == ["nuclei", "cells"]
    nuclei = open_ome_zarr_levels(path / "labels" / "nuclei")
    assert [a.shape for a in nuclei] == [(32, 24), (16, 12)]
    np.testing.assert_array_equal(nuclei[0][...], labels)


def test_no_labels_and_not_an_image(tmp_path):
    path = tmp_path / "b.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    writer.write_image(np.zeros((1, 8, 8), np.uint8), group, axes="cyx", fmt=fmt.FormatV04(),
                       scale_factors=[])
    assert list_ome_zarr_labels(path) == []
    assert len(open_ome_zarr_levels(path)) == 1
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(CytogenError, match="multiscales"):
        open_ome_zarr_levels(tmp_path / "plain.zarr")
    with pytest.raises(CytogenError, match="missing.zarr"):
        list_ome_zarr_labels(tmp_path / "missing.zarr")
