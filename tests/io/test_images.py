"""Tests for cytogen.io.images: round trips, metadata, axes rules, specs and user errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from cytogen.errors import CytogenError
from cytogen.io import tiff as tiff_mod
from cytogen.io.images import (
    Image,
    parse_source_spec,
    read_image,
    read_spec,
    stack_channels,
    write_image,
)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def random_image(ndim: int, n_c: int, dtype: str, seed: int = 0, named: bool = True) -> Image:
    rng = np.random.default_rng(seed)
    spatial = (5, 17, 23) if ndim == 3 else (17, 23)  # odd sizes catch Y/X swaps
    shape = (n_c, *spatial)
    if np.dtype(dtype).kind == "f":
        data = rng.normal(size=shape).astype(dtype)
    else:
        data = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    pixel = (2.0, 0.325, 0.65)[-ndim:]
    names = [f"stain{k}" for k in range(n_c)] if named else None
    return Image(data, "CZYX" if ndim == 3 else "CYX", pixel, names)


def assert_same(a: Image, b: Image) -> None:
    assert b.axes == a.axes
    assert b.data.dtype == a.data.dtype
    assert b.data.shape == a.data.shape
    np.testing.assert_array_equal(b.data, a.data)
    if a.pixel_size_um is None:
        assert b.pixel_size_um is None
    else:
        np.testing.assert_allclose(b.pixel_size_um, a.pixel_size_um, rtol=1e-6)
    assert b.channel_names == a.channel_names


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("suffix", [".ome.tif", ".tif", ".ome.zarr", ".zarr"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("n_c", [1, 3])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip(tmp_path, suffix, ndim, n_c, dtype):
    image = random_image(ndim, n_c, dtype, seed=ndim * 10 + n_c)
    out = write_image(tmp_path / f"img{suffix}", image)
    assert out == tmp_path / f"img{suffix}"
    back = read_image(out)
    assert_same(image, back)
    assert back.ndim_spatial == ndim
    assert back.spatial_shape == image.data.shape[1:]


@pytest.mark.parametrize("suffix", [".tiff", ".OME.TIFF", ".ome.zarr"])
@pytest.mark.parametrize("compression", [None, "zlib", "zstd"])
def test_round_trip_without_metadata_and_other_dtypes(tmp_path, suffix, compression):
    for dtype in ("int16", "float64", "uint32"):
        image = random_image(3, 2, dtype, named=False)
        image.pixel_size_um = None
        path = write_image(tmp_path / f"{dtype}{suffix}", image, compression=compression)
        assert_same(image, read_image(path))


def test_ome_zarr_metadata_layout(tmp_path):
    image = random_image(3, 2, "uint16")
    path = write_image(tmp_path / "a.ome.zarr", image)
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][0]["type"] == "channel"
    assert all(a["unit"] == "micrometer" for a in ms["axes"][1:])
    assert ms["datasets"][0]["path"] == "0"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.325, 0.65]
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["stain0", "stain1"]
    assert json.loads((path / "0" / ".zarray").read_text())["zarr_format"] == 2


def test_read_ngff_v05_zarr3(tmp_path):
    """NGFF 0.5: zarr format 3, metadata under 'ome', 5D tczyx with t=1, units in nanometres."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, size=(1, 2, 4, 9, 11), dtype=np.uint16)
    group = zarr.open_group(tmp_path / "v5.ome.zarr", mode="w", zarr_format=3)
    group.create_array("s0", shape=data.shape, dtype=data.dtype)[...] = data
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    axes += [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    scale = {"type": "scale", "scale": [1, 1, 500, 100, 200]}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [
            {"path": "s0", "coordinateTransformations": [scale]}]}],
        "omero": {"channels": [{"label": "DNA"}, {"label": "actin"}]},
    }
    image = read_image(tmp_path / "v5.ome.zarr")
    assert image.axes == "CZYX"
    np.testing.assert_array_equal(image.data, data[0])
    np.testing.assert_allclose(image.pixel_size_um, (0.5, 0.1, 0.2))
    assert image.channel_names == ["DNA", "actin"]


