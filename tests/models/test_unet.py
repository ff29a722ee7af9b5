"""Tests for the model registry and the UNet generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cytogen.errors import CytogenError
from cytogen.models import UNet, build_model, list_models, model_arguments, register_model
from cytogen.models import registry


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("dims", [2, 3])
def test_build_by_name_preserves_shape(dims):
    model = build_model("unet", in_channels=2, out_channels=3, dims=dims, depth=2,
                        base_channels=8)
    assert isinstance(model, UNet)
    assert model.size_multiple == (4,) * dims
    x = torch.randn(2, 2, *(8,) * dims)
    assert model(x).shape == (2, 3, *(8,) * dims)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=0),
        dict(depth=1, kernel_size=5, norm="instance"),
        dict(depth=3, kernel_size=3, norm="group", upsample="nearest"),
        dict(depth=2, kernel_size=7, norm="none", activation="gelu", final_activation="tanh"),
        dict(depth=2, norm="batch", dropout=0.2, final_activation="sigmoid",
             channel_multiplier=3, max_channels=20),
        dict(depth=1, activation="leaky_relu", final_activation="gelu"),
    ],
)
@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_for_combinations(dims, kwargs):
    model = UNet(1, 2, dims=dims, base_channels=4, **kwargs)
    spatial = tuple(2 * m for m in model.size_multiple)
    y = model(torch.randn(2, 1, *spatial))
    assert y.shape == (2, 2, *spatial)
    assert torch.isfinite(y).all()
    fa = kwargs.get("final_activation")
    if fa == "sigmoid":
        assert (y >= 0).all() and (y <= 1).all()
    if fa == "tanh":
        assert (y.abs() <= 1).all()


def test_channel_widths_follow_multiplier_and_cap():
    model = UNet(dims=2, depth=3, base_channels=8, channel_multiplier=2, max_channels=24)
    assert model.bottleneck[0].out_channels == 24
    assert [e[0].out_channels for e in model.encoders] == [8, 16, 24]


def test_anisotropic_pooling_keeps_z():
    model = UNet(dims=3, depth=2, base_channels=4, pool_z=False)
    assert model.size_multiple == (1, 4, 4)
    x = torch.randn(1, 1, 3, 8, 12)
    assert model(x).shape == (1, 1, 3, 8, 12)
    with pytest.raises(ValueError):
        UNet(dims=2, pool_z=False)


def test_gradients_reach_first_conv():
    model = UNet(dims=2, depth=3, base_channels=4)
    model(torch.randn(2, 1, 16, 16)).square().mean().backward()
    first = model.encoders[0][0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_unknown_name_lists_available_models():
    with pytest.raises(CytogenError, match="unet"):
        build_model("no-such-model")
    assert "unet" in list_models()


def test_bad_kwarg_lists_accepted_arguments():
    with pytest.raises(CytogenError, match="base_channels"):
        build_model("unet", bas_channels=8)
    with pytest.raises(CytogenError, match="norm"):
        build_model("unet", norm="layer")
    with pytest.raises(CytogenError, match="dims"):
        build_model("unet", dims=4)
    assert model_arguments("unet")["depth"] == 4


@pytest.mark.parametrize(
    "kwargs",
    [dict(norm="layer"), dict(kernel_size=4), dict(dims=1), dict(depth=-1),
     dict(final_activation="relu"), dict(upsample="bilinear"), dict(activation="swish"),
     dict(base_channels=0), dict(dropout=1.0)],
)
def test_invalid_values_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        UNet(**kwargs)


def test_non_divisible_or_wrong_input_raises():
    model = UNet(dims=2, depth=2, base_channels=4)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 1, 16, 18))
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError):
        model(torch.randn(1, 16, 16))


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_matches_contiguous(dims):
    model = UNet(2, 2, dims=dims, depth=2, base_channels=8).eval()
    x = torch.randn(2, 2, *(8,) * dims)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=fmt))
        model.to(memory_format=fmt)
        out2 = model(x.to(memory_format=fmt))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out2, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_bf16_autocast_runs(upsample):
    model = UNet(dims=2, depth=2, base_channels=8, norm="group", upsample=upsample)
    x = torch.randn(2, 1, 16, 16).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().mean().backward()
    assert y.shape == (2, 1, 16, 16) and torch.isfinite(y.float()).all()
    ref = model(x)
    assert (y.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


def test_tiny_unet_overfits_small_batch():
    x = torch.randn(4, 1, 16, 16)
    mapping = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        y = torch.tanh(2 * mapping(x)) + 0.5 * x.roll(3, dims=-1)
    model = UNet(dims=2, depth=2, base_channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5


def test_register_custom_model_and_duplicate_name():
    @register_model("_test_identity")
    class Ident(nn.Module):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2):
            super().__init__()
            self.in_channels, self.out_channels, self.dims = in_channels, out_channels, dims
            self.size_multiple = (1,) * dims

        def forward(self, x):
            return x

    try:
        assert isinstance(build_model("_test_identity", dims=3), Ident)
        assert "_test_identity" in list_models()
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_identity")(nn.Identity)
    finally:
        registry.MODELS.unregister("_test_identity")
