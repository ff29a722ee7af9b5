"""Recurrent residual U-Net (R2U-Net), the generator of Vox2Vox-RU (Sun et al. 2022), in 2D and 3D.

The double conv blocks of a U-Net are replaced by recurrent residual convolutional units
(RRCU): a 1x1 conv maps the input to the block's channels, two recurrent conv layers follow,
and the block returns the sum of the 1x1 output and the recurrent path. A recurrent conv
layer applies the *same* ``conv -> norm -> activation`` unit ``t + 1`` times, feeding the
block input plus the previous state back in, so it deepens the network without adding
parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from cytogen.models.blocks import (
    Down,
    EncoderDecoder,
    validate_unet_args,
    Up,
    conv_nd,
    make_activation,
    make_norm,
)
from cytogen.models.registry import register_model

__all__ = ["R2UNet", "RecurrentConv", "RecurrentResidualBlock"]


def _check_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")


class RecurrentConv(nn.Module):
    """Recurrent conv layer: ``y = f(x)``, then ``t`` times ``y = f(x + y)``.

    ``f`` is one ``conv -> norm -> activation`` unit whose weights (and norm parameters) are
    shared across all steps, so the parameter count does not depend on ``t``. ``t=0`` is a
    plain ``conv -> norm -> activation`` layer.

    Parameters
    ----------
    channels : int
        Input and output channels.
    dims : {2, 3}
        Spatial dimensionality.
    t : int
        Number of recurrent steps after the first pass (>= 0).
    kernel_size : int
        Odd kernel size ("same" padding).
    norm : str
        See :func:`cytogen.models.blocks.make_norm`.
    activation : str
        See :func:`cytogen.models.blocks.make_activation`.
    """

    def __init__(
        self,
        channels: int,
        *,
        dims: int = 2,
        t: int = 2,
        kernel_size: int = 3,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise ValueError(f"t must be a non-negative integer, got {t!r}")
        self.t = t
        self.unit = nn.Sequential(
            conv_nd(dims)(channels, channels, kernel_size, padding=kernel_size // 2,
                          bias=norm == "none"),
            make_norm(norm, channels, dims),
            make_activation(activation),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the shared unit ``t + 1`` times."""
        y = self.unit(x)
        for _ in range(self.t):
            y = self.unit(x + y)
        return y


class RecurrentResidualBlock(nn.Module):
    """Recurrent residual convolutional unit (RRCU).

    ``p = conv1x1(x)``; ``out = p + R2(R1(p))`` with two :class:`RecurrentConv` layers,
    optionally followed by dropout.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    dims : {2, 3}
        Spatial dimensionality.
    t : int
        Recurrent steps of each recurrent conv layer.
    kernel_size : int
        Odd kernel size of the recurrent convs.
    norm : str
        Normalisation inside the recurrent convs.
    activation : str
        Activation inside the recurrent convs.
    dropout : float
        Dropout probability after the block (0 disables it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dims: int = 2,
        t: int = 2,
        kernel_size: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.project = conv_nd(dims)(in_channels, out_channels, kernel_size=1)
        layer = dict(dims=dims, t=t, kernel_size=kernel_size, norm=norm, activation=activation)
        self.recurrent = nn.Sequential(RecurrentConv(out_channels, **layer),
                                       RecurrentConv(out_channels, **layer))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum of the 1x1 projection and the recurrent path."""
        p = self.project(x)
        return self.dropout(p + self.recurrent(p))


@register_model("r2unet")
class R2UNet(EncoderDecoder):
    """R2U-Net: a U-Net whose conv blocks are recurrent residual units (Vox2Vox-RU generator).

    Maps ``(B, in_channels, [Z,] Y, X) -> (B, out_channels, [Z,] Y, X)`` with max-pool
    down-sampling, transposed-conv up-sampling and skip concatenation.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channel counts.
    dims : {2, 3}
        Spatial dimensionality.
    depth : int
        Number of down-sampling steps (>= 0).
    base_channels : int
        Channels at full resolution; level ``i`` has
        ``min(base_channels * 2**i, max_channels)`` channels.
    t : int
        Recurrent steps per recurrent conv layer (``t=0``: plain residual blocks). More
        steps deepen the network without adding parameters.
    norm : {"batch", "instance", "group", "none"}
        Normalisation inside the recurrent convs.
    kernel_size : int
        Odd conv kernel size.
    dropout : float
        Dropout probability after each block.
    final_activation : {None, "tanh", "sigmoid", "gelu"}
        Activation after the 1x1 conv head.
    max_channels : int
        Cap on the channels of any level.
    pool_z : bool
        3D only: if False, pooling and up-sampling keep Z (anisotropic stacks).

    Attributes
    ----------
    size_multiple : tuple of int
        Per spatial axis, the number input sizes must be divisible by: ``(2**depth,) * dims``
        or ``(1, 2**depth, 2**depth)`` with ``pool_z=False``.

    Notes
    -----
    Parameter count with the defaults (1 -> 1 channel, 2D, depth 4, 32 base channels,
    kernel 3): 8,904,417, whatever ``t``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        dims: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        t: int = 2,
        norm: str = "batch",
        kernel_size: int = 3,
        dropout: float = 0.0,
        final_activation: str | None = None,
        max_channels: int = 512,
        pool_z: bool = True,
    ) -> None:
        super().__init__()
        final_activation = validate_unet_args(
            dims=dims, depth=depth, final_activation=final_activation, pool_z=pool_z,
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            max_channels=max_channels)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        self.depth = depth
        self.t = t
        scale = (2,) * dims if pool_z else (1, 2, 2)
        self.size_multiple: tuple[int, ...] = tuple(s**depth for s in scale)

        widths = [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]
        block = dict(dims=dims, t=t, kernel_size=kernel_size, norm=norm, dropout=dropout)

        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = in_channels
        for i in range(depth):
            self.encoders.append(RecurrentResidualBlock(channels, widths[i], **block))
            self.downs.append(Down(dims, scale))
            channels = widths[i]
        self.bottleneck = RecurrentResidualBlock(channels, widths[depth], **block)

        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(Up(widths[i + 1], widths[i], dims=dims, scale=scale,
                               mode="transpose"))
            self.decoders.append(RecurrentResidualBlock(2 * widths[i], widths[i], **block))

        self.head = conv_nd(dims)(widths[0], out_channels, kernel_size=1)
        self.final_activation = make_activation(final_activation)