def test_zarr_overwrite_is_complete_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.zarr"
    write_image(path, random_image(3, 3, "uint16", seed=1))
    second = random_image(2, 1, "uint8", seed=2)
    write_image(path, second)
    assert_same(second, read_image(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.tif"
    first = random_image(2, 1, "uint8")
    write_image(path, first)
    before = digest(path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tiff_mod.tifffile, "imwrite", boom)
    with pytest.raises(OSError):
        write_image(path, random_image(2, 1, "uint8", seed=5))
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


# ------------------------------------------------------------------------------------- PNG
@pytest.mark.parametrize("n_c,dtype", [(1, "uint8"), (1, "uint16"), (3, "uint8"), (4, "uint8")])
def test_png_round_trip(tmp_path, n_c, dtype):
    image = random_image(2, n_c, dtype, named=False)
    path = write_image(tmp_path / "a.PNG", image)
    back = read_image(path)
    assert back.pixel_size_um is None
    image.pixel_size_um = None
    assert_same(image, back)


@pytest.mark.parametrize("image", [
    Image(np.zeros((1, 3, 4, 5), np.uint8), "CZYX"),
    Image(np.zeros((1, 4, 5), np.float32), "CYX"),
    Image(np.zeros((2, 4, 5), np.uint8), "CYX"),
])
def test_png_refuses_what_it_cannot_hold(tmp_path, image):
    with pytest.raises(CytogenError, match=r"\.tif"):
        write_image(tmp_path / "a.png", image)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- TIFF metadata / axes
def test_imagej_resolution_and_spacing(tmp_path):
    data = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"unit": "um", "spacing": 2.0, "axes": "ZYX"})
    image = read_image(path)
    assert image.axes == "CZYX"
    np.testing.assert_array_equal(image.data[0], data)
    np.testing.assert_allclose(image.pixel_size_um, (2.0, 0.65, 0.65), rtol=1e-5)


def test_imagej_hyperstack_channels_and_labels(tmp_path):
    data = np.arange(4 * 2 * 6 * 7, dtype=np.uint8).reshape(4, 2, 6, 7)  # ImageJ order ZCYX
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZCYX", "unit": "micron", "Labels": ["dna", "actin"] * 4})
    image = read_image(path)
    assert image.axes == "CZYX"
    np.testing.assert_array_equal(image.data, data.transpose(1, 0, 2, 3))
    assert image.channel_names == ["dna", "actin"]
    assert image.pixel_size_um is None  # no z spacing: an incomplete size is not reported


def test_ome_units_are_converted(tmp_path):
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 9), np.uint8), ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 0.0005, "PhysicalSizeYUnit": "mm"})
    np.testing.assert_allclose(read_image(path).pixel_size_um, (0.5, 0.25))


@pytest.mark.parametrize("resolution,unit,expected", [
    ((10000 / 0.5, 10000 / 0.5), "CENTIMETER", (0.5, 0.5)),  # 0.5 um/px: plausible
    ((72, 72), "INCH", None),  # 72 dpi default of image editors: 352 um/px, ignored
    ((1, 1), "NONE", None),
])
def test_plain_resolution_tags(tmp_path, resolution, unit, expected):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((8, 9), np.uint8), resolution=resolution,
                     resolutionunit=unit)
    image = read_image(path)
    assert image.axes == "CYX" and image.data.shape == (1, 8, 9)
    if expected is None:
        assert image.pixel_size_um is None
    else:
        np.testing.assert_allclose(image.pixel_size_um, expected)


def test_rgb_tiff_samples_become_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif")
    assert image.axes == "CYX"
    np.testing.assert_array_equal(image.data, rgb.transpose(2, 0, 1))


