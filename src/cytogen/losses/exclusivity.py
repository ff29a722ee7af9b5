"""Exclusivity loss for retraining one structure's model against the others (Sun et al. 2022, Eq 1).

The paper adds to the reconstruction loss a term that "maximizes the mean element-wise absolute
difference between the prediction of the current model and the maximum intensity at each pixel
position of all other subcellular component predictions": where the current structure is the
highest, its prediction is pushed further above the others; where it is not, further below.
Written literally, ``-mean|y - r|`` is unbounded (a prediction can run off to +/- infinity
where the reconstruction loss is weaker than the term, e.g. an L1 reconstruction weighted less
than ``p``). cytogen uses the bounded hinge form

    L_exc(y, r) = mean_x( relu(margin - |y(x) - r(x)|) ),     0 <= L_exc <= margin,

with ``r`` the frozen per-pixel maximum of the other structures' predictions (no gradient) on
the same normalised scale as the model's target. Its gradient is the paper's wherever the gap is
below ``margin``: ``-sign(y - r)`` (up where ``y`` is the highest, down where another structure
is higher); pixels already ``margin`` apart (e.g. a structure that is clearly on or clearly off)
are left to the reconstruction loss alone. ``margin = 1`` is the whole p1..p99.8 range of the
percentile-normalised target, so in practice the hinge only stops runaway growth. The total
retraining loss is ``recon + p * L_exc`` (U-Net) or ``adv + lambda * recon + p * L_exc`` (GAN).
The public authors' code was not found; this bounded form is cytogen's choice.
"""

from __future__ import annotations

import numpy as np
import torch

from cytogen.errors import CytogenError

__all__ = ["exclusivity_loss", "max_of_others", "with_exclusivity"]


def max_of_others(stack: torch.Tensor | np.ndarray, index: int) -> torch.Tensor | np.ndarray:
    """Per-pixel maximum over all structures but ``index``.

    Parameters
    ----------
    stack
        ``(S, ...)`` predictions of ``S >= 2`` structures on a common scale (tensor or array).
    index
        The structure to leave out.

    Returns
    -------
    Tensor or ndarray
        ``stack.shape[1:]``, of the input's kind.
    """
    s = int(stack.shape[0])
    if s < 2:
        raise CytogenError(f"exclusivity needs at least 2 structures, got {s}")
    if not -s <= index < s:
        raise CytogenError(f"structure index {index} is out of range for {s} structures")
    keep = [i for i in range(s) if i != index % s]
    if isinstance(stack, torch.Tensor):
        return stack[keep].amax(dim=0)
    return np.asarray(stack)[keep].max(axis=0)


def exclusivity_loss(pred: torch.Tensor, reference: torch.Tensor, margin: float = 1.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bounded exclusivity term ``mean(relu(margin - |pred - reference|))`` (see module docstring).

    Parameters
    ----------
    pred
        ``(B, C, ...)`` prediction of the model being trained (normalised target units).
    reference
        ``(B, 1, ...)`` or ``(B, C, ...)`` frozen maximum of the other structures' predictions,
        on the same scale; detached here so no gradient reaches it.
    margin
        Gap (normalised units) beyond which a pixel no longer contributes; > 0.
    mask
        Optional ``(B, 1 | C, ...)`` weights in [0, 1]: the mean is over the weighted pixels.

    Returns
    -------
    Tensor
        Scalar in ``[0, margin]``.
    """
    if margin <= 0:
        raise CytogenError(f"loss.exclusivity_margin must be > 0, got {margin}")
    if reference.shape[0] != pred.shape[0] or reference.shape[2:] != pred.shape[2:] \
            or reference.shape[1] not in (1, pred.shape[1]):
        raise CytogenError(f"exclusivity reference of shape {tuple(reference.shape)} does not match the "
                           f"prediction {tuple(pred.shape)}; it needs 1 or {pred.shape[1]} channel(s) "
                           "and the same batch and spatial size")
    gap = (pred - reference.detach().to(pred.dtype)).abs()
    term = torch.relu(margin - gap)
    if mask is None:
        return term.mean()
    w = mask.to(pred.dtype).expand_as(term)
    return (w * term).sum() / w.sum().clamp_min(1e-12)


def with_exclusivity(recon: torch.Tensor, pred: torch.Tensor, reference: torch.Tensor | None,
                     weight: float, margin: float = 1.0) -> torch.Tensor:
    """``recon + weight * exclusivity_loss(pred, reference)``; with ``weight == 0`` exactly ``recon``.

    Raises
    ------
    CytogenError
        When ``weight > 0`` and there is no reference (the patch lacks the other structures'
        predictions), or for a negative weight.
    """
    if weight < 0:
        raise CytogenError(f"loss.exclusivity_weight must be >= 0, got {weight}")
    if weight == 0:
        return recon
    if reference is None:
        raise CytogenError("loss.exclusivity_weight > 0 needs the reference (the per-pixel maximum of the other "
                           "structures' predictions) in every batch; add a 'reference' column to the manifest")
    return recon + weight * exclusivity_loss(pred, reference, margin)
