"""Fold inference-mode BatchNorm into the convolution before it: less work per pixel, same output.

In eval mode a BatchNorm layer is a per-channel affine map, so ``conv -> BN`` equals one
convolution with scaled weights and a bias (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`).
Folding removes one full read and write of every activation per BatchNorm layer. The result
matches the unfolded network to float32 rounding (about 1e-5 relative; tested). ONNX Runtime
does the same fusion when it loads a graph; this gives PyTorch prediction the same saving.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """True for a plain convolution followed by a BatchNorm that has running statistics."""
    return (isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats
            and norm.running_mean is not None and conv.out_channels == norm.num_features)


def fold_batchnorm(net: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``net`` with every ``conv -> BatchNorm`` pair of an ``nn.Sequential``
    folded into one convolution (the BatchNorm becomes ``nn.Identity``).

    Parameters
    ----------
    net : torch.nn.Module
        Left unchanged.

    Returns
    -------
    (torch.nn.Module, int)
        The folded copy (in eval mode: folding is only valid there) and how many layers were
        folded (0 leaves an equal copy).
    """
    folded = copy.deepcopy(net).eval()
    count = 0
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if foldable(seq[i], seq[i + 1]):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
                count += 1
    return folded, count
