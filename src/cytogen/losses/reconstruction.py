"""Pixel-wise reconstruction losses for translation.

``masked_l1`` is the weighted reconstruction loss of Vasudevan et al. (2023, actin -> nucleus):
pixels inside the mask ``M`` (e.g. nuclei) weigh ``alpha`` times more than background pixels,

    L = mean_x( alpha * M(x) * |out(x) - gt(x)| + (1 - M(x)) * |out(x) - gt(x)| ),

so that a generator cannot win by predicting the mostly dark background everywhere. The paper
uses ``alpha = 10`` (the default here); another ``alpha`` is the same loss family but not the
paper's setting.
"""

from __future__ import annotations

from typing import Callable

import torch

from cytogen.errors import CytogenError


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error."""
    return (pred - target).abs().mean()


def mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error."""
    return (pred - target).pow(2).mean()


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                   alpha: float = 10.0) -> torch.Tensor:
    """L1 with weight ``alpha`` on mask pixels and 1 elsewhere, averaged over all pixels.

    Parameters
    ----------
    pred, target
        ``(B, C, ...)`` tensors.
    mask
        ``(B, 1, ...)`` or ``(B, C, ...)`` in [0, 1]; broadcast over channels.
    alpha
        Weight of mask pixels relative to background (10 in Vasudevan et al. 2023).
    """
    if mask is None:
        raise CytogenError("masked_l1 needs a mask; add a 'mask' column or set loss.mask=auto")
    weight = 1.0 + (alpha - 1.0) * mask.to(pred.dtype)
    return (weight * (pred - target).abs()).mean()


def get_loss(name: str, alpha: float = 10.0) -> Callable[..., torch.Tensor]:
    """Loss function ``f(pred, target, mask)`` by name: ``l1``, ``mse`` or ``masked_l1``."""
    if name == "l1":
        return l1_loss
    if name == "mse":
        return mse_loss
    if name == "masked_l1":
        return lambda p, t, m=None: masked_l1_loss(p, t, m, alpha)
    raise CytogenError(f"unknown loss {name!r}; choose l1, mse or masked_l1")
