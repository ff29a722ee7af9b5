"""The generator contract, checked on every registered model (and on one defined only here).

Parametrised over ``list_models()``: a model added to the registry is checked without editing
this file. Each is built small (``SMALL`` holds narrow settings for the bundled models so the
checks run in seconds; a model missing from it is built with its defaults).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cytogen.errors import CytogenError
from cytogen.models import Generator, build_model, check_spatial_size, list_models, register_model
from cytogen.models import registry

SMALL = {
    "unet": dict(depth=2, base_channels=4),
    "unet_chain": dict(stages=2, depth=2, base_channels=4),
    "r2unet": dict(depth=2, base_channels=4, t=1),
    "tfill_coarse": dict(base_channels=4, max_channels=8, n_down=2, embed_dim=8, n_blocks=1,
                         n_heads=2, ref_size=8),
}


pytestmark = pytest.mark.usefixtures("seeded", "one_thread")  # see tests/conftest.py


def _allowed_sizes(multiple: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Three spatial sizes that are multiples of ``multiple`` per axis, with unequal axes."""
    factors = [(1,) * len(multiple), (2,) + (1,) * (len(multiple) - 1), (1,) * (len(multiple) - 1) + (3,)]
    return [tuple(m * f for m, f in zip(multiple, fs)) for fs in factors]


def check_contract(name: str, dims: int, **kwargs) -> None:
    """Build ``name`` in ``dims`` D and check the generator protocol end to end."""
    cin, cout = 2, 3
    try:
        model = build_model(name, in_channels=cin, out_channels=cout, dims=dims, **kwargs)
    except CytogenError as exc:
        # Only 3D may be refused, and only with a message that says the model is 2D.
        assert dims == 3 and "2D" in str(exc), (name, dims, exc)
        return
    assert isinstance(model, nn.Module) and isinstance(model, Generator)
    assert (model.in_channels, model.out_channels, model.dims) == (cin, cout, dims)
    mult = model.size_multiple
    assert isinstance(mult, tuple) and len(mult) == dims and all(m >= 1 for m in mult)

    model.train()
    for spatial in _allowed_sizes(mult):
        y = model(torch.randn(2, cin, *spatial))
        assert y.shape == (2, cout, *spatial), (name, spatial, y.shape)
        assert torch.isfinite(y).all()

    # A size off the multiple on any axis that has one is refused, naming the rule.
    for axis, m in enumerate(mult):
        if m == 1:
            continue
        bad = list(mult)
        bad[axis] = m + m // 2 if m > 2 else m + 1
        with pytest.raises(ValueError, match="divisible"):
            model(torch.randn(1, cin, *bad))
        with pytest.raises(CytogenError, match="data.patch_size"):
            check_spatial_size(model, bad, "data.patch_size")
    check_spatial_size(model, _allowed_sizes(mult)[1], "data.patch_size")  # accepted
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, cin + 1, *mult))

    # Gradients reach every parameter (a random projection of the output avoids symmetric
    # cancellations that a plain mean could hide).
    model.zero_grad(set_to_none=True)
    spatial = _allowed_sizes(mult)[2]
    y = model(torch.randn(2, cin, *spatial))
    (y * torch.randn_like(y)).sum().backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not dead, f"{name} ({dims}D): no gradient reaches {dead}"


CASES = [(name, dims) for name, dims in itertools.product(list_models(), (2, 3))]


@pytest.mark.parametrize("name,dims", CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_every_registered_generator_meets_the_contract(name, dims):
    check_contract(name, dims, **SMALL.get(name, {}))


def test_bundled_models_are_all_checked_and_3d_refusals_are_known():
    # The 2D-only models refuse dims=3 with a CytogenError; the others build in 3D.
    for name in list_models():
        try:
            build_model(name, dims=3, **SMALL.get(name, {}))
        except CytogenError as exc:
            assert name == "tfill_coarse" and "2D only" in str(exc)
        else:
            assert name != "tfill_coarse"
    assert set(SMALL) <= set(list_models())


def test_a_generator_defined_only_here_is_picked_up_by_the_same_checks():
    """Adding a generator: one class plus its registration, and the contract holds."""

    class TinyNet(nn.Module):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2,
                     width: int = 4) -> None:
            super().__init__()
            if dims not in (2, 3):
                raise ValueError(f"dims must be 2 or 3, got {dims!r}")
            conv = nn.Conv2d if dims == 2 else nn.Conv3d
            self.in_channels, self.out_channels, self.dims = in_channels, out_channels, dims
            self.size_multiple = (2,) * dims
            self.down = conv(in_channels, width, 2, stride=2)
            self.up = (nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d)(width, out_channels, 2, stride=2)

        def forward(self, x):
            if any(s % m for s, m in zip(x.shape[2:], self.size_multiple)) or x.shape[1] != self.in_channels:
                raise ValueError(f"input {tuple(x.shape)}: channel count or size not divisible by "
                                 f"{self.size_multiple}")
            return self.up(torch.relu(self.down(x)))

    register_model("_contract_tiny")(TinyNet)
    try:
        assert "_contract_tiny" in list_models()
        for dims in (2, 3):
            check_contract("_contract_tiny", dims, width=3)
    finally:
        registry.MODELS.unregister("_contract_tiny")
    assert "_contract_tiny" not in list_models()


def test_a_model_breaking_the_protocol_is_refused_at_build():
    class NoMultiple(nn.Module):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2):
            super().__init__()
            self.in_channels, self.out_channels, self.dims = in_channels, out_channels, dims

        def forward(self, x):
            return x

    class WrongMultiple(NoMultiple):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2):
            super().__init__(in_channels, out_channels, dims=dims)
            self.size_multiple = 4  # an int, not one per axis

    class IgnoresChannels(NoMultiple):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2):
            super().__init__(1, 1, dims=dims)
            self.size_multiple = (1,) * dims

    cases = {"_contract_none": (NoMultiple, "no size_multiple"),
             "_contract_int": (WrongMultiple, "one per spatial axis"),
             "_contract_chan": (IgnoresChannels, "built with in_channels=2")}
    for name, (cls, message) in cases.items():
        register_model(name)(cls)
        try:
            with pytest.raises(CytogenError, match=message):
                build_model(name, in_channels=2, dims=2)
        finally:
            registry.MODELS.unregister(name)


def test_size_multiple_per_axis_for_anisotropic_3d():
    model = build_model("unet", dims=3, depth=2, base_channels=4, pool_z=False)
    assert model.size_multiple == (1, 4, 4)
    y = model(torch.randn(1, 1, 3, 8, 12))  # any Z, Y and X multiples of 4
    assert y.shape == (1, 1, 3, 8, 12)
    with pytest.raises(CytogenError, match=r"\[3, 8, 12\]"):
        check_spatial_size(model, (3, 8, 10), "data.patch_size")
    with pytest.raises(CytogenError, match="3D"):
        check_spatial_size(model, (8, 8), "data.patch_size")
