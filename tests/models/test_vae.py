"""Statistical Cell beta-VAEs: shapes in 2D/3D, spectral norm everywhere, conditioning, errors,
low precision, and a small learning test on disks of random radius."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cytogen.errors import CytogenError
from cytogen.losses import beta_elbo_loss, kl_per_dim, recon_sse
from cytogen.models import VAES, ReferenceVAE, TargetVAE, build_vae
from cytogen.models.registry import MODELS
from cytogen.models.vae_blocks import UpBlock

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {2: dict(dims=2, size=(32, 32), widths=(8, 16), latent_dim=6),
         3: dict(dims=3, size=(16, 32, 32), widths=(4, 8, 16), latent_dim=6)}
LAYERS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _target(dims, **kw):
    return TargetVAE(in_channels=1, ref_channels=2, n_classes=3, **{**CASES[dims], **kw})


@pytest.mark.parametrize("dims", [2, 3])
def test_reference_shapes(dims, seeded):
    net = ReferenceVAE(in_channels=2, **CASES[dims])
    size = CASES[dims]["size"]
    x = torch.rand(3, 2, *size)
    mu, logvar = net.encode(x)
    assert mu.shape == logvar.shape == (3, 6)
    out = net.decode(torch.randn(3, 6))
    assert out.shape == (3, 2, *size) and out.min() >= 0 and out.max() <= 1
    x_hat, mu2, lv2 = net(x)
    assert x_hat.shape == x.shape and mu2.shape == (3, 6)
    assert net.latent_dim == 6 and net.in_channels == 2 and net.dims == dims and net.size == size


@pytest.mark.parametrize("dims", [2, 3])
def test_target_shapes(dims, seeded):
    net = _target(dims)
    size = CASES[dims]["size"]
    x_t, x_r, t = torch.rand(3, 1, *size), torch.rand(3, 2, *size), torch.tensor([0, 2, 1])
    mu, logvar = net.encode(x_t, x_r, t)
    assert mu.shape == logvar.shape == (3, 6)
    out = net.decode(torch.randn(3, 6), x_r, t)
    assert out.shape == (3, 1, *size) and out.min() >= 0 and out.max() <= 1
    x_hat, _, _ = net(x_t, x_r, t)
    assert x_hat.shape == x_t.shape


@pytest.mark.parametrize("cls", [ReferenceVAE, TargetVAE])
def test_spectral_norm_on_every_conv_and_linear(cls):
    net = cls(**CASES[2])
    layers = [m for m in net.modules() if isinstance(m, LAYERS)]
    assert len(layers) > 10
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    plain = cls(**CASES[2], spectral_norm=False)
    assert not any(parametrize.is_parametrized(m, "weight") for m in plain.modules() if isinstance(m, LAYERS))
    # the power iteration converges to a unit largest singular value
    net.train()
    x = (torch.rand(2, 2, 32, 32),) if cls is ReferenceVAE else (
        torch.rand(2, 1, 32, 32), torch.rand(2, 2, 32, 32), torch.tensor([0, 0]))
    for _ in range(15):
        net.encode(*x)
    sigma = torch.linalg.matrix_norm(net.encoder.mu.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_not_generators_and_registry():
    assert set(VAES.names()) == {"statcell_reference", "statcell_target"}
    assert not any(name in MODELS for name in VAES.names())
    with pytest.raises(CytogenError, match="statcell_reference"):
        build_vae("statcell_nope")
    with pytest.raises(CytogenError, match="accepted arguments"):
        build_vae("statcell_reference", latent=3)


def test_architecture_rebuilds_the_same_model(seeded):
    net = _target(2).eval()
    again = build_vae(**{"name": net.architecture["name"], **net.architecture["kwargs"]})
    again.load_state_dict(net.state_dict())
    again.eval()
    x_r, t, z = torch.rand(2, 2, 32, 32), torch.tensor([1, 2]), torch.randn(2, 6)
    assert torch.allclose(net.decode(z, x_r, t), again.decode(z, x_r, t))


def test_size_and_input_errors():
    with pytest.raises(CytogenError, match=r"size \[60, 64\].*divisible by .* 16"):
        ReferenceVAE(size=(60, 64))
    with pytest.raises(CytogenError, match="divisible"):
        build_vae("statcell_target", dims=3, size=(12, 32, 32), widths=(4, 8, 16))
    with pytest.raises(CytogenError, match="3 positive entries"):
        ReferenceVAE(dims=3, size=(32, 32))
    with pytest.raises(CytogenError, match="bypass"):
        ReferenceVAE(bypass="maxpool")
    with pytest.raises(CytogenError, match="norm"):
        ReferenceVAE(norm="layer")
    net = _target(2)
    with pytest.raises(CytogenError, match=r"\(B, 2, 32, 32\)"):
        net.encode(torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(CytogenError, match="out of range"):
        net.encode(torch.rand(2, 1, 32, 32), torch.rand(2, 2, 32, 32), torch.tensor([0, 3]))
    with pytest.raises(CytogenError, match="integer tensor"):
        net.decode(torch.randn(2, 6), torch.rand(2, 2, 32, 32), torch.tensor([0.0, 1.0]))


def test_bypass_conv3_option_changes_the_encoder():
    net = ReferenceVAE(**CASES[2], bypass="conv3")
    first = net.encoder.blocks[0].bypass
    assert isinstance(first, nn.Conv2d) and first.kernel_size == (3, 3) and first.stride == (2, 2)
    assert net(torch.rand(2, 2, 32, 32))[0].shape == (2, 2, 32, 32)


@pytest.mark.parametrize("dims", [2, 3])
def test_target_uses_reference_and_structure(dims, seeded):
    net = _target(dims).eval()
    size = CASES[dims]["size"]
    z, x_r, t = torch.randn(2, 6), torch.rand(2, 2, *size), torch.tensor([0, 1])
    with torch.no_grad():
        base = net.decode(z, x_r, t)
        other_ref = net.decode(z, torch.rand(2, 2, *size), t)
        other_type = net.decode(z, x_r, torch.tensor([2, 2]))
        assert (base - other_ref).abs().max() > 1e-3
        assert (base - other_type).abs().max() > 1e-3
        # the encoder sees them too
        x_t = torch.rand(2, 1, *size)
        mu = net.encode(x_t, x_r, t)[0]
        assert (mu - net.encode(x_t, torch.rand(2, 2, *size), t)[0]).abs().max() > 1e-4
        assert (mu - net.encode(x_t, x_r, torch.tensor([2, 2]))[0]).abs().max() > 1e-4


def test_up_block_bypass_is_upsample_then_conv():
    """The 1x1 conv before bilinear upsampling equals the paper's order (upsample, then 1x1)."""
    block = UpBlock(3, 4, 2, spectral_norm=False)
    x = torch.randn(1, 3, 5, 6)
    a = F.interpolate(block.bypass(x), scale_factor=2, mode="bilinear", align_corners=False)
    b = block.bypass(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("cls", [ReferenceVAE, TargetVAE])
def test_bf16_autocast_finite_with_power_iteration(cls, seeded):
    net = cls(**CASES[2]).train()
    x = (torch.rand(4, 2, 32, 32),) if cls is ReferenceVAE else (
        torch.rand(4, 1, 32, 32), torch.rand(4, 2, 32, 32), torch.tensor([0, 0, 0, 0]))
    target = x[0]
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_hat, mu, lv = net(*x)
            loss = beta_elbo_loss(recon_sse(x_hat, target), kl_per_dim(mu, lv), 0.5)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()
    buffers = [b for n, b in net.named_buffers() if n.endswith("_u") or n.endswith("_v")]
    assert buffers and all(torch.isfinite(b).all() for b in buffers)


def test_channels_last_matches_contiguous(seeded):
    net = _target(2).eval()
    x_t, x_r, t = torch.rand(2, 1, 32, 32), torch.rand(2, 2, 32, 32), torch.tensor([0, 1])
    with torch.no_grad():
        ref = net.encode(x_t, x_r, t)[0]
        cl = net.to(memory_format=torch.channels_last)
        got = cl.encode(x_t.to(memory_format=torch.channels_last),
                        x_r.to(memory_format=torch.channels_last), t)[0]
        z = torch.randn(2, 6)
        out = cl.decode(z, x_r.to(memory_format=torch.channels_last), t)
    assert torch.allclose(ref, got, atol=1e-4)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()


def _disks(n: int, g: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.rand(n, generator=g) * 8 + 3
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2).sqrt()
    return torch.sigmoid((r[:, None, None] - d) * 2.0)[:, None], r


def test_reference_vae_learns_disk_radius(seeded):
    net = ReferenceVAE(in_channels=1, size=(32, 32), widths=(8, 16, 32), latent_dim=4)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        x, _ = _disks(16, g)
        x_hat, mu, lv = net(x)
        loss = beta_elbo_loss(recon_sse(x_hat, x), kl_per_dim(mu, lv), 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, r = _disks(256, torch.Generator().manual_seed(5))
    with torch.no_grad():
        mu, lv = net.encode(x)
        err = recon_sse(net.decode(mu), x).mean().item()
    baseline = recon_sse(x.mean(0, keepdim=True).expand_as(x), x).mean().item()
    assert err < 0.25 * baseline
    top = int(kl_per_dim(mu, lv).mean(0).argmax())
    assert abs(np.corrcoef(mu[:, top].numpy(), r.numpy())[0, 1]) > 0.7
