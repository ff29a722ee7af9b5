"""The StyleGAN2 residual discriminator (Karras et al. 2020), 2D or 3D.

Vasudevan et al. (2023) adopt it as the critic of TFill-Coarse: it downsamples the image to 4 per
axis and judges it with fully connected layers, one logit per sample. Registered as
``"stylegan2"`` in :data:`cytogen.models.discriminators.DISCRIMINATORS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cytogen.models.blocks import conv_nd
from cytogen.models.discriminators import (
    DiscriminatorBase,
    _check_positive,
    register_discriminator,
)

__all__ = ["MinibatchStd", "StyleGAN2Discriminator"]


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
    conditional : bool
        False: judge the target alone and ignore the source, as Vasudevan et al. (2023) do
        (see :class:`DiscriminatorBase`).
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
                 conditional: bool = True, image_size: int | Sequence[int] = 128,
                 base_channels: int = 32, max_channels: int = 256, mbstd: bool = True,
                 mbstd_group_size: int = 4) -> None:
        super().__init__(in_channels, cond_channels=cond_channels, dims=dims,
                         conditional=conditional)
        _check_positive(base_channels=base_channels, max_channels=max_channels)
        size = (image_size,) * dims if isinstance(image_size, int) else tuple(image_size)
        if len(size) != dims or any(not isinstance(s, int) or s < 4 or s & (s - 1)
                                    for s in size):
            raise ValueError(f"image_size must be a power of two >= 4 (or {dims} of them), "
                             f"got {image_size!r}")
        self.image_size: tuple[int, ...] = size
        conv = conv_nd(dims)
        width = min(base_channels, max_channels)
        self.from_rgb = nn.Sequential(conv(in_channels + self.cond_channels, width, 1),
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
            ``(B, cond_channels, [Z,] Y, X)``, or None when ``cond_channels == 0``; ignored
            when built with ``conditional=False``.
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
