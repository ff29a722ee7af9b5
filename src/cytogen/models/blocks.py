"""Dimension-agnostic building blocks (2D or 3D chosen by ``dims``).

All blocks keep spatial sizes (``"same"`` padding) except :class:`Down` and :class:`Up`,
which halve / double them by ``scale`` (per spatial axis). They use only ops that
support ``torch.channels_last`` / ``channels_last_3d`` and bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cytogen.models.protocol import check_generator_input
from cytogen.models.safe_conv import Conv3d

__all__ = [
    "ACTIVATIONS",
    "FINAL_ACTIVATIONS",
    "NORMS",
    "ConvBlock",
    "EncoderDecoder",
    "Down",
    "Up",
    "check_generator_input",
    "conv_nd",
    "make_activation",
    "make_norm",
    "validate_unet_args",
]

NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu")
FINAL_ACTIVATIONS = (None, "tanh", "sigmoid", "gelu")
UPSAMPLES = ("transpose", "nearest")


def _check_dims(dims: int) -> None:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")


def conv_nd(dims: int) -> type[nn.Module]:
    """Return ``nn.Conv2d`` or :class:`~cytogen.models.safe_conv.Conv3d` (``nn.Conv3d`` that
    avoids a CPU bf16 weight-gradient fault on thin inputs)."""
    _check_dims(dims)
    return nn.Conv2d if dims == 2 else Conv3d


def conv_transpose_nd(dims: int) -> type[nn.Module]:
    """Return ``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    _check_dims(dims)
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


def max_pool_nd(dims: int) -> type[nn.Module]:
    """Return ``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    _check_dims(dims)
    return nn.MaxPool2d if dims == 2 else nn.MaxPool3d


def _group_count(channels: int, max_groups: int = 8) -> int:
    """Largest number of groups <= ``max_groups`` that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(norm: str, channels: int, dims: int) -> nn.Module:
    """Build a normalisation layer.

    Parameters
    ----------
    norm : {"batch", "instance", "group", "none"}
        Kind of normalisation; ``"group"`` uses up to 8 groups that divide ``channels``;
        ``"instance"`` has learnable affine parameters.
    channels : int
        Number of channels normalised.
    dims : {2, 3}
        Spatial dimensionality.

    Returns
    -------
    torch.nn.Module
        The layer (``nn.Identity`` for ``"none"``).
    """
    _check_dims(dims)
    if norm == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def make_activation(name: str | None) -> nn.Module:
    """Build an activation by name (``None`` or ``"none"`` gives ``nn.Identity``).

    Parameters
    ----------
    name : str or None
        One of ``"relu"``, ``"leaky_relu"`` (slope 0.2), ``"gelu"``, ``"silu"``, ``"elu"``,
        ``"tanh"``, ``"sigmoid"``, ``"none"`` or ``None``.

    Returns
    -------
    torch.nn.Module
        The activation module.
    """
    table = {
        "relu": lambda: nn.ReLU(inplace=True),
        "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
        "gelu": nn.GELU,
        "silu": lambda: nn.SiLU(inplace=True),
        "elu": lambda: nn.ELU(inplace=True),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "none": nn.Identity,
    }
    if name is None:
        return nn.Identity()
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


def _check_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")


class ConvBlock(nn.Sequential):
    """Two ``conv -> norm -> activation`` units, optionally followed by dropout.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    dims : {2, 3}
        Spatial dimensionality.
    kernel_size : int
        Odd kernel size; padding keeps spatial sizes ("same").
    norm : str
        See :func:`make_norm`. Convs have no bias when a norm follows them.
    activation : str
        See :func:`make_activation`.
    dropout : float
        Element-wise dropout probability after the block (0 disables it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dims: int = 2,
        kernel_size: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        _check_kernel(kernel_size)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        conv = conv_nd(dims)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(2):
            layers += [
                conv(channels, out_channels, kernel_size, padding=kernel_size // 2,
                     bias=norm == "none"),
                make_norm(norm, out_channels, dims),
                make_activation(activation),
            ]
            channels = out_channels
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class Down(nn.Module):
    """Max-pool by ``scale`` per spatial axis (e.g. ``(1, 2, 2)`` keeps Z)."""

    def __init__(self, dims: int, scale: Sequence[int]) -> None:
        super().__init__()
        self.pool = max_pool_nd(dims)(kernel_size=tuple(scale), stride=tuple(scale))

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``x``."""
        return self.pool(x)


class Up(nn.Module):
    """Upsample by ``scale`` per axis and map ``in_channels`` to ``out_channels``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    dims : {2, 3}
        Spatial dimensionality.
    scale : sequence of int
        Upsampling factor per spatial axis.
    mode : {"transpose", "nearest"}
        ``"transpose"``: transposed conv with kernel = stride = ``scale``;
        ``"nearest"``: nearest-neighbour upsampling followed by a ``kernel_size`` conv.
    kernel_size : int
        Conv kernel size for ``mode="nearest"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dims: int,
        scale: Sequence[int],
        mode: str = "transpose",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        scale = tuple(int(s) for s in scale)
        if mode == "transpose":
            self.up = conv_transpose_nd(dims)(in_channels, out_channels, scale, stride=scale)
        elif mode == "nearest":
            _check_kernel(kernel_size)
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=tuple(float(s) for s in scale), mode="nearest"),
                conv_nd(dims)(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            )
        else:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x``."""
        return self.up(x)


def validate_unet_args(*, dims: int, depth: int, final_activation: str | None, pool_z: bool,
                       **positive: int) -> str | None:
    """Check the arguments U-Net-shaped generators share; returns the normalised final activation.

    ``positive`` holds the counts that must be positive integers (channels, widths).
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    for label, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    if final_activation == "none":
        final_activation = None
    if final_activation not in FINAL_ACTIVATIONS:
        raise ValueError(
            f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}"
        )
    if not pool_z and dims != 3:
        raise ValueError("pool_z=False only applies to dims=3")
    return final_activation


class EncoderDecoder(nn.Module):
    """Shared input check and forward pass of U-Net-shaped generators.

    Subclasses build ``encoders``, ``downs``, ``bottleneck``, ``ups``, ``decoders``, ``head``
    and ``final_activation`` and set ``in_channels``, ``dims``, ``depth`` and ``size_multiple``.
    """

    def _check_input(self, x: Tensor) -> None:
        check_generator_input(self, x)

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, [Z,] Y, X)``; spatial sizes divisible by ``size_multiple``.

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, [Z,] Y, X)``.
        """
        self._check_input(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = up(x)
            x = decoder(torch.cat([skip, x.to(skip.dtype)], dim=1))
        return self.final_activation(self.head(x))
