"""Tests for the adversarial losses, soft noisy labels, the R1 penalty and EMA."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from cytogen.errors import CytogenError
from cytogen.losses import EMA, adversarial_loss, check_soft_labels, r1_penalty, soft_noisy_labels


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
    # Hard labels (what a task passes without soft labels) are accepted, as floats or tensors.
    assert d_loss(real, fake, 1.0, 0.0).item() == pytest.approx(2.5 / 3 + 0.5)
    assert d_loss(real, fake, torch.ones(3), torch.zeros(2)).item() == pytest.approx(2.5 / 3 + 0.5)
    assert g_loss(fake).item() == pytest.approx(1.5)


def test_hinge_refuses_soft_labels_instead_of_ignoring_them():
    d_loss, _ = adversarial_loss("hinge")
    real, fake = torch.zeros(4, 1), torch.zeros(4, 1)
    soft_real, soft_fake = soft_noisy_labels(0, (4, 1), generator=torch.Generator().manual_seed(1))
    for labels in [(0.3, 0.7), (soft_real, soft_fake), (1.0, soft_fake), (soft_real, 0.0)]:
        with pytest.raises(CytogenError, match="soft_labels"):
            d_loss(real, fake, *labels)
    # After the warm start the labels are exactly 1 and 0 again, which the hinge loss takes.
    hard_real, hard_fake = soft_noisy_labels(10, (4, 1), warm_steps=10)
    assert d_loss(real, fake, hard_real, hard_fake).item() == pytest.approx(2.0)


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


@pytest.mark.parametrize("warm,step,magnitude", [
    # Sun et al.'s schedule: 2500 warm steps in five levels of 500.
    (2500, 0, 0.10), (2500, 499, 0.10), (2500, 500, 0.08), (2500, 1000, 0.06),
    (2500, 2000, 0.02), (2500, 2499, 0.02), (2500, 2500, 0.0), (2500, 10_000, 0.0),
    # The period scales with the warm start: 250 steps give levels of 50.
    (250, 0, 0.10), (250, 49, 0.10), (250, 50, 0.08), (250, 199, 0.04), (250, 200, 0.02),
    (250, 249, 0.02), (250, 250, 0.0), (250, 499, 0.0),
    # Not a multiple of 5: floor(5 i / 7) -> i = 0, 1 | 2 | 3, 4 | 5 | 6.
    (7, 1, 0.10), (7, 2, 0.08), (7, 3, 0.06), (7, 4, 0.06), (7, 5, 0.04), (7, 6, 0.02),
    (7, 7, 0.0),
])
def test_soft_noisy_labels_schedule(warm, step, magnitude):
    shape = (4, 1, 8, 8)
    real, fake = soft_noisy_labels(step, shape, warm_steps=warm,
                                   generator=torch.Generator().manual_seed(5))
    assert real.shape == fake.shape == shape
    if magnitude == 0:
        assert (real == 1).all() and (fake == 0).all()
        return
    # The paper's formula with the same draws: 1 - a N(0,1) and 0 + a N(0,1).
    g = torch.Generator().manual_seed(5)
    noise_real, noise_fake = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    torch.testing.assert_close(real, 1 - magnitude * noise_real)
    torch.testing.assert_close(fake, magnitude * noise_fake)


def test_soft_noisy_labels_always_five_levels_over_the_warm_start():
    for warm in (5, 12, 250, 2500):
        levels = []
        for step in range(warm):
            real, _ = soft_noisy_labels(step, (1,), warm_steps=warm, noise="uniform",
                                        generator=torch.Generator().manual_seed(0))
            first = torch.rand((1,), generator=torch.Generator().manual_seed(0)).item()
            levels.append(round((1 - real.item()) / first, 6))
        assert sorted(set(levels), reverse=True) == pytest.approx([0.10, 0.08, 0.06, 0.04, 0.02])
        assert levels == sorted(levels, reverse=True)  # non-increasing in the step


def test_check_soft_labels_refuses_what_cannot_take_effect():
    ok = {"adversarial": "vanilla", "soft_labels": True, "soft_label_steps": 250}
    check_soft_labels(ok, max_steps=2000)
    check_soft_labels({"soft_labels": False, "soft_label_steps": 10**6}, max_steps=10)  # off
    with pytest.raises(CytogenError, match="soft_label_steps=2500.*max_steps=2000"):
        check_soft_labels(dict(ok, soft_label_steps=2500), max_steps=2000, source="r.yaml")
    with pytest.raises(CytogenError, match="never end"):
        check_soft_labels(dict(ok, soft_label_steps=2000), max_steps=2000)
    with pytest.raises(CytogenError, match="hinge"):
        check_soft_labels(dict(ok, adversarial="hinge"), max_steps=2000)
    with pytest.raises(CytogenError, match="positive integer"):
        check_soft_labels(dict(ok, soft_label_steps=0), max_steps=2000)
    # The recipe dataclass works too.
    from cytogen.config import GanConfig
    with pytest.raises(CytogenError, match="never end"):
        check_soft_labels(GanConfig(soft_labels=True, soft_label_steps=2500), max_steps=100)


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
