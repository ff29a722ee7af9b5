"""Discriminators for adversarial training, built by name from their own registry.

Every discriminator is built as ``cls(in_channels, *, cond_channels=0, dims=2,
conditional=True, ...)``: ``in_channels`` are the channels of the judged image (a real target or
a generated one) and ``cond_channels`` those of the conditioning source (0 = unconditional, as in
CycleGAN). Its ``forward(source, target)`` concatenates ``source`` and ``target`` on the channel
axis when conditional (pix2pix) and returns logits. ``conditional=False`` makes a critic that
judges the target alone and ignores whatever source it is given (the StyleGAN2 critic of
Vasudevan et al. 2023 sees the nucleus image only), so a recipe switches it on through the
discriminator's kwargs while the task keeps passing ``cond_channels`` and the source. Adding one
is a class in this file (or another file imported by :mod:`cytogen.models`) decorated with
``@register_discriminator("name")``.

* ``"patchgan"`` -- :class:`PatchGAN`, the pix2pix ``NLayerDiscriminator``: a map of patch
  logits, 2D or 3D.
* ``"stylegan2"`` -- :class:`~cytogen.models.stylegan2.StyleGAN2Discriminator` (in
  :mod:`cytogen.models.stylegan2`, re-exported here), the residual discriminator of StyleGAN2
  (Karras et al. 2020) used by Vasudevan et al. (2023): one logit per sample, 2D or 3D.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from cytogen.errors import CytogenError
from cytogen.models.blocks import NORMS, conv_nd, make_norm
from cytogen.registry import Registry

__all__ = [
    "DISCRIMINATORS",
    "DiscriminatorBase",
    "MinibatchStd",
    "PatchGAN",
    "StyleGAN2Discriminator",
    "build_discriminator",
    "discriminator_arguments",
    "list_discriminators",
    "register_discriminator",
]

_F = TypeVar("_F", bound=Callable[..., nn.Module])

#: Discriminators, built by name from a recipe's ``discriminator`` section.
DISCRIMINATORS: Registry[nn.Module] = Registry("discriminator")


def register_discriminator(name: str) -> Callable[[_F], _F]:
    """Decorator registering a discriminator class (or factory) under ``name``."""
    return DISCRIMINATORS.register(name)


def list_discriminators() -> list[str]:
    """Return the registered discriminator names, sorted."""
    return DISCRIMINATORS.names()


def discriminator_arguments(name: str) -> dict[str, Any]:
    """Return the keyword arguments of a registered discriminator with their defaults."""
    return DISCRIMINATORS.arguments(name)


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
    """Build the discriminator registered as ``name`` (e.g. ``in_channels=1, cond_channels=1, dims=3``).

    Raises
    ------
    CytogenError
        If ``name`` is unknown (the message lists the available names), an argument is not
        accepted or missing (the message lists the accepted ones) or a value is invalid.
    """
    return DISCRIMINATORS.build(name, **kwargs)


def _check_positive(**values: int) -> None:
    for label, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


class DiscriminatorBase(nn.Module):
    """Shared constructor checks and the ``(source, target)`` input contract.

    Parameters
    ----------
    in_channels : int
        Channels of the judged image.
    cond_channels : int
        Channels of the conditioning source; 0 for an unconditional discriminator.
    dims : {2, 3}
        Spatial dimensionality.
    conditional : bool
        False: judge the target alone; ``forward`` ignores the source (any tensor or None) and
        ``cond_channels`` becomes 0. True (default): use the source when ``cond_channels > 0``.

    Attributes
    ----------
    cond_channels : int
        Source channels the network actually reads (0 when unconditional).
    conditional : bool
        Whether the source is read.
    """

    def __init__(self, in_channels: int, *, cond_channels: int = 0, dims: int = 2,
                 conditional: bool = True) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        _check_positive(in_channels=in_channels)
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be an integer >= 0, got {cond_channels!r}")
        if not isinstance(conditional, bool):
            raise ValueError(f"conditional must be true or false, got {conditional!r}")
        self.in_channels = in_channels
        self.conditional = conditional and cond_channels > 0
        self.ignores_source = not conditional
        self.cond_channels = cond_channels if conditional else 0
        self.dims = dims

    def join(self, source: Tensor | None, target: Tensor) -> Tensor:
        """Check the inputs and concatenate ``[source, target]`` on channels if conditional.

        A discriminator built with ``conditional=False`` drops ``source`` here unread.

        Raises
        ------
        CytogenError
            If a tensor has the wrong rank or channel count, ``source`` is missing for a
            conditional discriminator (or given to an unconditional one), or the batch and
            spatial sizes of ``source`` and ``target`` differ.
        """
        name = type(self).__name__
        if self.ignores_source:
            source = None
        if source is None and self.cond_channels:
            raise CytogenError(f"{name} is conditional (cond_channels={self.cond_channels}) "
                               "and needs the source image, got None")
        if source is not None and not self.cond_channels:
            raise CytogenError(f"{name} is unconditional (cond_channels=0) but got a source; "
                               "pass None or build it with cond_channels > 0")
        for label, x, channels in (("target", target, self.in_channels),
                                   ("source", source, self.cond_channels)):
            if x is not None and (x.ndim != self.dims + 2 or x.shape[1] != channels):
                raise CytogenError(
                    f"{name}(dims={self.dims}) expects a {label} of shape (B, {channels}, "
                    f"{'Y, X' if self.dims == 2 else 'Z, Y, X'}), got {tuple(x.shape)}; check "
                    f"the image or set {'in' if label == 'target' else 'cond'}_channels")
        if source is None:
            return target
        if source.shape[0] != target.shape[0] or source.shape[2:] != target.shape[2:]:
            raise CytogenError(f"source {tuple(source.shape)} and target "
                               f"{tuple(target.shape)} differ in batch or spatial size")
        return torch.cat([source, target.to(source.dtype)], dim=1)


@register_discriminator("patchgan")
class PatchGAN(DiscriminatorBase):
    """Conditional PatchGAN (pix2pix ``NLayerDiscriminator``), 2D or 3D.

    ``conv(k4, s2) + LReLU(0.2)``, then ``n_layers - 1`` blocks ``conv(k4, s2) + norm + LReLU``
    doubling the channels (capped at ``8 * base_channels``), one ``conv(k4, s1) + norm +
    LReLU`` and a final ``conv(k4, s1)`` to one channel; all convs pad by 1. Each output
    logit judges one input patch of :attr:`receptive_field` pixels per axis (70 for
    ``n_layers=3``).

    Parameters
    ----------
    in_channels : int
        Channels of the judged image.
    cond_channels : int
        Channels of the source image concatenated in front (0: unconditional).
    dims : {2, 3}
        Spatial dimensionality.
    conditional : bool
        False: judge the target alone and ignore the source (see :class:`DiscriminatorBase`).
    n_layers : int
        Number of stride-2 convs (>= 1).
    base_channels : int
        Channels of the first conv.
    norm : {"instance", "batch", "group", "none"}
        Normalisation (see :func:`cytogen.models.blocks.make_norm`; instance norm is affine,
        pix2pix's is not). Convs followed by a norm have no bias.
    spectral_norm : bool
        Wrap every conv in spectral normalisation (usually with ``norm="none"``).

    Attributes
    ----------
    receptive_field : int
        Input pixels per axis that one output logit sees.
    min_size : int
        Smallest input size per axis: ``3 * 2**n_layers`` (output of 1 logit per axis).
    """

    def __init__(self, in_channels: int = 1, *, cond_channels: int = 0, dims: int = 2,
                 conditional: bool = True, n_layers: int = 3, base_channels: int = 64,
                 norm: str = "instance", spectral_norm: bool = False) -> None:
        super().__init__(in_channels, cond_channels=cond_channels, dims=dims,
                         conditional=conditional)
        _check_positive(n_layers=n_layers, base_channels=base_channels)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.n_layers = n_layers
        conv = conv_nd(dims)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        bias = norm == "none"
        widths = [base_channels * min(2**i, 8) for i in range(n_layers + 1)]
        layers: list[nn.Module] = [sn(conv(in_channels + self.cond_channels, widths[0], 4, 2, 1)),
                                   nn.LeakyReLU(0.2, inplace=True)]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [sn(conv(widths[i - 1], widths[i], 4, stride, 1, bias=bias)),
                       make_norm(norm, widths[i], dims), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(sn(conv(widths[-1], 1, 4, 1, 1)))
        self.model = nn.Sequential(*layers)
        # Backwards through the two k4 s1 convs (r -> r + 3 each), then n k4 s2 convs.
        rf = 1 + 3 + 3
        for _ in range(n_layers):
            rf = 2 * rf + 2
        self.receptive_field: int = rf
        self.min_size: int = 3 * 2**n_layers

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the logit map for an input of spatial shape ``spatial``."""
        out = []
        for size in spatial:
            for _ in range(self.n_layers):
                size //= 2  # k4 s2 p1
            out.append(size - 2)  # two k4 s1 p1 convs
        return tuple(out)

    def forward(self, source: Tensor | None, target: Tensor) -> Tensor:
        """Judge ``target`` (given ``source`` if conditional).

        Parameters
        ----------
        source : torch.Tensor or None
            ``(B, cond_channels, [Z,] Y, X)``, or None when ``cond_channels == 0``; ignored
            when built with ``conditional=False``.
        target : torch.Tensor
            ``(B, in_channels, [Z,] Y, X)``, each spatial size >= :attr:`min_size`.

        Returns
        -------
        torch.Tensor
            Patch logits ``(B, 1, *output_shape(spatial))``.
        """
        x = self.join(source, target)
        if min(x.shape[2:]) < self.min_size:
            raise CytogenError(f"PatchGAN(n_layers={self.n_layers}) needs inputs of at least "
                               f"{self.min_size} px per axis, got {tuple(x.shape[2:])}; use "
                               "larger patches or fewer layers")
        return self.model(x)


# Registry line: the StyleGAN2 critic lives in its own file (imported last: it subclasses
# DiscriminatorBase and registers itself).
from cytogen.models.stylegan2 import MinibatchStd, StyleGAN2Discriminator  # noqa: E402  isort: skip
