"""Residual blocks of the Statistical Cell beta-VAEs (Donovan-Maiye et al. 2022, Fig 7), 2D or 3D.

Encoder block (halves every spatial axis)::

    main   = conv 4x4 stride 2 -> norm -> act -> conv 3x3 -> norm
    bypass = conv 1x1 -> average pool 2           (bypass="pool", the paper's and authors' default)
           | conv 3x3 stride 2                    (bypass="conv3", the paper's alternative)
    out    = act(main + bypass [+ conditioning])

Decoder block (doubles every spatial axis)::

    main   = transposed conv 4x4 stride 2 -> norm -> act -> conv 3x3 -> norm
    bypass = conv 1x1 -> linear (bi/trilinear) upsampling by 2
    out    = act(main + bypass + cond_ref(interpolated reference) + cond_class(one-hot))

The 1x1 bypass conv runs before the upsampling: both are linear and a linear interpolation
preserves constants, so this equals "upsample then 1x1 conv" at a quarter (2D) / eighth (3D) of
the cost. The conditioning paths of the target model follow the paper: the reference is linearly
interpolated to the block's output size and passed through a 1x1 conv; the structure type
(one-hot) goes through a linear layer (a learned vector per class) added at every pixel.

Every conv, transposed conv and linear layer is wrapped in
:func:`torch.nn.utils.parametrizations.spectral_norm` when ``spectral_norm=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from cytogen.errors import CytogenError
from cytogen.models.blocks import conv_nd, conv_transpose_nd, make_activation, make_norm

__all__ = ["BYPASSES", "DownBlock", "UpBlock", "check_vae_choices", "check_vae_size", "sn_wrap"]

BYPASSES = ("pool", "conv3")


def sn_wrap(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` with a spectral-norm parametrization of its weight when ``enabled``."""
    return _sn(module) if enabled else module


def check_vae_size(size: Sequence[int], dims: int, n_blocks: int, what: str) -> tuple[int, ...]:
    """Validate the crop size of a VAE: ``dims`` positive integers divisible by ``2**n_blocks``.

    Raises
    ------
    CytogenError
        Naming the size and the fix (a multiple of ``2**n_blocks`` or fewer ``widths``).
    """
    if dims not in (2, 3):
        raise CytogenError(f"{what}: dims must be 2 or 3, got {dims!r}")
    try:
        size_t = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise CytogenError(f"{what}: size must be {dims} integers, got {size!r}") from None
    if len(size_t) != dims or any(s <= 0 for s in size_t):
        raise CytogenError(f"{what}: size {list(size_t)} must have {dims} positive entries "
                           f"(one per spatial axis of a {dims}D crop)")
    m = 2 ** n_blocks
    if any(s % m for s in size_t):
        fixed = [max(m, round(s / m) * m) for s in size_t]
        raise CytogenError(
            f"{what}: size {list(size_t)} is not divisible by 2**len(widths) = {m} on every axis "
            f"({n_blocks} blocks each halve every axis); crop the cells to e.g. {fixed} "
            f"or use fewer widths")
    return size_t


def check_vae_choices(norm: str, activation: str, bypass: str) -> None:
    """Refuse an unknown norm, activation or bypass with a CytogenError."""
    if bypass not in BYPASSES:
        raise CytogenError(f"bypass must be one of {BYPASSES}, got {bypass!r}")
    try:
        make_norm(norm, 4, 2)
        make_activation(activation)
    except ValueError as exc:
        raise CytogenError(str(exc)) from None


