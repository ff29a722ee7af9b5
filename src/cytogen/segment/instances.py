"""Instances from a three-class prediction (background, interior, boundary): seeded watershed.

Seeds are the connected regions where ``P(interior) > seed_threshold``; each grows over the
foreground (``P(interior) + P(boundary) > fg_threshold``) down the interior probability, so
touching nuclei split along their predicted boundary band. Foreground regions that no seed
reaches become objects of their own; objects under ``min_size_px`` are dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from cytogen.errors import CytogenError

__all__ = ["classes_to_instances"]


def classes_to_instances(probs: np.ndarray, *, fg_threshold: float = 0.5, seed_threshold: float = 0.5,
                         min_size_px: float = 8.0) -> np.ndarray:
    """``int32`` instance labels ``(Y, X)`` / ``(Z, Y, X)`` from ``probs`` ``(3, ...)`` (classes
    background, interior, boundary; e.g. a softmax), numbered 1..N in raster order."""
    probs = np.asarray(probs, np.float32)
    if probs.ndim not in (3, 4) or probs.shape[0] != 3:
        raise CytogenError(f"class probabilities must be (3, [Z,] Y, X), got {probs.shape}")
    fg = probs[1] + probs[2] > fg_threshold
    seeds, _ = ndi.label(probs[1] > seed_threshold)
    labels = watershed(-probs[1], markers=seeds, mask=fg) if seeds.max() else np.zeros(fg.shape, np.int32)
    orphans, n = ndi.label(fg & (labels == 0))  # foreground no seed reached
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    sizes = np.bincount(labels.ravel())
    small = sizes < float(min_size_px)
    small[0] = False
    labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32)
