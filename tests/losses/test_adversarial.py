"""Tests for the adversarial losses, soft noisy labels, the R1 penalty and EMA."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from cytogen.errors import CytogenError
from cytogen.losses import EMA, adversarial_loss, r1_penalty, soft_noisy_labels


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- losses


def test_vanilla_known_answers():
    d_loss, g_loss = adversarial_loss("vanilla")
    zeros = torch.zeros(4, 1, 3, 3)
    assert d_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert g_loss(zeros).item() == pytest.approx(math.log(2))
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    expected = math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))
    assert d_loss(real, fake).item() == pytest.approx(expected)
    # Soft labels: BCE(0, y) = log 2 whatever y; BCE(x, 0.5) at x=2 is known.
    half = torch.full((1,), 0.5)
    assert d_loss(real, fake, half, half).item() == pytest.approx(
        0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2)))
        + 0.5 * (math.log(1 + math.exp(1)) + math.log(1 + math.exp(-1))))


def test_lsgan_known_answers():
    d_loss, g_loss = adversarial_loss("lsgan")
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert d_loss(ones, zeros).item() == 0.0
    assert g_loss(ones).item() == 0.0
    assert d_loss(zeros, ones).item() == pytest.approx(2.0)
    assert g_loss(torch.tensor([3.0, -1.0])).item() == pytest.approx((4 + 4) / 2)
    # Tensor labels are used per element.
    labels = torch.tensor([0.9, 1.1])
    assert d_loss(torch.ones(2), torch.zeros(2), labels, -labels).item() == pytest.approx(
        0.01 + (0.81 + 1.21) / 2)


def test_hinge_known_answers():
    d_loss, g_loss = adversarial_loss("hinge")
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2
    fake = torch.tensor([-3.0, 0.0])  # relu(1 + f) = 0, 1
    assert d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 0.5)
    assert d_loss(real, fake, 0.3, 0.7).item() == pytest.approx(2.5 / 3 + 0.5)  # ignored
    assert g_loss(fake).item() == pytest.approx(1.5)


def test_generator_loss_pushes_fake_logits_up():
    for kind in ("vanilla", "lsgan", "hinge"):
        _, g_loss = adversarial_loss(kind)
        fake = torch.tensor([-8.0, -0.5], requires_grad=True)
        g_loss(fake).backward()
        assert (fake.grad < 0).all(), kind
    # Non-saturating: a confidently rejected fake still gets a strong gradient.
    fake = torch.tensor([-10.0], requires_grad=True)
    adversarial_loss("vanilla").g_loss(fake).backward()
    assert fake.grad.item() == pytest.approx(-torch.sigmoid(torch.tensor(10.0)).item())


def test_label_shapes_and_unknown_kind():
    d_loss, _ = adversarial_loss("lsgan")
    logits = torch.zeros(2, 1, 3, 3)
    d_loss(logits, logits, torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="broadcast"):
        d_loss(logits, logits, torch.ones(4, 1, 3, 3))
    with pytest.raises(CytogenError, match="vanilla, lsgan, hinge"):
        adversarial_loss("wgan")


def test_bf16_logits_give_float32_losses():
    for kind in ("vanilla", "lsgan", "hinge"):
        d_loss, g_loss = adversarial_loss(kind)
        x = torch.randn(4, 1, dtype=torch.bfloat16)
        assert d_loss(x, x).dtype == g_loss(x).dtype == torch.float32


# ---------------------------------------------------------------- soft noisy labels


@pytest.mark.parametrize("step,magnitude", [(0, 0.10), (499, 0.10), (500, 0.08), (1000, 0.06),
                                            (2000, 0.02), (2499, 0.02), (2500, 0.0),
                                            (10_000, 0.0)])
def test_soft_noisy_labels_schedule(step, magnitude):
    shape = (4, 1, 8, 8)
    real, fake = soft_noisy_labels(step, shape, generator=torch.Generator().manual_seed(5))
    assert real.shape == fake.shape == shape
    if magnitude == 0:
        assert (real == 1).all() and (fake == 0).all()
        return
    # The paper's formula with the same draws: 1 - a N(0,1) and 0 + a N(0,1).
    g = torch.Generator().manual_seed(5)
    noise_real, noise_fake = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    torch.testing.assert_close(real, 1 - magnitude * noise_real)
    torch.testing.assert_close(fake, magnitude * noise_fake)


def test_soft_noisy_labels_uniform_and_statistics():
    shape = (20_000,)
    real, fake = soft_noisy_labels(600, shape, noise="uniform",
                                   generator=torch.Generator().manual_seed(0))
    assert real.max() <= 1 and real.min() >= 0.92 and fake.min() >= 0 and fake.max() <= 0.08
    assert real.min() < 0.921 and fake.max() > 0.079  # spans the full [0, a] range
    real, fake = soft_noisy_labels(0, shape, generator=torch.Generator().manual_seed(0))
    assert real.mean().item() == pytest.approx(1.0, abs=0.005)
    assert fake.std().item() == pytest.approx(0.10, rel=0.03)
    with pytest.raises(CytogenError, match="noise"):
        soft_noisy_labels(0, shape, noise="laplace")


# ---------------------------------------------------------------- R1


def test_r1_equals_weight_norm_for_linear_discriminator():
    w = torch.randn(1, 2, 5, 5, requires_grad=True)

    def d(x):
        return (w * x).sum(dim=(1, 2, 3))

    x = torch.randn(3, 2, 5, 5).requires_grad_(True)
    penalty = r1_penalty(d(x), x)
    assert penalty.item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    # Differentiable w.r.t. the discriminator: d||w||^2/dw = 2w.
    penalty.backward()
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_r1_with_patch_logits_and_several_inputs():
    conv = nn.Conv2d(2, 1, 3, bias=False)
    src = torch.randn(2, 1, 6, 6).requires_grad_(True)
    tgt = torch.randn(2, 1, 6, 6).requires_grad_(True)
    out = conv(torch.cat([src, tgt], 1))
    gs, gt = torch.autograd.grad(out.sum(), [src, tgt], retain_graph=True)
    expected = (gs.square().sum() + gt.square().sum()) / 2
    assert r1_penalty(out, [src, tgt]).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(out, torch.randn(2, 1, 6, 6))


# ---------------------------------------------------------------- EMA


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def test_ema_one_update_and_copy_to():
    net = _net()
    ema = EMA(net, decay=0.9)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    old = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net.train()(torch.randn(8, 3))  # moves the batch-norm running statistics
    ema.update(net)
    new = net.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * old[k] + 0.1 * new[k])
        else:  # num_batches_tracked is copied
            assert torch.equal(v, new[k])
    target = _net()
    ema.copy_to(target)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_ema_warmup_and_state_round_trip():
    net = _net()
    ema = EMA(net, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    old = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    ema.update(net)  # decay 0.1: mostly the new weights
    torch.testing.assert_close(ema.module[0].weight, 0.1 * old + 0.9)
    assert ema.num_updates == 1 and ema.current_decay() == pytest.approx(2 / 11)
    state = ema.state_dict()
    other = EMA(_net(), decay=0.5)
    other.load_state_dict(state)
    assert other.decay == 0.999 and other.warmup and other.num_updates == 1
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
    with pytest.raises(ValueError, match="same architecture"):
        ema.update(nn.Linear(3, 1))


# ---------------------------------------------------------------- toy adversarial game


@pytest.mark.parametrize("kind", ["vanilla", "lsgan", "hinge"])
def test_toy_generator_moves_to_data_mean(kind):
    """A shift generator z + b against a tiny MLP discriminator learns b ~ data mean (3)."""
    g = torch.Generator().manual_seed(0)
    shift = nn.Parameter(torch.zeros(1))
    disc = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam([shift], lr=2e-2, betas=(0.5, 0.999))
    d_loss, g_loss = adversarial_loss(kind)
    history = []
    for _ in range(300):
        real = 3.0 + 0.5 * torch.randn(64, 1, generator=g)
        fake = 0.5 * torch.randn(64, 1, generator=g) + shift
        opt_d.zero_grad()
        d_loss(disc(real), disc(fake.detach())).backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss(disc(fake)).backward()
        opt_g.step()
        history.append(shift.item())
    assert abs(statistics.mean(history[-50:]) - 3.0) < 0.5
