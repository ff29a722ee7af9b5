"""U-Net generator for 2D and 3D image-to-image translation."""

from __future__ import annotations

from torch import nn

from cytogen.models.blocks import (
    ConvBlock,
    EncoderDecoder,
    validate_unet_args,
    Down,
    Up,
    conv_nd,
    make_activation,
)
from cytogen.models.registry import register_model

__all__ = ["UNet"]


@register_model("unet")
class UNet(EncoderDecoder):
    """U-Net: conv blocks, max-pool down, transposed-conv (or nearest) up, skip concatenation.

    Maps ``(B, in_channels, [Z,] Y, X) -> (B, out_channels, [Z,] Y, X)``.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channel counts.
    dims : {2, 3}
        Spatial dimensionality (``Conv2d`` or ``Conv3d`` etc.).
    depth : int
        Number of down-sampling steps (0 gives a single conv block and the head).
    base_channels : int
        Channels at full resolution.
    channel_multiplier : int
        Channel growth per level; level ``i`` has
        ``min(base_channels * channel_multiplier**i, max_channels)`` channels.
    max_channels : int
        Cap on the channels of any level.
    norm : {"batch", "instance", "group", "none"}
        Normalisation after each conv.
    kernel_size : int
        Odd conv kernel size (3, 5, 7, ...), "same" padding.
    decoder_dropout : float
        Dropout in the three innermost decoder blocks only (pix2pix's noise source; 0.5
        there), on top of ``dropout``.
    dropout : float
        Dropout probability at the end of each conv block.
    activation : {"relu", "leaky_relu", "gelu", "silu", "elu"}
        Activation inside the blocks.
    final_activation : {None, "tanh", "sigmoid", "gelu"}
        Activation applied after the 1x1 conv head.
    upsample : {"transpose", "nearest"}
        Transposed conv, or nearest-neighbour upsampling followed by a conv.
    pool_z : bool
        3D only: if False, pooling and upsampling keep Z (anisotropic stacks with few
        slices).

    Attributes
    ----------
    size_multiple : tuple of int
        Per spatial axis, the number the input size must be divisible by:
        ``(2**depth,) * dims``, or ``(1, 2**depth, 2**depth)`` for 3D with
        ``pool_z=False``. Pass it to :func:`cytogen.predict.predict_tiled`, which pads.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        dims: int = 2,
        depth: int = 4,
        base_channels: int = 32,
        channel_multiplier: int = 2,
        max_channels: int = 512,
        norm: str = "batch",
        kernel_size: int = 3,
        dropout: float = 0.0,
        decoder_dropout: float = 0.0,
        activation: str = "relu",
        final_activation: str | None = None,
        upsample: str = "transpose",
        pool_z: bool = True,
    ) -> None:
        super().__init__()
        final_activation = validate_unet_args(
            dims=dims, depth=depth, final_activation=final_activation, pool_z=pool_z,
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_multiplier=channel_multiplier, max_channels=max_channels)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        self.depth = depth
        scale = (2,) * dims if pool_z else (1, 2, 2)
        self.size_multiple: tuple[int, ...] = tuple(s**depth for s in scale)

        widths = [min(base_channels * channel_multiplier**i, max_channels)
                  for i in range(depth + 1)]
        block = dict(dims=dims, kernel_size=kernel_size, norm=norm, activation=activation,
                     dropout=dropout)

        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = in_channels
        for i in range(depth):
            self.encoders.append(ConvBlock(channels, widths[i], **block))
            self.downs.append(Down(dims, scale))
            channels = widths[i]
        self.bottleneck = ConvBlock(channels, widths[depth], **block)

        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(Up(widths[i + 1], widths[i], dims=dims, scale=scale, mode=upsample,
                               kernel_size=kernel_size))
            dec = dict(block, dropout=max(dropout, decoder_dropout)) if i >= depth - 3 else block
            self.decoders.append(ConvBlock(2 * widths[i], widths[i], **dec))

        self.head = conv_nd(dims)(widths[0], out_channels, kernel_size=1)
        self.final_activation = make_activation(final_activation)
