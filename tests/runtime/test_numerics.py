"""The fast path (channels-last, bf16 autocast, fused AdamW, torch.compile) against float32.

Stated tolerances: channels-last float32 matches NCHW float32 to 1e-5 (relative); bf16
autocast (8-bit mantissa) matches to 3 % relative L2 on outputs and keeps the loss curve of a
short training run within 5 % of float32's.
"""

from __future__ import annotations

import pytest
import torch

from cytogen.models import build_model
from cytogen.runtime import resolve_runtime
from cytogen.runtime.inference import inference_fn
from cytogen.runtime.settings import _cpu_bf16_ok


def _net(dims: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", in_channels=1, out_channels=2, dims=dims, depth=2, base_channels=8)


def _x(dims: int = 2, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand((n, 1) + (8,) * (dims - 2) + (32, 32), generator=g) if dims == 3 \
        else torch.rand(n, 1, 32, 32, generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_inference_matches_float32(dims) -> None:
    ref_net, x = _net(dims).eval(), _x(dims)
    with torch.no_grad():
        ref = ref_net(x)
    fn = inference_fn(_net(dims), dims, resolve_runtime("32", accelerator="cpu"))
    with torch.inference_mode():
        out = fn(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel(out, ref) < 1e-5


@pytest.mark.skipif(not _cpu_bf16_ok(), reason="this CPU has no bf16 support")
def test_bf16_autocast_inference_within_tolerance() -> None:
    ref_net, x = _net().eval(), _x()
    with torch.no_grad():
        ref = ref_net(x)
    fn = inference_fn(_net(), 2, resolve_runtime("bf16-mixed", accelerator="cpu"))
    with torch.inference_mode():
        out = fn(x)
    err = _rel(out, ref)
    assert out.dtype == torch.float32
    assert 0 < err < 0.03  # really computed in bf16 (not exact), and close


def _train(fmt: torch.memory_format | None, dtype: torch.dtype | None, fused: bool) -> list[float]:
    net = _net().train()
    if fmt is not None:
        net = net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, fused=fused or None)
    g = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(12):
        x = torch.rand(4, 1, 32, 32, generator=g)
        y = torch.cat([x.roll(1, -1), 1 - x], 1)
        if fmt is not None:
            x, y = x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = (net(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def test_fast_training_steps_follow_float32() -> None:
    ref = _train(None, None, False)
    cl = _train(torch.channels_last, None, True)
    assert ref[-1] < 0.8 * ref[0]  # it learns
    assert max(abs(a - b) / b for a, b in zip(cl, ref)) < 1e-3
    if _cpu_bf16_ok():
        bf = _train(torch.channels_last, torch.bfloat16, True)
        assert max(abs(a - b) / b for a, b in zip(bf, ref)) < 0.05


def test_compiled_inference_matches_eager() -> None:
    ref_net, x = _net().eval(), _x(n=3)
    with torch.no_grad():
        ref = ref_net(x)
    fn = inference_fn(_net(), 2, resolve_runtime("32", compile=True, accelerator="cpu"))
    with torch.inference_mode():
        out = fn(x)  # partial batches are padded by predict_tiled(pad_batches=True), not here
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-4
