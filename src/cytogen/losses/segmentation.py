"""Loss of the three-class nucleus segmenter: weighted cross-entropy + soft Dice of the foreground.

Computed in float32 (also under bf16 autocast). ``logits`` ``(B, 3, ...)``; ``classes``
``(B, 1, ...)`` holding 0 (background), 1 (interior), 2 (boundary) as floats (the patch pipeline
carries float32 arrays).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_loss(logits: torch.Tensor, classes: torch.Tensor, *, boundary_weight: float = 3.0,
               dice_weight: float = 1.0) -> torch.Tensor:
    """Mean pixel cross-entropy, boundary pixels weighted ``boundary_weight``, plus ``dice_weight``
    times ``1 - Dice`` of the predicted foreground probability ``1 - P(background)``."""
    logits = logits.float()
    target = classes[:, 0].round().long()
    weight = torch.tensor([1.0, 1.0, float(boundary_weight)], device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight)
    if not dice_weight:
        return ce
    fg = 1.0 - logits.softmax(dim=1)[:, 0]
    truth = (target > 0).float()
    dice = (2 * (fg * truth).sum() + 1.0) / (fg.sum() + truth.sum() + 1.0)
    return ce + float(dice_weight) * (1.0 - dice)
