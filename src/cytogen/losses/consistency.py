"""The unsupervised consistency loss of marker-controlled cell segmentation (paper 004, Eq 1).

For ``n`` patches of one batch with outputs ``y^p`` (probabilities, each zero-padded to the
common canvas) and the foreground mask ``M`` on that canvas::

    L = [ - sum_{p,i} y^i_p
          - lam  * sum_p sum_{i != j} y^i_p log_b(1 - y^j_p)
          + beta * sum_{p,i} y^i_p (1 - M_p) ] / n

The first term rewards segmented area, the second penalises two patches claiming the same pixel
(the text's "compared against the inverse of the prediction from another patch, 1 - y^j"), the
third penalises pixels outside the foreground. With ``log_b = log10`` and ``y^j = 0.5`` the
second term is ``lam / 3.32`` times the first, so ``lam = 3.32`` is the paper's balanced weight
(Eq 3). (The paper prints the third term with a minus sign; a penalty needs the plus.)

The pairwise sum is computed without pairs: ``S = sum_j log_b(1 - y^j)`` is accumulated on the
flat canvas with ``index_add``, gathered back at every patch pixel, and the patch's own term is
subtracted, so memory is ``O(n k^2 + canvas)``. Everything is computed in float32.
"""

from __future__ import annotations

import math

import torch

from cytogen.errors import CytogenError

#: The paper's balanced weight of the overlap term (1 / log10(2), Eq 3).
DEFAULT_LAM = 3.32
#: The paper's weight of the outside-the-mask term.
DEFAULT_BETA = 15.0


def _prepare(y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y float32 (n, K), flat canvas indices (n, K), flat mask float32) after shape checks."""
    offsets = torch.as_tensor(offsets)
    if offsets.ndim != 2 or offsets.shape[1] not in (2, 3):
        raise CytogenError(f"offsets must be (n, 2) or (n, 3) patch corners, got {tuple(offsets.shape)}")
    d = offsets.shape[1]
    if y.ndim == d + 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != d + 1 or y.shape[0] != offsets.shape[0]:
        raise CytogenError(f"patch outputs {tuple(y.shape)} do not match offsets {tuple(offsets.shape)}: "
                           f"need (n, *patch) with {d} patch axes")
    mask = torch.as_tensor(mask, device=y.device)
    if mask.ndim != d:
        raise CytogenError(f"mask canvas {tuple(mask.shape)} must have {d} axes like the offsets")
    size = torch.tensor(y.shape[1:], dtype=torch.long, device=y.device)
    canvas = torch.tensor(mask.shape, dtype=torch.long, device=y.device)
    offsets = offsets.to(device=y.device, dtype=torch.long)
    if y.shape[0] and (bool((offsets < 0).any()) or bool((offsets + size > canvas).any())):
        raise CytogenError(f"a patch leaves the mask canvas {tuple(mask.shape)}; build the canvas "
                           "with cytogen.data.marker_patches.canvas_for")
    strides = [1] * d
    for ax in range(d - 2, -1, -1):
        strides[ax] = strides[ax + 1] * int(mask.shape[ax + 1])
    base = torch.zeros((), dtype=torch.long, device=y.device)
    for ax in range(d):
        view = [1] * d
        view[ax] = int(y.shape[1 + ax])
        base = base + (torch.arange(y.shape[1 + ax], device=y.device) * strides[ax]).reshape(view)
    start = (offsets * torch.tensor(strides, dtype=torch.long, device=y.device)).sum(1)
    idx = start[:, None] + base.reshape(1, -1)
    return y.float().reshape(y.shape[0], math.prod(y.shape[1:])), idx, mask.float().reshape(-1)


def consistency_terms(y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, *,
                      log_base: float = 10.0, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """The three sums of the loss (not divided by ``n``).

    Parameters
    ----------
    y
        ``(n, k, k)`` (3D ``(n, kz, k, k)``; a singleton channel axis is accepted) probabilities.
    offsets
        ``(n, d)`` integer patch corners on the canvas (>= 0, every patch inside it).
    mask
        Foreground on the canvas (``(Hc, Wc)`` or ``(Dc, Hc, Wc)``), 0 outside the image.
    log_base
        Base of the logarithm (10: the paper's ``lam = 3.32`` is balanced).
    eps
        ``1 - y`` is clamped to at least ``eps`` inside the logarithm.

    Returns
    -------
    dict
        ``area = sum y``, ``overlap = sum_p sum_{i != j} y^i log_b(1 - y^j)`` (<= 0) and
        ``outside = sum y (1 - M)``, float32 scalars; the loss is
        ``(-area - lam * overlap + beta * outside) / n``.
    """
    if not (log_base > 0 and log_base != 1):
        raise CytogenError(f"log_base must be positive and not 1, got {log_base!r}")
    if not eps > 0:
        raise CytogenError(f"eps must be positive, got {eps!r}")
    y32, idx, m = _prepare(y, offsets, mask)
    log1m = torch.log(torch.clamp(1.0 - y32, min=eps)) / math.log(log_base)
    flat_idx = idx.reshape(-1)
    total = torch.zeros(m.numel(), dtype=torch.float32, device=y32.device)
    total = total.index_add(0, flat_idx, log1m.reshape(-1))
    others = total[flat_idx].reshape(idx.shape) - log1m
    return {"area": y32.sum(),
            "overlap": (y32 * others).sum(),
            "outside": (y32 * (1.0 - m[flat_idx].reshape(idx.shape))).sum()}


def consistency_loss(y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, *,
                     lam: float = DEFAULT_LAM, beta: float = DEFAULT_BETA, log_base: float = 10.0,
                     eps: float = 1e-6) -> torch.Tensor:
    """Eq 1 of the paper per patch: ``(-area - lam * overlap + beta * outside) / n``.

    See :func:`consistency_terms` for the arguments; ``lam`` weighs the overlap of different
    patches, ``beta`` the segmented pixels outside the foreground mask. Returns a float32 scalar
    (0 for an empty batch, still attached to ``y``'s graph).
    """
    n = int(y.shape[0])
    t = consistency_terms(y, offsets, mask, log_base=log_base, eps=eps)
    if n == 0:
        return t["area"] * 0.0
    return (-t["area"] - float(lam) * t["overlap"] + float(beta) * t["outside"]) / n
