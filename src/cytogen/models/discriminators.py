"""Discriminators for adversarial training, built by name from their own registry.

Every discriminator is built as ``cls(in_channels, *, cond_channels=0, dims=2, ...)``:
``in_channels`` are the channels of the judged image (a real target or a generated one) and
``cond_channels`` those of the conditioning source (0 = unconditional, as in CycleGAN). Its
``forward(source, target)`` concatenates ``source`` and ``target`` on the channel axis when
conditional (pix2pix) and returns logits. Adding one is a class in this file (or another file
imported by :mod:`cytogen.models`) decorated with ``@register_discriminator("name")``.

* ``"patchgan"`` -- :class:`PatchGAN`, the pix2pix ``NLayerDiscriminator``: a map of patch
  logits, 2D or 3D.
* ``"stylegan2"`` -- :class:`StyleGAN2Discriminator`, the residual discriminator of StyleGAN2
  (Karras et al. 2020) used by Vasudevan et al.: one logit per sample, 2D or 3D.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
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
    """

    def __init__(self, in_channels: int, *, cond_channels: int = 0, dims: int = 2) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        _check_positive(in_channels=in_channels)
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be an integer >= 0, got {cond_channels!r}")
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.dims = dims

    def join(self, source: Tensor | None, target: Tensor) -> Tensor:
        """Check the inputs and concatenate ``[source, target]`` on channels if conditional.

        Raises
        ------
        CytogenError
            If a tensor has the wrong rank or channel count, ``source`` is missing for a
            conditional discriminator (or given to an unconditional one), or the batch and
            spatial sizes of ``source`` and ``target`` differ.
        """
        name = type(self).__name__
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
                 n_layers: int = 3, base_channels: int = 64, norm: str = "instance",
                 spectral_norm: bool = False) -> None:
        super().__init__(in_channels, cond_channels=cond_channels, dims=dims)
        _check_positive(n_layers=n_layers, base_channels=base_channels)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.n_layers = n_layers
        conv = conv_nd(dims)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        bias = norm == "none"
        widths = [base_channels * min(2**i, 8) for i in range(n_layers + 1)]
        layers: list[nn.Module] = [sn(conv(in_channels + cond_channels, widths[0], 4, 2, 1)),
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
            ``(B, cond_channels, [Z,] Y, X)``, or None when ``cond_channels == 0``.
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


class _BlurDown(nn.Module):
    """Binomial ``[1, 3, 3, 1]`` blur then stride 2 on the axes where ``scale`` is 2."""

    def __init__(self, channels: int, scale: Sequence[int]) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = torch.ones(())
        for s in scale:
            kernel = kernel[..., None] * (taps if s == 2 else torch.ones(1))
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, *kernel.shape).contiguous(),
                             persistent=False)
        self.stride = tuple(scale)
        self.padding = tuple(1 if s == 2 else 0 for s in scale)
        self.conv = F.conv2d if len(scale) == 2 else F.conv3d

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``x`` (even sizes are halved exactly)."""
        return self.conv(x, self.weight.to(x.dtype), stride=self.stride, padding=self.padding,
                         groups=x.shape[1])


class MinibatchStd(nn.Module):
    """Append one channel: the standard deviation over a group of samples (StyleGAN).

    The batch is split into ``ceil(B / group_size)`` contiguous groups whose sizes differ by
    at most one (so batch sizes not divisible by ``group_size`` leave no group of size 1
    unless ``B == 1``). Per group, the standard deviation over samples of each feature is
    averaged over channels and positions and broadcast as an extra channel to its samples.
    For ``B == 1`` the channel is ``sqrt(1e-8)``, i.e. about 0.

    Parameters
    ----------
    group_size : int
        Largest group size (4 in StyleGAN2).
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        _check_positive(group_size=group_size)
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, *S) -> (B, C + 1, *S)``."""
        n = x.shape[0]
        groups = -(-n // self.group_size)
        gid = torch.arange(n, device=x.device) * groups // n
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        flat = x.reshape(n, -1).to(dtype)
        counts = torch.bincount(gid, minlength=groups).to(dtype)[:, None]
        zeros = flat.new_zeros(groups, flat.shape[1])
        mean = zeros.index_add(0, gid, flat) / counts
        var = zeros.index_add(0, gid, (flat - mean[gid]).square()) / counts
        std = (var + 1e-8).sqrt().mean(dim=1)[gid].to(x.dtype)  # (B,)
        extra = std.reshape(n, 1, *(1,) * (x.ndim - 2)).expand(n, 1, *x.shape[2:])
        return torch.cat([x, extra], dim=1)


class _ResBlock(nn.Module):
    """StyleGAN2 residual block: two 3x3 convs + LReLU, downsample; 1x1 skip; sum / sqrt 2."""

    def __init__(self, cin: int, cout: int, dims: int, scale: Sequence[int]) -> None:
        super().__init__()
        conv = conv_nd(dims)
        self.main = nn.Sequential(conv(cin, cin, 3, padding=1), nn.LeakyReLU(0.2),
                                  conv(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                                  _BlurDown(cout, scale))
        self.skip = nn.Sequential(_BlurDown(cin, scale), conv(cin, cout, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """Residual downsampling step."""
        return (self.main(x) + self.skip(x)) * (1 / math.sqrt(2))


@register_discriminator("stylegan2")
class StyleGAN2Discriminator(DiscriminatorBase):
    """StyleGAN2 residual discriminator (Karras et al. 2020, config E/F), 2D or 3D.

    fromRGB (1x1 conv + LReLU), residual blocks halving the size (blurred downsampling, see
    :class:`_ResBlock`) until the feature map is 4 per axis, optional minibatch standard
    deviation (:class:`MinibatchStd`), a 3x3 conv + LReLU, then flatten -> fully connected ->
    LReLU -> fully connected to one logit per sample. Block ``i`` outputs
    ``min(base_channels * 2**(i + 1), max_channels)`` channels. Standard PyTorch
    initialisation is used (no equalised learning rate).

    The network is built for inputs of ``image_size``; **inputs of any other spatial size are
    resized** to it (antialiased bilinear in 2D, trilinear in 3D) before
    being judged, so train and judge patches of that size where possible.

    Parameters
    ----------
    in_channels : int
        Channels of the judged image.
    cond_channels : int
        Channels of the source image concatenated in front (0: unconditional).
    dims : {2, 3}
        Spatial dimensionality.
    image_size : int or sequence of int
        Input size per axis (one int for all axes); each a power of two >= 4. In 3D a
        sequence such as ``(16, 64, 64)`` keeps anisotropic stacks unstretched: an axis is
        only halved while it is larger than 4.
    base_channels : int
        Channels of fromRGB.
    max_channels : int
        Cap on the channels of any block.
    mbstd : bool
        Append the minibatch standard deviation channel before the last conv.
    mbstd_group_size : int
        Group size of the minibatch standard deviation.
    """

    def __init__(self, in_channels: int = 1, *, cond_channels: int = 0, dims: int = 2,
                 image_size: int | Sequence[int] = 128, base_channels: int = 32,
                 max_channels: int = 256, mbstd: bool = True, mbstd_group_size: int = 4) -> None:
        super().__init__(in_channels, cond_channels=cond_channels, dims=dims)
        _check_positive(base_channels=base_channels, max_channels=max_channels)
        size = (image_size,) * dims if isinstance(image_size, int) else tuple(image_size)
        if len(size) != dims or any(not isinstance(s, int) or s < 4 or s & (s - 1)
                                    for s in size):
            raise ValueError(f"image_size must be a power of two >= 4 (or {dims} of them), "
                             f"got {image_size!r}")
        self.image_size: tuple[int, ...] = size
        conv = conv_nd(dims)
        width = min(base_channels, max_channels)
        self.from_rgb = nn.Sequential(conv(in_channels + cond_channels, width, 1),
                                      nn.LeakyReLU(0.2))
        blocks = []
        current = list(size)
        while max(current) > 4:
            scale = [2 if s > 4 else 1 for s in current]
            current = [s // f for s, f in zip(current, scale)]
            out = min(width * 2, max_channels)
            blocks.append(_ResBlock(width, out, dims, scale))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.mbstd = MinibatchStd(mbstd_group_size) if mbstd else nn.Identity()
        self.conv = nn.Sequential(conv(width + int(mbstd), width, 3, padding=1),
                                  nn.LeakyReLU(0.2))
        self.fc = nn.Sequential(nn.Linear(width * 4**dims, width), nn.LeakyReLU(0.2),
                                nn.Linear(width, 1))

    def forward(self, source: Tensor | None, target: Tensor) -> Tensor:
        """Judge ``target`` (given ``source`` if conditional).

        Parameters
        ----------
        source : torch.Tensor or None
            ``(B, cond_channels, [Z,] Y, X)``, or None when ``cond_channels == 0``.
        target : torch.Tensor
            ``(B, in_channels, [Z,] Y, X)``; resized to ``image_size`` if it differs.

        Returns
        -------
        torch.Tensor
            ``(B, 1)`` logits, one per sample.
        """
        x = self.join(source, target)
        if tuple(x.shape[2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, align_corners=False,
                              mode="bilinear" if self.dims == 2 else "trilinear",
                              antialias=self.dims == 2)
        x = self.blocks(self.from_rgb(x))
        x = self.conv(self.mbstd(x))
        return self.fc(x.flatten(1))
