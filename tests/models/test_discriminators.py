"""Tests for the discriminator registry, PatchGAN and the StyleGAN2 discriminator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cytogen.errors import CytogenError
from cytogen.models import discriminators
from cytogen.models.discriminators import (
    MinibatchStd,
    PatchGAN,
    StyleGAN2Discriminator,
    build_discriminator,
    discriminator_arguments,
    list_discriminators,
    register_discriminator,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _expected_patch_shape(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1  # k4 s2 p1
    return size - 2  # two k4 s1 p1 convs: -1 each


# ---------------------------------------------------------------- registry


def test_registry_builds_by_name_and_lists():
    assert {"patchgan", "stylegan2"} <= set(list_discriminators())
    assert isinstance(build_discriminator("patchgan", base_channels=4), PatchGAN)
    assert isinstance(build_discriminator("stylegan2", image_size=8, base_channels=4),
                      StyleGAN2Discriminator)
    assert discriminator_arguments("patchgan")["n_layers"] == 3


def test_registry_errors_list_what_exists():
    with pytest.raises(CytogenError, match="patchgan.*stylegan2"):
        build_discriminator("nope")
    with pytest.raises(CytogenError, match="n_layers"):
        build_discriminator("patchgan", n_layer=2)
    with pytest.raises(CytogenError, match="norm"):
        build_discriminator("patchgan", norm="layer")
    with pytest.raises(CytogenError, match="image_size"):
        build_discriminator("stylegan2", image_size=100)
    with pytest.raises(CytogenError, match="dims"):
        build_discriminator("stylegan2", dims=1)
    with pytest.raises(ValueError, match="already registered"):
        register_discriminator("patchgan")(nn.Identity)


def test_register_custom_discriminator():
    @register_discriminator("_test_mean")
    class MeanD(discriminators.DiscriminatorBase):
        def forward(self, source, target):
            return self.join(source, target).mean(dim=(1, 2, 3))

    try:
        d = build_discriminator("_test_mean", in_channels=2, cond_channels=1)
        y = d(torch.zeros(3, 1, 4, 4), torch.ones(3, 2, 4, 4))
        assert y.tolist() == pytest.approx([2 / 3] * 3)
    finally:
        discriminators.DISCRIMINATORS.unregister("_test_mean")


# ---------------------------------------------------------------- PatchGAN


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_patchgan_2d_output_shapes(n_layers):
    d = PatchGAN(1, dims=2, n_layers=n_layers, base_channels=4)
    for h, w in [(48, 48), (50, 77), (64, 96)]:
        y = d(None, torch.randn(2, 1, h, w))
        expected = (_expected_patch_shape(h, n_layers), _expected_patch_shape(w, n_layers))
        assert y.shape == (2, 1, *expected) == (2, 1, *d.output_shape((h, w)))


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_patchgan_3d_output_shapes(n_layers):
    d = PatchGAN(2, cond_channels=1, dims=3, n_layers=n_layers, base_channels=2, norm="batch")
    spatial = (d.min_size, d.min_size + 3, d.min_size + 8)
    y = d(torch.randn(2, 1, *spatial), torch.randn(2, 2, *spatial))
    assert y.shape == (2, 1, *(_expected_patch_shape(s, n_layers) for s in spatial))
    assert min(y.shape[2:]) >= 1


def test_patchgan_too_small_input_is_a_user_error():
    d = PatchGAN(1, n_layers=3, base_channels=4)
    assert d.min_size == 24
    d(None, torch.randn(1, 1, 24, 24))
    with pytest.raises(CytogenError, match="at least 24"):
        d(None, torch.randn(1, 1, 23, 40))


@pytest.mark.parametrize("n_layers,expected", [(1, 16), (2, 34), (3, 70), (4, 142)])
def test_patchgan_receptive_field_empirically(n_layers, expected):
    d = PatchGAN(1, n_layers=n_layers, base_channels=2, norm="none").double()
    assert d.receptive_field == expected
    size = expected + 2**n_layers * 6
    x = torch.randn(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = d(None, x)
    i, j = y.shape[2] // 2, y.shape[3] // 2
    (grad,) = torch.autograd.grad(y[0, 0, i, j], x)
    rows = grad[0, 0].abs().sum(1).nonzero().flatten()
    cols = grad[0, 0].abs().sum(0).nonzero().flatten()
    assert rows.numel() == rows[-1] - rows[0] + 1 == expected
    assert cols.numel() == cols[-1] - cols[0] + 1 == expected
    assert rows[0] > 0 and rows[-1] < size - 1  # fully inside: not cut by the border


def test_patchgan_conditional_concat_and_errors():
    d = PatchGAN(1, cond_channels=2, n_layers=2, base_channels=4)
    assert d.model[0].in_channels == 3
    src, tgt = torch.randn(2, 2, 32, 32), torch.randn(2, 1, 32, 32)
    y = d(src, tgt)
    # The source matters: changing it changes the logits.
    assert not torch.allclose(y, d(src + 1, tgt))
    with pytest.raises(CytogenError, match="needs the source"):
        d(None, tgt)
    with pytest.raises(CytogenError, match="source"):
        d(torch.randn(2, 1, 32, 32), tgt)  # wrong source channels
    with pytest.raises(CytogenError, match="spatial"):
        d(torch.randn(2, 2, 32, 40), tgt)
    with pytest.raises(CytogenError, match="batch"):
        d(torch.randn(3, 2, 32, 32), tgt)
    with pytest.raises(CytogenError, match="target"):
        d(src, torch.randn(2, 1, 32))
    with pytest.raises(CytogenError, match="unconditional"):
        PatchGAN(1, n_layers=2, base_channels=4)(src, tgt)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_patchgan_gradients_reach_input_and_weights(spectral_norm):
    d = PatchGAN(1, cond_channels=1, n_layers=2, base_channels=4, spectral_norm=spectral_norm,
                 norm="none" if spectral_norm else "instance")
    src = torch.randn(2, 1, 32, 32)
    tgt = torch.randn(2, 1, 32, 32, requires_grad=True)
    d(src, tgt).mean().backward()
    assert tgt.grad is not None and tgt.grad.abs().sum() > 0
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if spectral_norm:
        w = d.model[0].weight  # parametrised: spectral norm ~ 1 after power iterations
        for _ in range(20):
            d(src, tgt)
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.1)


def test_patchgan_default_widths_cap_at_8x():
    d = PatchGAN(1, n_layers=5, base_channels=2)
    convs = [m for m in d.model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2, 4, 8, 16, 16, 16, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 2, 1, 1]


# ---------------------------------------------------------------- StyleGAN2


@pytest.mark.parametrize("image_size,blocks", [(64, 4), (128, 5)])
def test_stylegan2_one_logit_per_sample(image_size, blocks):
    d = StyleGAN2Discriminator(1, cond_channels=1, image_size=image_size, base_channels=4,
                               max_channels=16)
    assert len(d.blocks) == blocks
    x = torch.randn(3, 1, image_size, image_size)
    assert d(x, x).shape == (3, 1)


def test_stylegan2_resizes_other_sizes():
    d = StyleGAN2Discriminator(1, image_size=32, base_channels=4, max_channels=16).eval()
    assert d(None, torch.randn(2, 1, 20, 50)).shape == (2, 1)
    # Other sizes are judged as their (antialiased bilinear) resize to image_size ...
    big = torch.randn(2, 1, 64, 48)
    small = nn.functional.interpolate(big, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(d(None, big), d(None, small), atol=1e-5, rtol=1e-4)
    # ... so a constant image gives the same logit at any size.
    torch.testing.assert_close(d(None, torch.full((2, 1, 77, 40), 0.3)),
                               d(None, torch.full((2, 1, 32, 32), 0.3)), atol=1e-5, rtol=1e-4)


def test_stylegan2_3d_and_anisotropic():
    d = StyleGAN2Discriminator(1, dims=3, image_size=(8, 16, 16), base_channels=2,
                               max_channels=8)
    assert len(d.blocks) == 2 and d.blocks[0].main[-1].stride == (2, 2, 2)
    assert d.blocks[1].main[-1].stride == (1, 2, 2)
    assert d(None, torch.randn(2, 1, 8, 16, 16)).shape == (2, 1)
    assert d(None, torch.randn(2, 1, 5, 20, 16)).shape == (2, 1)


@pytest.mark.parametrize("batch", [1, 3, 4, 6])
def test_stylegan2_mbstd_batch_sizes(batch):
    d = StyleGAN2Discriminator(1, image_size=16, base_channels=4, max_channels=8)
    x = torch.randn(batch, 1, 16, 16, requires_grad=True)
    y = d(None, x)
    assert y.shape == (batch, 1) and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_minibatch_std_matches_reference():
    x = torch.randn(4, 3, 5, 5)
    out = MinibatchStd(4)(x)
    ref = (x.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    assert out.shape == (4, 4, 5, 5)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(out[:, 3], ref.expand(4, 5, 5))
    # Batch 6, group size 4: two groups of 3, each with its own statistic.
    x6 = torch.randn(6, 2, 3, 3)
    out6 = MinibatchStd(4)(x6)[:, 2, 0, 0]
    for part, values in ((x6[:3], out6[:3]), (x6[3:], out6[3:])):
        expected = (part.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(values, expected.expand(3))
    assert MinibatchStd(4)(torch.randn(1, 2, 3, 3))[:, 2].abs().max() < 1e-3


def test_stylegan2_channels_last_and_bf16():
    d = StyleGAN2Discriminator(2, image_size=16, base_channels=4, max_channels=8).eval()
    x = torch.randn(4, 2, 16, 16)
    with torch.no_grad():
        ref = d(None, x)
        out = d(None, x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = d(None, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-2


# ---------------------------------------------------------------- unconditional option


UNCOND = {"patchgan": dict(n_layers=2, base_channels=4),
          "stylegan2": dict(image_size=16, base_channels=4, max_channels=8)}


@pytest.mark.parametrize("name", sorted(UNCOND))
@pytest.mark.parametrize("dims", [2, 3])
def test_unconditional_critic_ignores_the_source(name, dims):
    # Built exactly as the GAN task builds its discriminator (cond_channels = the generator's
    # input channels), plus the recipe's kwargs: the source is then passed but not read.
    kw = dict(in_channels=1, cond_channels=2, dims=dims, **UNCOND[name])
    critic = build_discriminator(name, conditional=False, **kw).eval()
    conditioned = build_discriminator(name, **kw).eval()
    assert critic.cond_channels == 0 and not critic.conditional and conditioned.conditional
    first = critic.model[0] if name == "patchgan" else critic.from_rgb[0]
    assert first.in_channels == 1  # the network has no input for the source at all
    spatial = (16,) * dims
    target = torch.randn(2, 1, *spatial)
    src_a, src_b = torch.randn(2, 2, *spatial), 5 + 3 * torch.randn(2, 2, *spatial)
    with torch.no_grad():
        y = critic(src_a, target)
        torch.testing.assert_close(critic(src_b, target), y, rtol=0, atol=0)
        torch.testing.assert_close(critic(None, target), y, rtol=0, atol=0)
        assert not torch.allclose(critic(src_a, target + 1), y)  # the target still counts
        # ... whereas the conditional one reads the source.
        assert not torch.allclose(conditioned(src_a, target), conditioned(src_b, target))
    # The target is still checked.
    with pytest.raises(CytogenError, match="target"):
        critic(src_a, torch.randn(2, 3, *spatial))


def test_conditional_flag_must_be_a_bool_and_keeps_cyclegan_behaviour():
    with pytest.raises(CytogenError, match="conditional"):
        build_discriminator("patchgan", conditional="no")
    assert discriminator_arguments("stylegan2")["conditional"] is True
    # cond_channels=0 (CycleGAN) with either flag: unconditional, the source is None.
    for flag in (True, False):
        d = build_discriminator("patchgan", cond_channels=0, conditional=flag, n_layers=2,
                                base_channels=4)
        assert d(None, torch.randn(1, 1, 32, 32)).shape[:2] == (1, 1)
