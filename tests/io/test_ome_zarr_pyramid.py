"""Tests for cytogen's OME-Zarr writer with pyramids and labels, read back with ome-zarr-py's
Reader and validated against the NGFF 0.4 schema (ome-zarr-models)."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import zarr

from cytogen.errors import CytogenError
from cytogen.io.images import read_image
from cytogen.io.ome_zarr import (
    create_ome_zarr,
    list_ome_zarr_labels,
    open_ome_zarr_levels,
    write_ome_zarr,
    write_ome_zarr_labels,
)
from cytogen.io.pyramid import halve, level_shapes

ome_reader = pytest.importorskip("ome_zarr.reader")
ome_io = pytest.importorskip("ome_zarr.io")
ome_format = pytest.importorskip("ome_zarr.format")
models = pytest.importorskip("ome_zarr_models.v04")


def reference_mean(a: np.ndarray) -> np.ndarray:
    """2 x 2 block means of the last two axes, partial blocks at odd edges (NaN-padded)."""
    *lead, h, w = a.shape
    pad = np.full((*lead, h + h % 2, w + w % 2), np.nan)
    pad[..., :h, :w] = a
    blocks = pad.reshape(*lead, pad.shape[-2] // 2, 2, pad.shape[-1] // 2, 2)
    return np.nanmean(blocks, axis=(-3, -1))


def ome_nodes(path):
    reader = ome_reader.Reader(ome_io.parse_url(str(path), fmt=ome_format.FormatV04()))
    return {str(n.zarr.path).rstrip("/"): n for n in reader()}


def test_level_shapes_rule():
    assert level_shapes((1, 16384, 16384)) == [(1, 16384 // 2**k, 16384 // 2**k) for k in range(5)]
    assert level_shapes((2, 37, 23), max_side=8) == [(2, 37, 23), (2, 19, 12), (2, 10, 6), (2, 5, 3)]
    assert level_shapes((1, 5, 700, 3000)) == [(1, 5, 700, 3000), (1, 5, 350, 1500), (1, 5, 175, 750)]
    assert level_shapes((1, 4096, 900), max_side=None) == [(1, 4096, 900)]


def test_halve_known_answers():
    a = np.array([[1, 2, 3], [5, 6, 7], [9, 10, 11]], np.float32)
    np.testing.assert_allclose(halve(a, "mean"), [[3.5, 5.0], [9.5, 11.0]])
    np.testing.assert_array_equal(halve(a, "nearest"), [[1, 3], [9, 11]])
    u = np.array([[0, 1], [0, 0]], np.uint16)  # mean 0.25 rounds to 0; 0.75 to 1
    assert halve(u, "mean").item() == 0 and halve(u * 3, "mean").item() == 1
    assert halve(u, "mean").dtype == np.uint16


@pytest.mark.parametrize("shape,axes,pixel", [((2, 37, 23), "CYX", (0.5, 0.25)),
                                              ((1, 3, 21, 18), "CZYX", (2.0, 0.5, 0.5))])
def test_streamed_pyramid_equals_a_reference_downsample(tmp_path, shape, axes, pixel):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / "p.ome.zarr"
    n = shape[1]
    cuts = sorted({0, 1, min(4, n), min(5, n), n - 1, n})  # odd, uneven blocks
    with create_ome_zarr(path, shape, np.float32, axes, pixel, [f"c{k}" for k in range(shape[0])],
                         "zlib", chunks=(1, 1 if len(shape) == 4 else 6, 8, 8)[:len(shape)],
                         max_side=6) as writer:
        for a, b in itertools.pairwise(cuts):
            writer.write(a, data[:, a:b])
    levels = open_ome_zarr_levels(path)
    assert [lv.shape for lv in levels] == level_shapes(shape, 6)
    np.testing.assert_array_equal(levels[0][...], data)
    # each level is the 2 x 2 mean of the level above it as stored (float32 per level)
    for above, lv in itertools.pairwise(levels):
        np.testing.assert_allclose(lv[...], reference_mean(above[...].astype(np.float64)),
                                   rtol=1e-6, atol=1e-6)
    back = read_image(path)  # level 0 with the pixel size in um
    assert back.pixel_size_um == pytest.approx(pixel) and back.axes == axes


def test_whole_image_read_back_by_ome_zarr_py_and_valid_ngff(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, size=(2, 45, 30), dtype=np.uint16)
    path = tmp_path / "w.ome.zarr"
    write_ome_zarr(path, data, "CYX", (0.65, 0.65), ["DNA", "actin"], "zlib", max_side=12)
    labels = (np.arange(45 * 30).reshape(45, 30) * 7919 % 301).astype(np.uint16)
    write_ome_zarr_labels(path, "nuclei", labels, colors={1: (255, 0, 0, 255)}, max_side=12)

    nodes = ome_nodes(path)
    image = nodes[str(path)]
    assert [d.shape for d in image.data] == [(2, 45, 30), (2, 23, 15), (2, 12, 8)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), data)
    np.testing.assert_array_equal(np.asarray(image.data[1]), np.rint(reference_mean(data)))
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
    assert image.metadata["axes"][1]["unit"] == "micrometer"
    assert image.metadata["channel_names"] == ["DNA", "actin"]
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 0.65, 0.65], [1.0, 1.3, 1.3], [1.0, 2.6, 2.6]]
    shifts = [t[1]["translation"] for t in image.metadata["coordinateTransformations"][1:]]
    np.testing.assert_allclose(shifts, [[0, 0.325, 0.325], [0, 0.975, 0.975]])  # block centres

    label = nodes[str(path / "labels" / "nuclei")]
    assert label.metadata["name"] == "nuclei" and label.metadata["color"][1] == [1, 0, 0, 1]
    for k, level in enumerate(label.data):  # nearest: label values exact
        np.testing.assert_array_equal(np.asarray(level), labels[:: 2**k, :: 2**k])
    label_scales = [t[0]["scale"] for t in label.metadata["coordinateTransformations"]]
    assert label_scales == [s[1:] for s in scales]  # no channel axis; the image's pixel size
    assert list_ome_zarr_labels(path) == ["nuclei"]

    group = zarr.open_group(str(path), mode="r")
    model = models.Image.from_zarr(group)
    assert len(model.attributes.multiscales[0].datasets) == 3
    assert models.Labels.from_zarr(group["labels"]).attributes.labels == ["nuclei"]
    assert models.ImageLabel.from_zarr(group["labels/nuclei"]).attributes.image_label.source.image == "../../"


def test_labels_replace_and_refuse_bad_input(tmp_path):
    path = tmp_path / "l.ome.zarr"
    write_ome_zarr(path, np.zeros((1, 4, 5, 6), np.float32), "CZYX", (1.0, 0.5, 0.5), None, None)
    lab = np.arange(120, dtype=np.int32).reshape(4, 5, 6)
    write_ome_zarr_labels(path, "cells", lab)
    write_ome_zarr_labels(path, "nuclei", lab)
    write_ome_zarr_labels(path, "cells", lab + 1)  # replaced, listed once
    assert list_ome_zarr_labels(path) == ["nuclei", "cells"]
    np.testing.assert_array_equal(open_ome_zarr_levels(path / "labels" / "cells")[0][...], lab + 1)
    assert read_image(path / "labels" / "cells").pixel_size_um == pytest.approx((1.0, 0.5, 0.5))
    with pytest.raises(CytogenError, match="spatial shape"):
        write_ome_zarr_labels(path, "x", lab[:, :4])
    with pytest.raises(CytogenError, match="integers"):
        write_ome_zarr_labels(path, "x", lab.astype(np.float32))
    assert sorted(p.name for p in (path / "labels").iterdir()) == [".zattrs", ".zgroup", "cells",
                                                                   "nuclei"]


def test_streaming_with_pyramid_never_holds_the_whole_array(tmp_path):
    size, step = 2048, 64  # 16 MiB of float32, built lazily block by block
    rows = np.linspace(0, 1, size, dtype=np.float32)
    tracemalloc.start()
    with create_ome_zarr(tmp_path / "big.ome.zarr", (1, size, size), np.float32, "CYX",
                         (0.5, 0.5), ["x"], None, chunks=(1, 128, 512), max_side=256) as writer:
        for a in range(0, size, step):
            writer.write(a, (rows[a:a + step, None] + rows[None, :])[None])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size * size * 4 / 3  # blocks and one chunk-row buffer per level, not the image
    levels = open_ome_zarr_levels(tmp_path / "big.ome.zarr")
    assert [lv.shape[-1] for lv in levels] == [2048, 1024, 512, 256]
    top = levels[-1][...]  # 8 x 8 block means of y + x rows: the mean of the 8 pixels' values
    expect = reference_mean(reference_mean(reference_mean((rows[:, None] + rows[None, :])[None])))
    np.testing.assert_allclose(top, expect, atol=1e-5)


def test_image_with_labels_in_one_atomic_write(tmp_path):
    path = tmp_path / "seg.ome.zarr"
    image = np.random.default_rng(2).integers(0, 255, size=(2, 30, 40), dtype=np.uint8)
    lab = np.zeros((30, 40), np.uint16)
    lab[5:15, 5:20], lab[20:28, 25:39] = 1, 65535
    write_ome_zarr(path, image, "CYX", (0.3, 0.3), ["DNA", "actin"], "zlib", max_side=16,
                   labels={"nuclei": lab})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.ome.zarr"]  # no temporary left
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["multiscales"][0]["name"] == "seg"  # named after the destination
    assert group["labels/nuclei"].attrs["multiscales"][0]["name"] == "nuclei"
    models.Image.from_zarr(group)
    models.ImageLabel.from_zarr(group["labels/nuclei"])
    levels = open_ome_zarr_levels(path / "labels" / "nuclei")
    assert [lv.shape for lv in levels] == [(30, 40), (15, 20), (8, 10)]
    assert set(np.unique(levels[2][...])) == {0, 1, 65535}
    with pytest.raises(CytogenError, match="spatial shape"):  # a bad label image: nothing written
        write_ome_zarr(tmp_path / "bad.ome.zarr", image, "CYX", None, None, None,
                       labels={"nuclei": lab[:10]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.ome.zarr"]
