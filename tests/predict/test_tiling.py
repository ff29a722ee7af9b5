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
