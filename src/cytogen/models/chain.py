"""Chained U-Nets ("2x / 3x U-Net") for 2D and 3D image-to-image translation.

Stage 1 is a U-Net on the input; stage ``k`` is a U-Net on the channel-wise concatenation of
the input and the outputs of all earlier stages. Each stage ends in its own output
activation (Cosacak & Kizil, masks -> nuclei: ``tanh, gelu, tanh`` for the 3x U-Net, which
beat all-``tanh``; ``gelu`` in the *last* stage abolished performance). The model's output is
the last stage's output; :meth:`UNetChain.forward_all` returns every stage's output for deep
supervision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cytogen.models.blocks import FINAL_ACTIVATIONS, check_generator_input
from cytogen.models.registry import register_model
from cytogen.models.unet import UNet

__all__ = ["UNetChain"]


def _stage_activations(
    stage_activation: str | None | Sequence[str | None], stages: int
) -> list[str | None]:
    """Resolve ``stage_activation`` to one activation name (or None) per stage."""
    if stage_activation is None or isinstance(stage_activation, str):
        names: list[str | None] = [stage_activation] * stages
    elif isinstance(stage_activation, Sequence):
        names = list(stage_activation)
        if len(names) != stages:
            raise ValueError(
                f"stage_activation lists {len(names)} activation(s) but stages={stages}; "
                f"give one name for all stages or exactly one per stage"
            )
    else:
        raise ValueError(
            f"stage_activation must be a name, None or a list of one per stage, got "
            f"{stage_activation!r}"
        )
    names = [None if n == "none" else n for n in names]
    for name in names:
        if name not in FINAL_ACTIVATIONS:
            raise ValueError(
                f"stage_activation entries must be one of {FINAL_ACTIVATIONS}, got {name!r}"
            )
    return names


@register_model("unet_chain")
class UNetChain(nn.Module):
    """Chain of U-Nets, each stage seeing the input and all earlier stage outputs.

    Maps ``(B, in_channels, [Z,] Y, X) -> (B, out_channels, [Z,] Y, X)``. Stage ``k``
    (1-based) is a :class:`~cytogen.models.unet.UNet` with
    ``in_channels + (k - 1) * out_channels`` input channels and ``out_channels`` outputs,
    followed by its own output activation. ``stages=1`` is a plain U-Net ("1x U-Net"),
    ``stages=2`` and ``3`` are the "2x" and "3x U-Nets".

    Masks spread over several channels, plus the optional merged (summed) mask channel, are
    simply input channels: with 4 mask channels use ``in_channels=4``; adding the merged
    channel makes it ``in_channels=5``. The data pipeline builds that extra channel; the
    model only sees the channel count.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channel counts.
    dims : {2, 3}
        Spatial dimensionality.
    stages : int
        Number of chained U-Nets (>= 1).
    depth : int
        Down-sampling steps per U-Net (4 or 6 in the paper; any value >= 0 works).
    base_channels : int
        Channels at full resolution of every U-Net (the paper used 16 for the 2x / 3x chains
        and 16, 32 or 64 for a single U-Net).
    kernel_size : int
        Odd conv kernel size (3, 5, 7 in the paper).
    stage_activation : str or None or sequence
        Output activation of each stage, one of ``None``, ``"tanh"``, ``"sigmoid"``,
        ``"gelu"``. A single value applies to every stage; a list gives one per stage, e.g.
        ``["tanh", "gelu", "tanh"]`` (the paper's alternating 3x U-Net).
    norm : {"batch", "instance", "group", "none"}
        Normalisation after each conv.
    dropout : float
        Dropout probability at the end of each conv block.
    decoder_dropout : float
        Dropout in the three innermost decoder blocks of every U-Net (the pix2pix generator
        the paper builds on uses 0.5 there).
    channel_multiplier, max_channels : int
        Channel growth per level and cap (see :class:`~cytogen.models.unet.UNet`).
    activation : str
        Activation inside the conv blocks.
    upsample : {"transpose", "nearest"}
        Upsampling of the U-Nets.
    pool_z : bool
        3D only: if False, pooling keeps Z.

    Attributes
    ----------
    stages : torch.nn.ModuleList
        The U-Nets, in order.
    size_multiple : tuple of int
        Per spatial axis, the number input sizes must be divisible by (as for the U-Net).

    Notes
    -----
    Parameter count with the defaults (1 -> 1 channel, 2D, 3 stages, depth 4, 32 base
    channels, kernel 3): 23,288,259 (3 U-Nets of about 7.76 million each).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        dims: int = 2,
        stages: int = 3,
        depth: int = 4,
        base_channels: int = 32,
        kernel_size: int = 3,
        stage_activation: str | None | Sequence[str | None] = "tanh",
        norm: str = "batch",
        dropout: float = 0.0,
        decoder_dropout: float = 0.0,
        channel_multiplier: int = 2,
        max_channels: int = 512,
        activation: str = "relu",
        upsample: str = "transpose",
        pool_z: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
            raise ValueError(f"stages must be a positive integer, got {stages!r}")
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        activations = _stage_activations(stage_activation, stages)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        self.stage_activations: tuple[str | None, ...] = tuple(activations)
        self.stages = nn.ModuleList(
            UNet(
                in_channels + k * out_channels,
                out_channels,
                dims=dims,
                depth=depth,
                base_channels=base_channels,
                channel_multiplier=channel_multiplier,
                max_channels=max_channels,
                norm=norm,
                kernel_size=kernel_size,
                dropout=dropout,
                decoder_dropout=decoder_dropout,
                activation=activation,
                final_activation=act,
                upsample=upsample,
                pool_z=pool_z,
            )
            for k, act in enumerate(activations)
        )
        self.size_multiple: tuple[int, ...] = self.stages[0].size_multiple

    def _check_input(self, x: Tensor) -> None:
        check_generator_input(self, x)

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Run every stage and return all their outputs (for deep supervision).

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, [Z,] Y, X)``; spatial sizes divisible by ``size_multiple``.

        Returns
        -------
        list of torch.Tensor
            One ``(B, out_channels, [Z,] Y, X)`` tensor per stage, first stage first.
        """
        self._check_input(x)
        outputs: list[Tensor] = []
        for stage in self.stages:
            stage_input = torch.cat([x, *(o.to(x.dtype) for o in outputs)], dim=1)
            outputs.append(stage(stage_input))
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch; the output of the last stage.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, [Z,] Y, X)``; spatial sizes divisible by ``size_multiple``.

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, [Z,] Y, X)``.
        """
        return self.forward_all(x)[-1]
