"""Tests for the chained U-Net, R2U-Net and TFill-Coarse generators (small widths, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cytogen.errors import CytogenError
from cytogen.models import build_model, list_models
from cytogen.models.chain import UNetChain
from cytogen.models.r2unet import R2UNet, RecurrentConv, RecurrentResidualBlock
from cytogen.models.tfill import PixelNorm, TFillCoarse

TINY = {
    "unet_chain": dict(stages=3, depth=2, base_channels=4),
    "r2unet": dict(depth=2, base_channels=4, t=2),
    "tfill_coarse": dict(base_channels=4, max_channels=16, n_down=2, embed_dim=16,
                         n_blocks=2, n_heads=2, ref_size=16),
}
CLASSES = {"unet_chain": UNetChain, "r2unet": R2UNet, "tfill_coarse": TFillCoarse}
SIZES = {2: [(8, 8), (12, 16), (16, 8)], 3: [(4, 8, 8), (8, 4, 12)]}


pytestmark = pytest.mark.usefixtures("seeded", "one_thread")  # see tests/conftest.py


def _first_conv(model: nn.Module) -> nn.Module:
    if isinstance(model, UNetChain):
        return model.stages[0].encoders[0][0]
    if isinstance(model, R2UNet):
        return model.encoders[0].project
    return model.stem[0]


def _cases():
    for name in TINY:
        for dims in (2, 3):
            if name == "tfill_coarse" and dims == 3:
                continue
            yield name, dims


@pytest.mark.parametrize("name,dims", list(_cases()))
def test_build_by_name_keeps_shapes_and_gradients_reach_first_layer(name, dims):
    model = build_model(name, in_channels=2, out_channels=3, dims=dims, **TINY[name])
    assert isinstance(model, CLASSES[name]) and name in list_models()
    assert model.size_multiple == (4,) * dims
    for spatial in SIZES[dims]:
        y = model(torch.randn(2, 2, *spatial))
        assert y.shape == (2, 3, *spatial) and torch.isfinite(y).all()
    model.zero_grad()
    model(torch.randn(2, 2, *SIZES[dims][1])).square().mean().backward()
    first = _first_conv(model)
    assert isinstance(first, nn.Conv2d if dims == 2 else nn.Conv3d)
    assert first.in_channels == 2
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(TINY))
def test_wrong_inputs_raise_clear_errors(name):
    model = build_model(name, **TINY[name])
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 1, 8, 10))
    with pytest.raises(ValueError):
        model(torch.randn(1, 8, 8))


@pytest.mark.parametrize(
    "name,kwargs",
    [("unet_chain", dict(stages=0)), ("unet_chain", dict(stage_activation="relu")),
     ("unet_chain", dict(stage_activation=["tanh", "gelu"])), ("unet_chain", dict(dims=4)),
     ("r2unet", dict(t=-1)), ("r2unet", dict(kernel_size=4)), ("r2unet", dict(norm="layer")),
     ("r2unet", dict(final_activation="relu")), ("tfill_coarse", dict(dims=3)),
     ("tfill_coarse", dict(embed_dim=30, n_heads=4)), ("tfill_coarse", dict(ref_size=100)),
     ("tfill_coarse", dict(n_down=0))],
)
def test_invalid_arguments_raise_cytogen_error(name, kwargs):
    with pytest.raises(CytogenError, match="bad arguments"):
        build_model(name, **kwargs)


def test_tfill_3d_error_names_alternatives():
    with pytest.raises(CytogenError, match="2D only"):
        build_model("tfill_coarse", dims=3)


# ---------------------------------------------------------------- UNetChain


def test_chain_stage_inputs_grow_by_out_channels():
    model = UNetChain(5, 2, stages=3, depth=1, base_channels=4)
    assert len(model.stages) == 3
    for k, stage in enumerate(model.stages, start=1):
        assert stage.in_channels == 5 + (k - 1) * 2
        assert stage.encoders[0][0].in_channels == 5 + (k - 1) * 2
        assert stage.head.out_channels == 2


def test_chain_forward_is_last_of_forward_all_and_stage_activations():
    model = UNetChain(1, 1, dims=2, stages=3, depth=2, base_channels=4,
                      stage_activation=["tanh", "gelu", "tanh"]).eval()
    assert [type(s.final_activation) for s in model.stages] == [nn.Tanh, nn.GELU, nn.Tanh]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        outputs = model.forward_all(x)
        y = model(x)
    assert len(outputs) == 3
    torch.testing.assert_close(y, outputs[-1], rtol=0, atol=0)
    # Stage 2 sees the input and stage 1's output: changing stage 1 changes stage 2.
    with torch.no_grad():
        model.stages[0].head.bias += 1.0
        assert not torch.allclose(model.forward_all(x)[1], outputs[1])


def test_chain_tanh_bounds_every_stage():
    model = UNetChain(1, 1, stages=2, depth=1, base_channels=4, stage_activation="tanh")
    with torch.no_grad():
        model.stages[0].head.weight.mul_(100)
        model.stages[1].head.weight.mul_(100)
        outputs = model.forward_all(100 * torch.randn(2, 1, 8, 8))
    for out in outputs:
        assert out.abs().max() <= 1.0
        assert out.abs().max() > 0.9  # saturated, so the bound is really tested


# ---------------------------------------------------------------- R2U-Net


def test_r2unet_parameter_count_independent_of_t():
    counts = {t: sum(p.numel() for p in R2UNet(dims=2, depth=2, base_channels=4, t=t)
                     .parameters()) for t in (0, 1, 3)}
    assert len(set(counts.values())) == 1
    # and the weights are interchangeable: a t=3 state dict loads into a t=0 model
    R2UNet(depth=2, base_channels=4, t=0).load_state_dict(
        R2UNet(depth=2, base_channels=4, t=3).state_dict())


def test_recurrent_conv_unrolls_with_shared_unit_and_t0_degenerates():
    layer = RecurrentConv(3, dims=2, t=2, norm="group").eval()
    x = torch.randn(2, 3, 6, 6)
    f = layer.unit
    with torch.no_grad():
        expected = f(x + f(x + f(x)))
        torch.testing.assert_close(layer(x), expected)
        layer.t = 0
        torch.testing.assert_close(layer(x), f(x))


def test_rrcu_t0_is_projection_plus_two_conv_units():
    block = RecurrentResidualBlock(2, 4, dims=3, t=0, norm="instance").eval()
    x = torch.randn(1, 2, 4, 4, 4)
    with torch.no_grad():
        p = block.project(x)
        expected = p + block.recurrent[1].unit(block.recurrent[0].unit(p))
        torch.testing.assert_close(block(x), expected)
        for layer in block.recurrent:
            layer.t = 2
        assert not torch.allclose(block(x), expected)


# ---------------------------------------------------------------- TFill-Coarse


def test_pixel_norm_gives_unit_rms_per_pixel():
    x = torch.randn(2, 5, 3, 3) * 7
    rms = PixelNorm()(x).square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))


def test_tfill_predicts_at_sizes_it_was_not_built_for():
    model = TFillCoarse(1, 1, base_channels=4, max_channels=16, n_down=2, embed_dim=16,
                        n_blocks=1, n_heads=2, ref_size=64)
    assert model.pos_embed.shape == (1, 16, 16, 16)
    for size in [(96, 96), (160, 128)]:
        model.zero_grad()
        y = model(torch.randn(1, 1, *size))
        assert y.shape == (1, 1, *size) and torch.isfinite(y).all()
        y.mean().backward()
        assert model.pos_embed.shape == (1, 16, 16, 16)  # parameter stays on the ref grid
        assert model.pos_embed.grad.abs().sum() > 0  # ... and is used via interpolation
    grid = (40, 32)
    pos = model.position_embedding(grid)
    assert pos.shape == (1, 16, *grid)
    expected = F.interpolate(model.pos_embed, size=grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(pos, expected)
    assert model.position_embedding((16, 16)) is model.pos_embed


def test_tfill_multi_resolution_heads_sum_and_final_activation():
    model = TFillCoarse(1, 2, n_down=3, base_channels=4, max_channels=8, embed_dim=8,
                        n_blocks=1, n_heads=1, ref_size=32, final_activation="tanh")
    assert len(model.heads) == 3 and len(model.decoder) == 3
    assert [h.in_channels for h in model.heads] == [8, 8, 4]
    with torch.no_grad():
        y = model(50 * torch.randn(1, 1, 32, 32))
    assert y.abs().max() <= 1.0


# ---------------------------------------------------------------- all generators


@pytest.mark.parametrize("name", list(TINY))
def test_channels_last_matches_contiguous(name):
    model = build_model(name, in_channels=2, out_channels=2, dims=2, **TINY[name]).eval()
    x = torch.randn(2, 2, 16, 12)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.channels_last)
        out2 = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out2, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_generator_overfits_one_batch(name):
    # A smooth, shifted, non-linear target: TFill has no full-resolution skip path, so
    # pixel-level white-noise detail takes hundreds of steps; cell images are smooth.
    x = torch.randn(4, 1, 16, 16)
    mapping = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        s = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="bilinear",
                          align_corners=False)
        y = 0.8 * torch.tanh(3 * mapping(s) + s.roll(3, dims=-1))
    model = build_model(name, dims=2, **TINY[name])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])
