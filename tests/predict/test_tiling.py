"""Tests for cytogen.predict.tiling: exact reconstruction across seams, padding, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cytogen.errors import CytogenError
from cytogen.predict import BLENDS, blend_window, predict_tiled, tile_starts


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def affine_1x1(x: torch.Tensor) -> torch.Tensor:
    """1x1 conv with all weights 2.0 and bias 0.5, 3 output channels."""
    nd = x.ndim - 2
    conv = F.conv2d if nd == 2 else F.conv3d
    weight = torch.full((3, x.shape[1]) + (1,) * nd, 2.0, dtype=x.dtype)
    return conv(x, weight, torch.full((3,), 0.5, dtype=x.dtype))


def affine_expected(img: np.ndarray) -> np.ndarray:
    out = 2.0 * img.sum(axis=0, keepdims=True) + 0.5
    return np.repeat(out, 3, axis=0)


def mean3(x: torch.Tensor) -> torch.Tensor:
    """3x3 (or 3x3x3) mean filter, zero padding at the tile border."""
    nd = x.ndim - 2
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    return pool(x, 3, stride=1, padding=1, count_include_pad=True)


CASES = [
    # (image shape, tile, size_multiple, overlap)
    ((1, 37, 53), (16, 16), 1, 0.25),
    ((2, 70, 45), (32, 16), 16, 0.5),
    ((1, 100, 131), (40, 40), 16, (5, 9)),
    ((1, 9, 21, 30), (4, 16, 16), (1, 16, 16), 0.25),
    ((2, 11, 19, 17), (8, 8, 8), 4, 0.5),
]


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape,tile,mult,overlap", CASES)
def test_pixelwise_fns_reproduced_exactly(shape, tile, mult, overlap, blend):
    rng = np.random.default_rng(0)
    img = rng.normal(size=shape).astype(np.float32)
    before = img.copy()
    seen = set()

    def fn(x):
        seen.add(tuple(x.shape[2:]))
        return identity(x)

    out = predict_tiled(fn, img, tile=tile, overlap=overlap, size_multiple=mult, blend=blend,
                        batch_size=3)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, img, atol=1e-5)
    np.testing.assert_array_equal(img, before)  # input untouched
    mults = (mult,) * len(tile) if isinstance(mult, int) else mult
    for t in seen:  # every tile divisible by size_multiple
        assert all(s % m == 0 for s, m in zip(t, mults))
    out = predict_tiled(affine_1x1, img, tile=tile, overlap=overlap, size_multiple=mult,
                        blend=blend, out_channels=3)
    np.testing.assert_allclose(out, affine_expected(img), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 7), (1, 5, 3), (1, 1, 1, 1), (1, 2, 3, 5)])
@pytest.mark.parametrize("mult", [1, 16])
def test_images_smaller_than_a_tile(shape, mult):
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    nd = len(shape) - 1
    seen = []

    def fn(x):
        seen.append(tuple(x.shape))
        return affine_1x1(x)

    out = predict_tiled(fn, img, tile=(64,) * nd, size_multiple=mult)
    np.testing.assert_allclose(out, affine_expected(img), atol=1e-5)
    assert len(seen) == 1 and all(s == mult for s in seen[0][2:] if mult == 16)


@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.5, 0.9])
def test_any_overlap_covers_every_pixel(overlap):
    img = np.random.default_rng(2).random((1, 61, 47)).astype(np.float32)
    out = predict_tiled(identity, img, tile=(16, 16), overlap=overlap, batch_size=16)
    np.testing.assert_allclose(out, img, atol=1e-5)


def test_integer_image_and_bf16_tiles():
    img = np.arange(2 * 40 * 30, dtype=np.uint16).reshape(2, 40, 30) % 200
    out = predict_tiled(identity, img, tile=(16, 16), dtype=torch.bfloat16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img, rtol=1e-6, atol=1e-5)  # ints < 256 exact in bf16


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("nd", [2, 3])
def test_receptive_field_matches_whole_image_with_margin(blend, nd):
    """With margin >= the fn's halo, seams vanish exactly (only the image border differs)."""
    shape = (1, 50, 67) if nd == 2 else (1, 21, 26, 30)
    tile = (16, 16) if nd == 2 else (8, 12, 12)
    img = np.random.default_rng(3).random(shape).astype(np.float32)
    full = mean3(torch.from_numpy(img)[None])[0].numpy()
    out = predict_tiled(mean3, img, tile=tile, overlap=0.25, margin=1, blend=blend)
    inner = (slice(None),) + (slice(1, -1),) * nd
    np.testing.assert_allclose(out[inner], full[inner], atol=1e-5)