class _Conditioning(nn.Module):
    """Additive conditioning of one block: 1x1 conv of the interpolated reference, and a learned
    vector per class (one-hot through a linear layer), both with spectral norm."""

    def __init__(self, dims: int, out_channels: int, ref_channels: int, n_classes: int,
                 spectral_norm: bool) -> None:
        super().__init__()
        self.dims = dims
        self.ref = (sn_wrap(conv_nd(dims)(ref_channels, out_channels, 1), spectral_norm)
                    if ref_channels > 0 else None)
        self.cls = (sn_wrap(nn.Linear(n_classes, out_channels, bias=False), spectral_norm)
                    if n_classes > 0 else None)

    def forward(self, x: Tensor, x_ref: Tensor | None, onehot: Tensor | None) -> Tensor:
        if self.ref is not None and x_ref is not None:
            if tuple(x_ref.shape[2:]) != tuple(x.shape[2:]):
                mode = "bilinear" if self.dims == 2 else "trilinear"
                x_ref = F.interpolate(x_ref, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
            x = x + self.ref(x_ref)
        if self.cls is not None and onehot is not None:
            vec = self.cls(onehot)
            x = x + vec.reshape(vec.shape[0], vec.shape[1], *([1] * self.dims)).to(x.dtype)
        return x


class DownBlock(nn.Module):
    """Encoder residual block (Fig 7): halves every spatial axis, ``in_ch -> out_ch``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    dims : {2, 3}
        Spatial dimensionality.
    norm : str
        ``"batch"`` (the authors'), ``"instance"``, ``"group"`` or ``"none"``.
    activation : str
        ``"relu"`` (the authors'), ``"leaky_relu"``, ...
    bypass : {"pool", "conv3"}
        1x1 conv + average pooling, or a 3x3 stride-2 conv.
    spectral_norm : bool
        Spectral normalisation of every conv.
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int, *, norm: str = "batch",
                 activation: str = "relu", bypass: str = "pool", spectral_norm: bool = True) -> None:
        super().__init__()
        conv = conv_nd(dims)
        bias = norm == "none"
        self.main = nn.Sequential(
            sn_wrap(conv(in_channels, out_channels, 4, 2, 1, bias=bias), spectral_norm),
            make_norm(norm, out_channels, dims),
            make_activation(activation),
            sn_wrap(conv(out_channels, out_channels, 3, 1, 1, bias=bias), spectral_norm),
            make_norm(norm, out_channels, dims),
        )
        if bypass == "pool":
            pool = nn.AvgPool2d(2) if dims == 2 else nn.AvgPool3d(2)
            self.bypass = nn.Sequential(sn_wrap(conv(in_channels, out_channels, 1), spectral_norm), pool)
        else:
            self.bypass = sn_wrap(conv(in_channels, out_channels, 3, 2, 1), spectral_norm)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.main(x) + self.bypass(x))


class UpBlock(nn.Module):
    """Decoder residual block (Fig 7): doubles every spatial axis, ``in_ch -> out_ch``, with the
    optional conditioning on an interpolated reference and a class (``ref_channels``,
    ``n_classes`` > 0) added before the last activation.

    Parameters are those of :class:`DownBlock` plus ``ref_channels`` and ``n_classes``.
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int, *, norm: str = "batch",
                 activation: str = "relu", spectral_norm: bool = True, ref_channels: int = 0,
                 n_classes: int = 0) -> None:
        super().__init__()
        self.dims = dims
        conv = conv_nd(dims)
        bias = norm == "none"
        self.main = nn.Sequential(
            sn_wrap(conv_transpose_nd(dims)(in_channels, out_channels, 4, 2, 1, bias=bias), spectral_norm),
            make_norm(norm, out_channels, dims),
            make_activation(activation),
            sn_wrap(conv(out_channels, out_channels, 3, 1, 1, bias=bias), spectral_norm),
            make_norm(norm, out_channels, dims),
        )
        self.bypass = sn_wrap(conv(in_channels, out_channels, 1), spectral_norm)
        self.cond = (_Conditioning(dims, out_channels, ref_channels, n_classes, spectral_norm)
                     if ref_channels > 0 or n_classes > 0 else None)
        self.act = make_activation(activation)

    def forward(self, x: Tensor, x_ref: Tensor | None = None, onehot: Tensor | None = None) -> Tensor:
        mode = "bilinear" if self.dims == 2 else "trilinear"
        skip = F.interpolate(self.bypass(x), scale_factor=2, mode=mode, align_corners=False)
        y = self.main(x) + skip
        if self.cond is not None:
            y = self.cond(y, x_ref, onehot)
        return self.act(y)
