"""Figures of ``cytogen segment cells``: cell label outlines and markers on the grey cell image.

Fields larger than ``max_side`` pixels are shown downsampled (every ``step``-th pixel, the grey
image block-averaged) so that a report of many large fields stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from cytogen.report.figures import stretch

__all__ = ["OverlayPanel", "cellseg_overlay_figure", "label_colours", "outline_rgb", "overlay_panel"]


@dataclass
class OverlayPanel:
    """One field, already downsampled: grey image, labels, markers (in the panel's pixels)."""

    title: str
    grey: np.ndarray
    labels: np.ndarray
    markers: np.ndarray
    reference: np.ndarray | None
    step: int


def label_colours(n: int, seed: int = 0) -> np.ndarray:
    """``(n + 1, 3)`` RGB in [0, 1]: row 0 black, rows 1..n bright, shuffled so neighbours differ."""
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.permutation(n) / max(n, 1), np.full(n, 0.85), np.full(n, 1.0)], axis=1)
    return np.concatenate([np.zeros((1, 3)), hsv_to_rgb(hsv)], axis=0)


def _block_mean(a: np.ndarray, step: int) -> np.ndarray:
    if step == 1:
        return a
    y, x = (a.shape[0] // step) * step, (a.shape[1] // step) * step
    core = a[:y, :x].reshape(y // step, step, x // step, step).mean(axis=(1, 3))
    return core


def overlay_panel(title: str, image: np.ndarray, labels: np.ndarray, markers: np.ndarray,
                  reference: np.ndarray | None = None, max_side: int = 512) -> OverlayPanel:
    """Downsample one field for :func:`cellseg_overlay_figure`.

    Parameters
    ----------
    image
        ``(Y, X)`` or ``(C, Y, X)`` cell image (channels averaged).
    labels
        ``(Y, X)`` cell labels.
    markers, reference
        ``(N, 2)`` markers used and optional reference markers, in pixels.
    max_side
        The longest side shown; larger fields are shown at every ``step``-th pixel.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=0)
    step = max(1, int(np.ceil(max(img.shape) / max_side)))
    grey = _block_mean(img, step)
    lab = np.asarray(labels)[::step, ::step][: grey.shape[0], : grey.shape[1]]
    pts = np.asarray(markers, dtype=float).reshape(-1, 2) / step
    ref = None if reference is None else np.asarray(reference, dtype=float).reshape(-1, 2) / step
    return OverlayPanel(title, grey, lab, pts, ref, step)


def outline_rgb(grey: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(Y, X, 3)`` float RGB: the stretched grey image with each label's inner outline in its colour."""
    g = stretch(grey) * 0.85
    rgb = np.stack([g, g, g], axis=-1)
    lab = np.asarray(labels, dtype=np.int64)
    if lab.max() > 0:
        edge = find_boundaries(lab, mode="inner") & (lab > 0)
        rgb[edge] = label_colours(int(lab.max()), seed)[lab[edge]]
    return rgb


def cellseg_overlay_figure(panels: list[OverlayPanel], size: float = 4.0, ncol: int = 3) -> Figure:
    """Per field: cell outlines (one colour per cell) on the grey image, markers as white dots,
    reference markers (when known) as yellow rings."""
    n = max(1, len(panels))
    ncol = min(ncol, n)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(size * ncol, size * nrow))  # no pyplot: the user's backend is left alone
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, p in zip(axes.ravel(), panels):
        ax.imshow(outline_rgb(p.grey, p.labels), interpolation="nearest")
        if p.reference is not None and len(p.reference):
            ax.scatter(p.reference[:, 1], p.reference[:, 0], s=28, facecolors="none", edgecolors="#ffd60a",
                       linewidths=0.8)
        if len(p.markers):
            ax.scatter(p.markers[:, 1], p.markers[:, 0], s=6, c="white", edgecolors="black", linewidths=0.3)
        note = f" (1 in {p.step} pixels per axis)" if p.step > 1 else ""
        ax.set_title(f"{p.title}{note}", fontsize=9)
        ax.set_xlim(-0.5, p.grey.shape[1] - 0.5)
        ax.set_ylim(p.grey.shape[0] - 0.5, -0.5)
    fig.tight_layout()
    return fig