def test_receptive_field_gaussian_blend_suppresses_seams():
    """Without a margin, the Gaussian window down-weights tile borders: seam errors are
    far smaller than with constant blending."""
    img = np.random.default_rng(4).random((1, 96, 96)).astype(np.float32)
    full = mean3(torch.from_numpy(img)[None])[0].numpy()
    inner = (slice(None), slice(1, -1), slice(1, -1))
    err = {}
    for blend in ("gaussian", "constant"):
        out = predict_tiled(mean3, img, tile=(32, 32), overlap=0.5, blend=blend)
        err[blend] = np.abs(out - full)[inner].max()
    assert err["gaussian"] < 1e-3
    assert err["constant"] > 10 * err["gaussian"]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_fn_calls_and_progress(batch_size):
    img = np.zeros((1, 100, 70), np.float32)
    tile, overlap = (32, 32), 0.25
    step = 32 - round(0.25 * 32)
    n_tiles = len(tile_starts(100, 32, step)) * len(tile_starts(70, 32, step))
    calls, reports = [], []

    def fn(x):
        calls.append(x.shape[0])
        assert x.shape[0] <= batch_size
        return x

    predict_tiled(fn, img, tile=tile, overlap=overlap, batch_size=batch_size,
                  progress=lambda done, total: reports.append((done, total)))
    assert len(calls) == math.ceil(n_tiles / batch_size)
    assert sum(calls) == n_tiles
    assert reports[-1] == (n_tiles, n_tiles)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_tile_starts_cover_and_align():
    for size, tile, step in [(100, 32, 24), (32, 32, 1), (33, 32, 31), (1000, 128, 96)]:
        starts = tile_starts(size, tile, step)
        assert starts[0] == 0 and starts[-1] == size - tile
        assert all(b - a <= step for a, b in zip(starts, starts[1:]))


def test_blend_windows_positive():
    for blend in BLENDS:
        for n in (1, 2, 7, 256):
            w = blend_window(n, blend)
            assert w.shape == (n,) and (w > 0).all() and np.isclose(w.max(), 1.0)
            np.testing.assert_allclose(w, w[::-1])  # symmetric


def test_large_image_runs():
    img = np.random.default_rng(5).random((1, 2000, 2000)).astype(np.float32)
    out = predict_tiled(identity, img, tile=(128, 128), batch_size=16)
    np.testing.assert_allclose(out, img, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image=np.zeros((5, 5), np.float32)),
        dict(image=np.zeros((1, 0, 5), np.float32)),
        dict(image=np.zeros((1, 5, 5), np.complex64)),
        dict(tile=(8,)),
        dict(tile=(0, 8)),
        dict(overlap=1.0),
        dict(overlap=-0.1),
        dict(batch_size=0),
        dict(blend="cubic"),
        dict(out_channels=2),
        dict(fn=lambda x: x[..., :-1]),
        dict(image=np.full((1, 9, 9), np.nan, np.float32)),
        dict(margin=8),
    ],
)
def test_bad_arguments_raise_cytogen_error(kwargs):
    args = dict(fn=identity, image=np.zeros((1, 40, 40), np.float32), tile=(16, 16))
    args.update(kwargs)
    fn, image = args.pop("fn"), args.pop("image")
    with pytest.raises(CytogenError):
        predict_tiled(fn, image, **args)


# ------------------------------------------------------------------ strip-wise accumulation
STRIP_CASES = [
    # (image shape, tile, size_multiple, overlap, margin, batch_size)
    ((2, 137, 91), (32, 32), 1, 0.25, 0, 3),
    ((1, 301, 45), (64, 16), 16, (5, 3), 2, 7),
    ((1, 17, 200), (64, 64), 16, 0.5, 1, 2),
    ((2, 29, 40, 37), (8, 16, 16), (1, 16, 16), 0.25, 1, 3),
    ((1, 5, 9, 11), (8, 8, 8), 4, 0.5, 0, 100),
]


