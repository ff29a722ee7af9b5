"""Property-based fuzzing of the manifest parser and the image readers.

Whatever bytes or shapes arrive, the only outcomes allowed are a valid result or a
CytogenError; never another exception, never a modified input. The number of examples run
is printed at the end of each test (pytest -s shows it) and recorded in tests' output.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_image, write_image

COUNTS: dict[str, int] = {}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
headers = st.lists(st.sampled_from(["name", "source", "target", "mask", "split", "pixel_size_um", "group",
                                    "colour", "", "source "]), min_size=0, max_size=7)


@FUZZ
@given(header=headers, rows=st.lists(st.lists(cells, max_size=8), max_size=6), raw=st.binary(max_size=200),
       use_raw=st.booleans())
def test_manifest_parser_never_crashes(header, rows, raw, use_raw):
    _count("manifest")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.csv"
        if use_raw:
            p.write_bytes(raw)
        else:
            p.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n", encoding="utf-8")
        before = hashlib.sha256(p.read_bytes()).hexdigest()
        try:
            entries = read_manifest(p, check_files=False)
            assert all(e.source for e in entries)
        except CytogenError as exc:
            assert str(exc)
        assert hashlib.sha256(p.read_bytes()).hexdigest() == before


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".tif", ".png", ".ome.tif", ".tiff"]),
       keep_header=st.booleans())
def test_image_readers_on_random_bytes(data, suffix, keep_header):
    _count("random_bytes")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        head = {".png": b"\x89PNG\r\n\x1a\n"}.get(suffix, b"II*\x00")
        p.write_bytes((head if keep_header else b"") + data)
        before = hashlib.sha256(p.read_bytes()).hexdigest()
        try:
            img = read_image(p)
            assert img.data.ndim in (3, 4)
        except CytogenError as exc:
            assert str(p.name) in str(exc)
        assert hashlib.sha256(p.read_bytes()).hexdigest() == before and sorted(Path(d).iterdir()) == [p]


@FUZZ
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=4),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.int16]),
       suffix=st.sampled_from([".tif", ".ome.zarr"]), cut=st.integers(0, 400))
def test_round_trip_or_clear_error_for_random_shapes(shape, dtype, suffix, cut):
    _count("random_shapes")
    rng = np.random.default_rng(len(shape) * 31 + cut)
    arr = (rng.random(shape) * 100).astype(dtype)
    axes = "CYX" if len(shape) == 3 else "CZYX" if len(shape) == 4 else None
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        if axes is None:  # a bare 2D array
            arr = arr[None]
            axes = "CYX"
        write_image(p, Image(arr, axes, None))
        back = read_image(p)
        # data survive exactly; a size-1 Z axis may be dropped on reading (documented)
        assert back.data.size == arr.size and back.data.dtype == arr.dtype
        np.testing.assert_array_equal(back.data.reshape(arr.shape), arr)
        if suffix == ".tif" and cut:
            raw = p.read_bytes()
            p.write_bytes(raw[: max(0, len(raw) - cut)])
            try:
                img = read_image(p)
                # tifffile may still read a file whose tail held only metadata
                np.testing.assert_array_equal(img.data.reshape(arr.shape), arr)
            except CytogenError as exc:
                assert "x.tif" in str(exc)


def test_report_fuzz_counts(capsys):
    """Runs last in this file: prints how many cases each fuzz test ran."""
    with capsys.disabled():
        print(f"\nfuzz cases run: {COUNTS} (total {sum(COUNTS.values())})")
    if not COUNTS:
        pytest.skip("the fuzz tests of this file did not run before this one")
    assert all(v >= 50 for v in COUNTS.values()), COUNTS  # hypothesis really ran the examples
