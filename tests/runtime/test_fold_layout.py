"""BatchNorm folding (same output, fewer layers) and the measured NCHW / channels-last choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cytogen.models import build_model
from cytogen.runtime import resolve_runtime
from cytogen.runtime.fold import fold_batchnorm
from cytogen.runtime.inference import inference_fn
from cytogen.runtime.layout import choose_layout, probe_example
from cytogen.runtime.probe import CHANNELS_LAST_MIN_SPEEDUP, layout_probe


def _unet(dims: int = 2, norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=2, dims=dims, depth=2, base_channels=8, norm=norm)
    g = torch.Generator().manual_seed(3)
    for m in net.modules():  # trained-looking statistics, so folding has something to do
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 2 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return net


def _x(dims: int) -> torch.Tensor:
    shape = (2, 1, 16, 32, 32) if dims == 3 else (2, 1, 64, 64)
    return torch.rand(shape, generator=torch.Generator().manual_seed(1))


def _count(net: nn.Module, kind: tuple[type, ...]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


@pytest.mark.parametrize("dims", [2, 3])
def test_folded_network_gives_the_same_output_without_batchnorm(dims) -> None:
    net, x = _unet(dims).eval(), _x(dims)
    bn = (nn.BatchNorm2d, nn.BatchNorm3d)
    n_bn = _count(net, bn)
    with torch.no_grad():
        ref = net(x)
    folded, count = fold_batchnorm(net)
    with torch.no_grad():
        out = folded(x)
    assert count == n_bn > 0 and _count(folded, bn) == 0
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert _count(net, bn) == n_bn  # the original is untouched


def test_folding_leaves_other_norms_and_training_mode_alone() -> None:
    net = _unet(2, norm="instance").train()
    folded, count = fold_batchnorm(net)
    assert count == 0 and net.training and not folded.training
    x = _x(2)
    with torch.no_grad():
        assert torch.allclose(folded(x), net.eval()(x))


def test_fast_inference_folds_and_no_fast_does_not() -> None:
    x = _x(2)
    with torch.no_grad():
        ref = _unet().eval()(x)
    fast = resolve_runtime("32", accelerator="cpu")
    fn = inference_fn(_unet(), 2, fast)
    slow = resolve_runtime("32", fast=False, accelerator="cpu")
    plain_net = _unet()
    fn_slow = inference_fn(plain_net, 2, slow)
    with torch.inference_mode():
        out, out_slow = fn(x), fn_slow(x)
    assert fast.probe["batchnorm_folded"] == _count(_unet(), (nn.BatchNorm2d,)) > 0
    assert "layout_predict" in fast.probe
    assert "batchnorm_folded" not in slow.probe and "layout_predict" not in slow.probe
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert torch.equal(out_slow, ref)  # --no-fast: the plain network, bit for bit


class _Probe:
    def __init__(self, speedup: float) -> None:
        self.speedup, self.calls = speedup, 0

    def __call__(self, net, example, *, autocast):
        self.calls += 1
        self.example = example
        return {"nchw_s": self.speedup, "channels_last_s": 1.0, "channels_last_speedup": self.speedup,
                "train": False}


@pytest.mark.parametrize("speedup,chosen", [(1.5, True), (CHANNELS_LAST_MIN_SPEEDUP, True),
                                            (1.01, False), (0.8, False)])
def test_layout_follows_the_measurement(speedup, chosen) -> None:
    s, probe = resolve_runtime("32", accelerator="cpu"), _Probe(speedup)
    assert s.channels_last  # the fast path starts with channels-last on
    assert choose_layout(s, _unet(), 2, probe=probe) is chosen
    assert s.channels_last is chosen and (s.memory_format(2) is not None) is chosen
    assert s.probe["layout_predict"]["channels_last"] is chosen
    assert s.notes[-1].startswith("layout (prediction): " + ("channels-last" if chosen else "NCHW"))
    assert tuple(probe.example.shape) == (1, 1, 256, 256)


def test_layout_is_decided_once_and_not_without_the_fast_path() -> None:
    s, probe = resolve_runtime("32", accelerator="cpu"), _Probe(0.5)
    assert choose_layout(s, _unet(), 2, probe=probe) is False
    s.channels_last = True  # even if a caller turns it back on, the measured decision stands
    assert choose_layout(s, _unet(), 2, probe=probe) is False
    assert probe.calls == 1 and s.probe["layout_predict"]["measured"]
    slow, probe = resolve_runtime("32", fast=False, accelerator="cpu"), _Probe(2.0)
    assert choose_layout(slow, _unet(), 2, probe=probe) is False and probe.calls == 0


def test_probe_example_rounds_up_to_the_size_multiple() -> None:
    net = _unet()  # depth 2: multiple 4
    assert tuple(probe_example(net, 2, batch=3, spatial=(30, 61)).shape) == (3, 1, 32, 64)
    assert probe_example(nn.Sequential(nn.Conv2d(1, 1, 3)), 2) is None  # says no input channels


def test_layout_probe_changes_nothing_it_measures() -> None:
    net = _unet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(11)
    state = torch.get_rng_state()
    figures = layout_probe(net, probe_example(net, 2, batch=2, spatial=(32, 32)), train=True)
    assert figures["nchw_s"] > 0 and figures["channels_last_s"] > 0 and figures["train"]
    assert figures["channels_last_speedup"] == pytest.approx(figures["nchw_s"] / figures["channels_last_s"], rel=0.01)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("speedup,fmt", [(0.5, torch.contiguous_format), (2.0, torch.channels_last)])
def test_inference_runs_in_the_layout_the_probe_chose(speedup, fmt, monkeypatch) -> None:
    seen = []

    def probe(net, example, *, autocast):
        return {"nchw_s": speedup, "channels_last_s": 1.0, "channels_last_speedup": speedup, "train": False}

    monkeypatch.setattr("cytogen.runtime.layout.layout_probe", probe)
    net = _unet()
    # the second conv sees 8 channels (with 1 channel both layouts are the same memory)
    net.encoders[0][3].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    s = resolve_runtime("32", accelerator="cpu")
    fn = inference_fn(net, 2, s)
    x = _x(2)
    with torch.inference_mode():
        out = fn(x)
    with torch.no_grad():
        ref = _unet().eval()(x)
    other = torch.channels_last if fmt == torch.contiguous_format else torch.contiguous_format
    assert s.channels_last is (speedup > 1) and seen and seen[-1].shape[1] == 8
    assert seen[-1].is_contiguous(memory_format=fmt) and not seen[-1].is_contiguous(memory_format=other)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