@pytest.mark.parametrize("shape,tile,mult,overlap,margin,batch_size", STRIP_CASES)
def test_sink_blocks_are_ordered_cover_once_and_equal_the_array(shape, tile, mult, overlap,
                                                                margin, batch_size):
    img = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    kw = dict(tile=tile, overlap=overlap, size_multiple=mult, margin=margin,
              batch_size=batch_size)
    whole = predict_tiled(mean3, img, **kw)
    blocks = []
    assert predict_tiled(mean3, img, sink=lambda s, b: blocks.append((s, b.copy())), **kw) is None
    starts = [s for s, _ in blocks]
    ends = [s + b.shape[1] for s, b in blocks]
    assert starts[0] == 0 and ends[-1] == shape[1] and starts[1:] == ends[:-1]
    assert all(b.dtype == np.float32 and b.shape[0] == shape[0] and b.shape[2:] == shape[2:]
               for _, b in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks], axis=1), whole)
    # and the same result as before strips existed: seams vanish away from the border
    full = mean3(torch.from_numpy(img)[None])[0].numpy()
    if margin:
        inner = (slice(None),) + (slice(1, -1),) * (len(shape) - 1)
        np.testing.assert_allclose(whole[inner], full[inner], atol=1e-5)


class SyntheticImage:
    """A lazily computed (C, Y, X) image that records the rows each read asks for."""

    def __init__(self, shape):
        self.shape, self.dtype, self.reads = shape, np.dtype(np.float32), []

    def __getitem__(self, key):
        ys = key[1]
        self.reads.append((ys.start, ys.stop))
        y = np.arange(*ys.indices(self.shape[1]), dtype=np.float32)[:, None]
        xs = key[2] if len(key) > 2 else slice(None)
        x = np.arange(*xs.indices(self.shape[2]), dtype=np.float32)
        return np.broadcast_to(np.sin(y / 7.0) + np.cos(x / 5.0), (self.shape[0], *(y + x).shape))


def _peak_streaming(rows):
    import tracemalloc

    image = SyntheticImage((1, rows, 200))
    sums = []
    tracemalloc.start()
    predict_tiled(identity, image, tile=(64, 64), batch_size=8,
                  sink=lambda s, b: sums.append(float(b.sum())))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, image.reads, sum(sums)


def test_streaming_memory_does_not_grow_with_image_length():
    peak_short, _, _ = _peak_streaming(1500)
    peak_long, reads, total = _peak_streaming(12000)
    # 8x longer image: only the per-axis plan (weights, tile starts) grows, by far less than
    # one output row (800 bytes) per row; the band and batch stay the same
    assert (peak_long - peak_short) / (12000 - 1500) < 0.1 * 4 * 200
    assert peak_long < 4 * 12000 * 200 / 10  # far below one float32 copy of the output
    assert max(b - a for a, b in reads) <= 64  # input read one strip of tiles at a time
    y = np.arange(12000, dtype=np.float32)[:, None]
    expected = (np.sin(y / 7.0) + np.cos(np.arange(200, dtype=np.float32) / 5.0)).sum()
    assert total == pytest.approx(float(expected), rel=1e-5)


def test_zarr_input_and_transforms_on_tiles_and_blocks(tmp_path):
    import zarr

    img = np.random.default_rng(7).random((2, 90, 70)).astype(np.float32)
    before = img.copy()
    arr = zarr.open_array(tmp_path / "a.zarr", mode="w", shape=img.shape, dtype="f4",
                          chunks=(1, 32, 32))
    arr[...] = img
    seen = []

    def transform(t):
        seen.append(t.shape)
        t *= 2.0  # in place on purpose: the input must not change
        return t + 1.0

    out = predict_tiled(identity, arr, tile=(32, 32), transform=transform,
                        out_transform=lambda b: b - 1.0)
    np.testing.assert_allclose(out, 2.0 * img, atol=1e-5)
    assert set(seen) == {(2, 32, 32)}
    out = predict_tiled(identity, img, tile=(32, 32), transform=transform)
    np.testing.assert_allclose(out, 2.0 * img + 1.0, atol=1e-5)
    np.testing.assert_array_equal(img, before)


