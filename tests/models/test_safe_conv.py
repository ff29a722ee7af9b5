"""The 3D convolution that trains thin-in-z inputs in float32 under CPU bf16 autocast."""

from __future__ import annotations

import torch
from torch import nn

from cytogen.models import build_model
from cytogen.models.blocks import conv_nd
from cytogen.models.safe_conv import Conv3d


def _out_dtype(conv: nn.Module, depth: int, grad: bool = True) -> torch.dtype:
    x = torch.randn(2, 8, depth, 16, 16)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        return conv(x).dtype


def test_thin_inputs_train_in_float32_and_the_rest_in_bf16():
    conv = Conv3d(8, 16, 3, padding=1, bias=False)
    assert _out_dtype(conv, 2) == torch.float32  # z = 2 < kernel 3: the faulty case
    assert _out_dtype(conv, 1) == torch.float32
    assert _out_dtype(conv, 3) == torch.bfloat16  # z >= kernel: bf16 as usual
    assert _out_dtype(conv, 2, grad=False) == torch.bfloat16  # inference keeps bf16
    conv.weight.requires_grad_(False)
    assert _out_dtype(conv, 2) == torch.bfloat16  # frozen weights: no weight gradient to protect
    with torch.no_grad():
        x = torch.randn(1, 8, 2, 6, 6)
        assert torch.equal(conv(x), nn.functional.conv3d(x, conv.weight, padding=1))  # float32 outside autocast


def test_weight_gradients_of_thin_inputs_stay_finite_under_bf16():
    torch.manual_seed(0)
    conv = Conv3d(8, 16, 3, padding=1, bias=False)
    for _ in range(50):  # plain nn.Conv3d gave NaN in most of these on an AMD EPYC (avx512_bf16)
        conv.zero_grad()
        x = torch.randn(2, 8, 2, 16, 16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().square().mean().backward()
        assert torch.isfinite(conv.weight.grad).all()


def test_3d_models_use_it_and_keep_the_plain_state_dict():
    assert conv_nd(3) is Conv3d and conv_nd(2) is nn.Conv2d
    unet = build_model("unet", in_channels=1, out_channels=1, dims=3, depth=2, base_channels=4)
    assert any(isinstance(m, Conv3d) for m in unet.modules())
    plain = nn.Conv3d(8, 16, 3)
    Conv3d(8, 16, 3).load_state_dict(plain.state_dict())  # same keys and shapes
