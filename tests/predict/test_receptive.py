"""Effective receptive field, auto tiling from it and a memory budget, and the seam error that
follows on a trained model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from cytogen.errors import CytogenError
from cytogen.models import build_model
from cytogen.predict.receptive import (ERF, activation_bytes_per_pixel, auto_tiling,
                                       margin_from_erf, measure_erf, theoretical_radius)
from cytogen.predict.tiling import balanced_tile, predict_tiled, redundancy

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvStack(nn.Sequential):
    """``n`` same-padded k x k convs with positive weights (a generator: size_multiple 1)."""

    def __init__(self, n: int, k: int, dims: int = 2) -> None:
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        super().__init__(*(conv(1, 1, k, padding=k // 2) for _ in range(n)))
        for c in self:
            nn.init.constant_(c.weight, 1.0)
        self.in_channels, self.out_channels, self.dims, self.size_multiple = 1, 1, dims, 1


def test_single_conv_has_radius_half_the_kernel_exactly():
    for k in (3, 5, 7):
        erf = measure_erf(ConvStack(1, k), 2, shape=(32, 32))
        assert erf.radius == ((k - 1) // 2,) * 2  # a flat kernel: the tail is 1/k of the mass
        assert erf.theoretical == ((k - 1) // 2,) * 2
    erf3 = measure_erf(ConvStack(1, 5, dims=3), 3, shape=(12, 16, 16))
    assert erf3.radius == (2, 2, 2) and erf3.theoretical == (2, 2, 2)


def test_conv_stack_erf_is_within_the_theoretical_bound_and_grows_with_depth():
    radii = []
    for n in (1, 2, 4, 8):
        erf = measure_erf(ConvStack(n, 3), 2, shape=(48, 48))
        assert erf.theoretical == (n, n)  # n (k - 1) / 2
        assert all(r <= t for r, t in zip(erf.radius, erf.theoretical))
        radii.append(erf.radius[0])
    assert radii == sorted(radii) and radii[-1] > radii[0]
    # the ERF of a deep stack is narrower than its support (Gaussian-like, not flat)
    assert radii[-1] < 8
    # a smaller mass fraction gives a smaller radius
    assert measure_erf(ConvStack(8, 3), 2, shape=(48, 48), fraction=0.9).radius[0] < radii[-1]


def test_unet_theoretical_radius_known_answer():
    # depth 1, k 3, transposed up-convs: encoder 2 convs (diameter 2 + 2), pool (1),
    # bottleneck 2 convs at spacing 2 (4 + 4), up (0), decoder 2 convs (2 + 2), head (0): 17
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=1, base_channels=4)
    assert theoretical_radius(net, 2) == (9, 9)  # ceil(17 / 2)
    deeper = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=3, base_channels=4)
    assert theoretical_radius(deeper, 2)[0] > 9
    inorm = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=1, base_channels=4,
                        norm="instance")
    assert theoretical_radius(inorm, 2) is None  # instance norm sees the whole tile


def test_margin_overlap_align_to_the_size_multiple():
    erf = ERF((11, 3), 0.999, (64, 64), None, 0.0)
    margin, overlap = margin_from_erf(erf, (16, 1))
    assert overlap == (32, 6) and margin == (16, 3)


def test_memory_budget_sets_the_tile():
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=8)
    bpp, method = activation_bytes_per_pixel(net, 2)
    assert method == "sum of module outputs" and bpp > 4 * 8 * 4  # > a few 8-channel maps
    erf = ERF((5, 5), 0.999, (64, 64), (20, 20), 0.0)
    small = auto_tiling(net, 2, budget_bytes=int(bpp * 128 * 128), erf=erf,
                        image_shape=(1000, 1000), bytes_per_pixel=(bpp, method))
    large = auto_tiling(net, 2, budget_bytes=int(bpp * 512 * 512), erf=erf,
                        image_shape=(1000, 1000), bytes_per_pixel=(bpp, method))
    for plan in (small, large):
        assert all(t % 4 == 0 for t in plan.tile)  # size_multiple 4
        assert bpp * math.prod(plan.tile) <= plan.budget_bytes
        assert plan.overlap == (12, 12) and plan.margin == (6, 6)
    assert math.prod(small.tile) < math.prod(large.tile)
    assert max(small.tile) <= 132 and max(large.tile) >= 500
    # an image smaller than the budget's tile: the tile is the image (rounded up), more per batch
    tiny = auto_tiling(net, 2, budget_bytes=int(bpp * 512 * 512), erf=erf, image_shape=(90, 90),
                       bytes_per_pixel=(bpp, method))
    assert tiny.tile == (92, 92) and tiny.batch_size > 1
    with pytest.raises(CytogenError, match="memory budget must be positive"):
        auto_tiling(net, 2, budget_bytes=0, erf=erf, bytes_per_pixel=(bpp, method))


def test_balanced_tile_and_redundancy_known_answers():
    # 2048 px, tile 816, overlap 32: 3 tiles are needed; 704 px each cover 2048 with 32 overlap
    assert balanced_tile(2048, 816, 32, 16) == 704
    assert balanced_tile(500, 512, 32, 16) == 512  # one tile: unchanged
    # 256 tiles with 25 % overlap on 2048: step 192 -> 11 tiles per axis
    assert redundancy((2048, 2048), 256, 0.25) == pytest.approx((11 * 256 / 2048) ** 2)
    assert redundancy((2048, 2048), 704, (32, 32), 16, 16, balance=True) == \
        pytest.approx((3 * 704 / 2048) ** 2)
    assert redundancy((2048, 2048), 816, (32, 32), 16, 16) == pytest.approx((3 * 816 / 2048) ** 2)


def test_local_model_tiled_with_its_full_receptive_field_is_exact():
    net = ConvStack(3, 5).eval()  # theoretical radius 6
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 70, 90)).astype(np.float32)
    with torch.inference_mode():
        whole = net(torch.from_numpy(image)[None])[0].numpy()
    for balance in (False, True):
        got = predict_tiled(net, image, tile=(32, 32), overlap=(12, 12), margin=6,
                            balance=balance)
        np.testing.assert_allclose(got, whole, atol=1e-4 * np.ptp(whole))
    cut = predict_tiled(net, image, tile=(32, 32), overlap=(2, 2), margin=1)
    assert np.abs(cut - whole).max() > 1e-2 * np.ptp(whole)  # too small a margin shows seams


@pytest.fixture(scope="module")
def trained():
    """A depth-2 U-Net trained 30 steps to map smooth noise to its blur (needs context)."""
    rng = np.random.default_rng(0)
    src = gaussian_filter(rng.normal(size=(256, 256)), 2.0)
    src = ((src - src.mean()) / src.std()).astype(np.float32)
    tgt = gaussian_filter(src, 4.0)
    tgt = ((tgt - tgt.mean()) / tgt.std()).astype(np.float32)
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    p = 48
    for step in range(30):
        ys = rng.integers(0, 256 - p, 4)
        xs = rng.integers(0, 256 - p, 4)
        x = torch.from_numpy(np.stack([src[None, y:y + p, x_:x_ + p] for y, x_ in zip(ys, xs)]))
        t = torch.from_numpy(np.stack([tgt[None, y:y + p, x_:x_ + p] for y, x_ in zip(ys, xs)]))
        loss = torch.nn.functional.l1_loss(net(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    image = src[None, :192, :192].copy()
    with torch.inference_mode():
        whole = net(torch.from_numpy(image)[None])[0].numpy()
    return net, image, whole, float(loss.detach())


def test_auto_plan_of_a_trained_model_has_seams_below_tolerance(trained):
    net, image, whole, loss = trained
    assert loss < 0.5  # it learnt the blur (an untrained net's L1 is about 0.8)
    erf = measure_erf(net, 2, x=image[:, 32:160, 32:160])  # the real input, as in prediction
    assert erf.radius[0] < erf.theoretical[0]
    margin, overlap = margin_from_erf(erf, net.size_multiple)
    # a small budget forces several seams per axis on this 192 x 192 image
    bpp = activation_bytes_per_pixel(net, 2)
    plan = auto_tiling(net, 2, budget_bytes=int(bpp[0] * 80 * 80), erf=erf,
                       image_shape=image.shape[1:], bytes_per_pixel=bpp)
    assert plan.margin == margin and plan.overlap == overlap
    n_tiles = [len(range(0, 192 - t, t - o)) + 1 for t, o in zip(plan.tile, plan.overlap)]
    assert min(n_tiles) >= 3
    tol = 1e-3 * float(np.ptp(whole))  # the stated tolerance: 0.1 % of the output range
    auto = predict_tiled(net, image, tile=plan.tile, overlap=plan.overlap, margin=plan.margin,
                         size_multiple=net.size_multiple, balance=True)
    err_auto = float(np.abs(auto - whole).max())
    assert err_auto < tol, (err_auto, tol, plan)
    # the same tiles without the margin (the tiles meet edge to edge): visibly larger seams
    bare = predict_tiled(net, image, tile=plan.tile, overlap=(0, 0), margin=0,
                         size_multiple=net.size_multiple)
    err_bare = float(np.abs(bare - whole).max())
    assert err_bare > 10 * max(err_auto, 1e-6) and err_bare > tol