def test_unknown_leading_axis_is_z_unless_axes_given(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")  # plain multi-page: axes 'QYX'
    as_z = read_image(path)
    assert as_z.axes == "CZYX" and as_z.data.shape == (1, 5, 6, 7)
    as_c = read_image(path, axes="CYX")
    assert as_c.axes == "CYX"
    np.testing.assert_array_equal(as_c.data, data)
    with pytest.raises(CytogenError, match="axes="):
        read_image(path, axes="CZYX")  # 4 letters for 3 stored axes


def test_two_unknown_axes_need_axes_argument(tmp_path):
    data = np.arange(2 * 4 * 6 * 7, dtype=np.uint8).reshape(2, 4, 6, 7)
    path = tmp_path / "q2.tif"
    tifffile.imwrite(path, data, photometric="minisblack")  # tifffile axes 'QQYX'
    with pytest.raises(CytogenError, match=r"axes=.*q2\.tif|q2\.tif.*axes="):
        read_image(path)
    image = read_image(path, axes="ZCYX")
    assert image.axes == "CZYX"
    np.testing.assert_array_equal(image.data, data.transpose(1, 0, 2, 3))


def test_time_series_refused(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((3, 6, 7), np.uint8), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(CytogenError, match="time point"):
        read_image(path)


# ------------------------------------------------------------------------- specs, channels
def test_parse_source_spec():
    assert parse_source_spec("dir/a.tif#c=2") == (Path("dir/a.tif"), 2)
    assert parse_source_spec("a.tif") == (Path("a.tif"), None)
    assert parse_source_spec(" plate#3/a.tif ") == (Path("plate#3/a.tif"), None)
    assert parse_source_spec("x/a.ome.zarr#c=0") == (Path("x/a.ome.zarr"), 0)
    for bad in ("a.tif#c=x", "a.tif#c=-1", "a.tif#c=", "#c=1", "  "):
        with pytest.raises(CytogenError):
            parse_source_spec(bad)


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr"])
def test_read_spec_picks_channel_relative_to_base_dir(tmp_path, suffix, monkeypatch):
    image = random_image(2, 3, "uint16")
    write_image(tmp_path / "sub" / f"f{suffix}", image)
    monkeypatch.chdir("/")  # relative paths must resolve against base_dir, not the cwd
    picked = read_spec(f"sub/f{suffix}#c=1", base_dir=tmp_path)
    assert picked.data.shape == (1, 17, 23)
    np.testing.assert_array_equal(picked.data[0], image.data[1])
    assert picked.channel_names == ["stain1"]
    assert picked.pixel_size_um == pytest.approx(image.pixel_size_um)
    assert read_spec(f"sub/f{suffix}", base_dir=tmp_path).data.shape == (3, 17, 23)
    with pytest.raises(CytogenError, match="3 channel"):
        read_spec(f"sub/f{suffix}#c=3", base_dir=tmp_path)


def test_stack_channels():
    a = random_image(2, 1, "uint8", seed=1)
    b = random_image(2, 2, "uint8", seed=2, named=False)
    b.pixel_size_um = None
    a.pixel_size_um = None
    c = random_image(2, 1, "uint16", seed=3)
    stacked = stack_channels([a, b, c])
    assert stacked.axes == "CYX" and stacked.data.dtype == np.uint16
    np.testing.assert_array_equal(stacked.data, np.concatenate([a.data, b.data, c.data]))
    assert stacked.channel_names == ["stain0", "channel_1", "channel_2", "stain0"]
    assert stacked.pixel_size_um == c.pixel_size_um  # first known one


def test_stack_channels_errors():
    a = random_image(2, 1, "uint8")
    small = Image(np.zeros((1, 10, 23), np.uint8), "CYX")
    with pytest.raises(CytogenError, match=r"\(17, 23\).*\(10, 23\)"):
        stack_channels([a, small])
    with pytest.raises(CytogenError):
        stack_channels([a, random_image(3, 1, "uint8")])
    other = random_image(2, 1, "uint8")
    other.pixel_size_um = (1.3, 1.3)
    with pytest.raises(CytogenError, match="pixel size"):
        stack_channels([a, other])
    with pytest.raises(CytogenError):
        stack_channels([])


def test_image_validation():
    with pytest.raises(CytogenError):
        Image(np.zeros((4, 5)), "YX")
    with pytest.raises(CytogenError):
        Image(np.zeros((1, 4, 5)), "CZYX")
    with pytest.raises(CytogenError):
        Image(np.zeros((2, 4, 5)), "CYX", channel_names=["only one"])
    with pytest.raises(CytogenError):
        Image(np.zeros((1, 4, 5)), "CYX", pixel_size_um=(0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------- user errors
def test_missing_file(tmp_path):
    with pytest.raises(CytogenError, match=r"nope\.tif.*does not exist.*check the path"):
        read_image(tmp_path / "nope.tif")


@pytest.mark.parametrize("name", ["empty.tif", "empty.png"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CytogenError, match=rf"{name}.*empty"):
        read_image(tmp_path / name)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.5, -100, 16])
def test_truncated_tiff(tmp_path, compression, keep):
    path = write_image(tmp_path / "whole.tif", random_image(3, 2, "uint16"),
                       compression=compression)
    raw = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CytogenError, match=r"cut\.tif.*cannot be read as TIFF.*complete"):
        read_image(cut)


def test_truncated_png(tmp_path):
    path = write_image(tmp_path / "whole.png", random_image(2, 3, "uint8"))
    (tmp_path / "cut.png").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CytogenError, match=r"cut\.png.*cannot be read as PNG"):
        read_image(tmp_path / "cut.png")


def test_not_an_ome_zarr(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(CytogenError, match="empty.zarr"):
        read_image(tmp_path / "empty.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=2)
    with pytest.raises(CytogenError, match="multiscales"):
        read_image(tmp_path / "plain.zarr")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(CytogenError, match=r"a\.jpg.*\.tif.*\.png.*\.zarr"):
        read_image(tmp_path / "a.jpg")
    with pytest.raises(CytogenError, match="Supported"):
        write_image(tmp_path / "b.jpg", random_image(2, 1, "uint8"))


def test_zero_sized_axis(tmp_path):
    with pytest.raises(CytogenError, match="empty"):
        write_image(tmp_path / "e.tif", Image(np.zeros((1, 0, 5), np.uint8), "CYX"))
    group = zarr.open_group(tmp_path / "e.zarr", mode="w", zarr_format=2)
    group.create_array("0", shape=(1, 0, 5), dtype="uint8")
    group.attrs["multiscales"] = [{"axes": [{"name": "c", "type": "channel"},
                                            {"name": "y", "type": "space"},
                                            {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0"}]}]
    with pytest.raises(CytogenError, match=r"e\.zarr.*empty"):
        read_image(tmp_path / "e.zarr")


def test_bad_channel_and_compression(tmp_path):
    path = write_image(tmp_path / "a.tif", random_image(2, 2, "uint8"))
    with pytest.raises(CytogenError, match="2 channel"):
        read_image(path, channel=5)
    with pytest.raises(CytogenError, match="compression"):
        write_image(tmp_path / "b.tif", random_image(2, 1, "uint8"), compression="jpeg")


@pytest.mark.parametrize("suffix", [".tif", ".png", ".ome.zarr"])
def test_reading_does_not_modify_input(tmp_path, suffix):
    path = write_image(tmp_path / f"in{suffix}", random_image(2, 3, "uint8"))
    before = digest(path)
    mtime = path.stat().st_mtime_ns
    image = read_image(path, channel=0)
    image.data[...] = 0  # the returned array is ours to change
    assert digest(path) == before
    assert path.stat().st_mtime_ns == mtime


# ------------------------------------------------------------------------------ real data
def test_real_2d_uint8_tiff(shared_path):
    path = shared_path("sbs_translocation", "Channel2-01-A-01.tif")
    before = digest(path)
    image = read_image(path)
    assert image.axes == "CYX"
    assert image.data.shape == (1, 640, 640) and image.data.dtype == np.uint8
    assert image.pixel_size_um is None  # file says 72 dpi: not a microscope pixel size
    assert image.data.max() > image.data.min()
    assert digest(path) == before


def test_real_3d_ome_tiff(shared_path):
    path = shared_path(
        "allen_3d_brightfield_dna_crop", "run_170622_174530_whole_cropped_nuc.tif"
    )
    image = read_image(path)
    assert image.axes == "CZYX"
    assert image.data.shape == (1, 32, 128, 128) and image.data.dtype == np.float32
    assert image.data.dtype.isnative  # the file is big-endian
    assert np.isfinite(image.data).all() and image.data.std() > 0


def test_real_plain_3d_stack_and_imagej_channels(shared_path):
    stack = read_image(shared_path("cells3d_nuclei", "nuclei.tif"))
    assert stack.axes == "CZYX" and stack.data.shape == (1, 60, 256, 256)
    two = read_image(shared_path("membrane_nuclei_example", "Fluorescence_example.tif"))
    assert two.axes == "CYX" and two.data.shape == (2, 450, 450)
    assert not np.array_equal(two.data[0], two.data[1])


def test_real_rgb_png(shared_path):
    folder = shared_path("dsb2018_nuclei", "images")
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        pytest.skip("no PNG in ../shared/data/dsb2018_nuclei/images")
    image = read_image(pngs[0])
    assert image.axes == "CYX" and image.data.shape[0] in (1, 3, 4)
    assert image.data.dtype == np.uint8 and image.pixel_size_um is None

