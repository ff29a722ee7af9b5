"""``Conv3d`` that trains in float32 where the CPU's bf16 weight gradient is unreliable.

On CPU, oneDNN's bf16 3D convolution (PyTorch 2.13) sometimes returns NaN in the *weight
gradient* when the input is thinner in z than the kernel: the same input gives a finite gradient
one call and NaN the next. Measured on a 2-core AMD EPYC (avx512_bf16, no AMX): a 3x3x3 kernel
on a 2-slice input, 8 -> 16 channels, batch 2, gave NaN in 187 of 200 backward passes; 1, 3 and
4 slices, 2D convolutions, the forward pass and the input gradient never did. A 16-slice 3D
patch reaches z = 2 at the bottleneck of a depth-3 U-Net, so 3D recipes hit it.

Such layers are the smallest of a network, so this class runs exactly them in float32 (autocast
off for that one call) while the weights need a gradient on CPU under autocast; everything else,
and all inference, keeps bf16. Its parameters and state dict are those of ``nn.Conv3d``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Conv3d"]


class Conv3d(nn.Conv3d):
    """``nn.Conv3d``; float32 for inputs thinner in z than the kernel while training under CPU bf16 autocast."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and x.shape[-3] < self.kernel_size[0] and torch.is_grad_enabled()
                and self.weight.requires_grad and torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.to(self.weight.dtype))
        return super().forward(x)
