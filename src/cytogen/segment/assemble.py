"""Whole-field labels from per-marker patch outputs (paper 004, "Segmentation model").

"Each pixel was assigned to the cell with the highest probability output at that location.
Pixels showing segmentation probabilities less than 0.5 from all patches were assigned as the
background." Label ``i + 1`` belongs to marker ``i``; on equal probabilities the lower marker
index wins (whatever order the patches arrive in). Parts of patches outside the image are
ignored. :class:`Integrator` accumulates patches in chunks with one float32 (best probability)
and one int32 (label) array of the field, so a field of any number of cells fits in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cytogen.data.marker_patches import extract_patches
from cytogen.errors import CytogenError


class Integrator:
    """Argmax integration of patch probabilities, fed in chunks.

    Parameters
    ----------
    shape
        Spatial shape of the field, ``(Y, X)`` or ``(Z, Y, X)``.
    threshold
        Pixels where every patch is below it stay background (0).
    out
        Optional int32 array of ``shape`` to hold the labels (overwritten with 0 first).
    """

    def __init__(self, shape: Sequence[int], threshold: float = 0.5, *,
                 out: np.ndarray | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise CytogenError(f"field shape {shape!r} must be (Y, X) or (Z, Y, X) with positive sizes")
        self.threshold = float(threshold)
        self.best = np.full(self.shape, -np.inf, np.float32)
        if out is None:
            self._labels = np.zeros(self.shape, np.int32)
        else:
            if out.shape != self.shape or out.dtype != np.int32:
                raise CytogenError(f"out must be an int32 array of shape {self.shape}, got "
                                   f"{out.dtype} {out.shape}")
            out[...] = 0
            self._labels = out

    def add(self, probs: np.ndarray, origins: np.ndarray, first_index: int) -> None:
        """Add patches ``first_index, first_index + 1, ...`` (probabilities and image corners).

        Parameters
        ----------
        probs
            ``(n, *patch)`` probabilities (a singleton channel axis is accepted).
        origins
            ``(n, d)`` integer corners of the patches in image coordinates (may lie outside).
        first_index
            Marker index of the first patch (its label is ``first_index + 1``).
        """
        d = len(self.shape)
        p = np.asarray(probs, dtype=np.float32)
        o = np.asarray(origins, dtype=np.int64)
        if p.ndim == d + 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.ndim != d + 1 or o.shape != (p.shape[0], d):
            raise CytogenError(f"patch probabilities {p.shape} and origins {o.shape} do not match a "
                               f"{d}D field: need (n, *patch) and (n, {d})")
        k = np.asarray(p.shape[1:], np.int64)
        for i in range(p.shape[0]):
            lo = np.maximum(o[i], 0)
            hi = np.minimum(o[i] + k, self.shape)
            if np.any(hi <= lo):
                continue
            field = tuple(slice(a, b) for a, b in zip(lo, hi))
            patch = p[(i,) + tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, o[i]))]
            label = int(first_index) + i + 1
            best, lab = self.best[field], self._labels[field]
            win = (patch >= self.threshold) & ((patch > best) | ((patch == best) & (label < lab)))
            best[win] = patch[win]
            lab[win] = label

    def labels(self) -> np.ndarray:
        """The int32 label image so far (0 = background, ``i + 1`` = marker ``i``)."""
        return self._labels


def integrate(probs: np.ndarray, origins: np.ndarray, shape: Sequence[int], *,
              threshold: float = 0.5, out: np.ndarray | None = None) -> np.ndarray:
    """Label image from all patches at once: each pixel goes to the most probable patch.

    Parameters
    ----------
    probs
        ``(N, *patch)`` probabilities of the patches of markers ``0..N-1``.
    origins
        ``(N, d)`` patch corners in image coordinates.
    shape
        Field shape.
    threshold
        Background where every patch is below it.
    out
        Optional int32 array of ``shape`` to write into.

    Returns
    -------
    numpy.ndarray
        int32 labels, ``i + 1`` for marker ``i``; ties go to the lower index.
    """
    acc = Integrator(shape, threshold, out=out)
    acc.add(probs, origins, 0)
    return acc.labels()


def segment_with_patches(predict_fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                         markers: np.ndarray, size: int | Sequence[int], sigma_px: float | Sequence[float],
                         *, chunk: int = 256, threshold: float = 0.5) -> np.ndarray:
    """Segment a field: patches around ``chunk`` markers at a time, predicted and integrated.

    Parameters
    ----------
    predict_fn
        Maps patches ``(n, C + 1, *size)`` float32 (last channel the Gaussian disk) to
        probabilities ``(n, *size)`` (numpy, or anything ``numpy.asarray`` takes).
    image
        ``(C, Y, X)`` (or ``(C, Z, Y, X)``) normalised image, as in training; a single-channel
        image without channel axis is accepted.
    markers
        ``(N, d)`` marker coordinates; label ``i + 1`` belongs to marker ``i``.
    size, sigma_px
        Patch size and Gaussian sigma used in training.
    chunk
        Markers per call of ``predict_fn`` (memory: ``chunk`` patches).
    threshold
        Background probability threshold (0.5 in the paper).

    Returns
    -------
    numpy.ndarray
        int32 label image of the image's spatial shape.
    """
    img = np.asarray(image)
    m = np.asarray(markers, dtype=np.float64)
    if m.ndim == 1 and m.size == 0:
        m = m.reshape(0, 2 if img.ndim <= 3 else 3)
    if m.ndim == 2 and img.ndim == m.shape[1]:
        img = img[None]
    if int(chunk) < 1:
        raise CytogenError(f"chunk must be a positive number of markers, got {chunk!r}")
    acc = Integrator(img.shape[1:], threshold)
    for start in range(0, len(m), int(chunk)):
        patches, origins = extract_patches(img, m[start:start + int(chunk)], size, sigma_px)
        probs = predict_fn(patches)
        if hasattr(probs, "detach"):
            probs = probs.detach().cpu().numpy()
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim == patches.ndim and probs.shape[1] == 1:
            probs = probs[:, 0]
        if probs.shape != (patches.shape[0],) + patches.shape[2:]:
            raise CytogenError(f"predict_fn returned {probs.shape} for patches {patches.shape}; it "
                               f"must return one probability map {patches.shape[2:]} per patch")
        acc.add(probs, origins, start)
    return acc.labels()