# ----------------------------------------------------------------------- OOM back-off
def _failing_above(limit, exc_factory):
    sizes = []

    def fn(x):
        sizes.append(x.shape[0])
        if x.shape[0] > limit:
            raise exc_factory()
        return affine_1x1(x)

    return fn, sizes


@pytest.mark.parametrize("exc_factory", [
    lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                         "can't allocate memory: you tried to allocate 123456789 bytes."),
    lambda: MemoryError(),
])
def test_oom_halves_the_batch_and_gives_the_same_result(exc_factory):
    img = np.random.default_rng(8).normal(size=(2, 75, 61)).astype(np.float32)
    ref = predict_tiled(affine_1x1, img, tile=(16, 16), batch_size=2)
    fn, sizes = _failing_above(2, exc_factory)
    with pytest.warns(RuntimeWarning, match="batch size 2") as record:
        out = predict_tiled(fn, img, tile=(16, 16), batch_size=5)
    np.testing.assert_array_equal(out, ref)
    assert sizes[0] == 5 and set(sizes[2:]) <= {1, 2} and sizes.count(5) == 1
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1


def test_padded_batches_have_the_batch_size_in_use_before_and_after_an_oom_back_off():
    """``pad_batches`` (used under --compile) pads short batches to the *current* batch size:
    after halving 8 -> 4 every call, the last partial one included, has 4 tiles, so the
    back-off can succeed instead of padding back to the 8 that failed."""
    img = np.random.default_rng(9).normal(size=(2, 75, 61)).astype(np.float32)
    ref = predict_tiled(affine_1x1, img, tile=(16, 16), batch_size=1)
    # 6 x 5 = 30 tiles (starts 0,12,..,48,59 and 0,12,24,36,45): batches of 4 leave 2 over
    fn, sizes = _failing_above(4, lambda: torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.warns(RuntimeWarning, match="batch size 4"):
        out = predict_tiled(fn, img, tile=(16, 16), batch_size=8, pad_batches=True)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)  # padding cropped off
    assert sizes == [8] + [4] * 8  # 7 full batches + the last 2 tiles padded to 4
    fn, sizes = _failing_above(99, lambda: MemoryError())
    np.testing.assert_allclose(
        predict_tiled(fn, img, tile=(16, 16), batch_size=7, pad_batches=True), ref,
        rtol=1e-5, atol=1e-5)
    assert sizes == [7] * 5  # 30 = 4 x 7 + 2, the last padded to 7
    fn, sizes = _failing_above(99, lambda: MemoryError())
    predict_tiled(fn, img, tile=(16, 16), batch_size=7)
    assert sizes == [7] * 4 + [2]  # without padding the last batch is short


def test_oom_at_batch_size_one_raises_tile_oom_error_and_other_errors_pass():
    from cytogen.predict.oom import TileOOMError

    img = np.zeros((1, 40, 40), np.float32)
    fn, _ = _failing_above(0, lambda: torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.warns(RuntimeWarning), pytest.raises(TileOOMError) as info:
        predict_tiled(fn, img, tile=(16, 16), batch_size=4)
    assert isinstance(info.value, CytogenError) and info.value.tile == (16, 16)
    assert "smaller tile" in str(info.value)
    boom = RuntimeError("shape mismatch in layer 3")

    def bad(x):
        raise boom

    with pytest.raises(RuntimeError) as info2:
        predict_tiled(bad, img, tile=(16, 16))
    assert info2.value is boom


def test_is_oom_error_and_smaller_tile_known_answers():
    from cytogen.predict.oom import is_oom_error, smaller_tile

    assert is_oom_error(torch.OutOfMemoryError("x"))
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_oom_error(RuntimeError("size mismatch"))
    assert not is_oom_error(ValueError("out of memory"))
    assert smaller_tile((256, 256), (1000, 1000), 16) == (128, 128)
    assert smaller_tile((512, 512), (300, 1000), 16) == (144, 256)  # 304 in use -> 152 -> 144
    assert smaller_tile((48, 48), (1000, 1000), 16) == (32, 32)
    assert smaller_tile((32, 32), (1000, 1000), 16) == (32, 32)  # cannot shrink further
    assert smaller_tile((128, 128), (1000, 1000), 64) == (64, 64)  # never below the multiple
    assert smaller_tile((8, 128, 128), (20, 500, 500), (1, 16, 16)) == (8, 64, 64)
