"""Figures for object-level evaluation: distance histograms and real/predicted overlays."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from cytogen.report.figures import stretch


def distance_hist_figure(nearest: np.ndarray, matched: np.ndarray, radii: list[tuple[str, float]],
                         unit: str) -> Figure:
    """Histograms of predicted-to-nearest-real distances (all) and of matched-pair distances."""
    fig = Figure(figsize=(10, 3.4))  # no pyplot: importing this module leaves the backend alone
    axes = fig.subplots(1, 2)
    for ax, d, title in ((axes[0], nearest, "all predicted: distance to nearest real"),
                         (axes[1], matched, "matched pairs")):
        d = np.asarray(d, float)
        d = d[np.isfinite(d)]
        if d.size:
            hi = max(np.percentile(d, 99), max(r for _, r in radii) * 1.5)
            ax.hist(d, bins=40, range=(0, hi), color="#4a7bb7")
        for (lab, r), c in zip(radii, ("#c0392b", "#e67e22", "#27ae60", "#8e44ad")):
            ax.axvline(r, color=c, ls="--", lw=1, label=f"r = {lab}")
        ax.set_xlabel(f"centroid distance ({unit})")
        ax.set_ylabel("nuclei")
        ax.set_title(f"{title} (n = {d.size})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _project(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        return a.max(axis=0)
    return a


def overlay_figure(panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], size: float = 4.0,
                   crop: int = 256) -> Figure:
    """Per field: the real nucleus image with real (blue) and predicted (red) nucleus outlines.

    ``panels`` holds ``(title, image, labels_true, labels_pred)``; 3D data is max-projected and
    fields larger than ``crop`` pixels are shown as their central ``crop`` x ``crop`` window so
    that single nuclei stay visible.
    """
    n = len(panels)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(size * ncol, size * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img, lt, lp) in zip(axes.ravel(), panels):
        img, lt, lp = _project(img.astype(np.float32)), _project(lt), _project(lp)
        note = ""
        if max(img.shape) > crop:
            y0, x0 = max(0, (img.shape[0] - crop) // 2), max(0, (img.shape[1] - crop) // 2)
            win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
            img, lt, lp = img[win], lt[win], lp[win]
            note = " (central crop)"
        g = stretch(img) * 0.8
        rgb = np.stack([g, g, g], axis=-1)
        bt = find_boundaries(lt, mode="inner")
        bp = find_boundaries(lp, mode="inner")
        rgb[bt] = (0.25, 0.45, 1.0)
        rgb[bp] = (1.0, 0.2, 0.2)
        rgb[bt & bp] = (1.0, 0.3, 1.0)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"{title}{note}: real (blue), predicted (red)", fontsize=9)
    fig.tight_layout()
    return fig
