"""Figures of the Statistical Cell analyses (object-oriented matplotlib, never pyplot).

Crops are shown as RGB composites: red = cell channel, blue = DNA, green = target (absent
channels black); 3D crops as maximum projections along Z.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["crop_rgb", "kl_bar_figure", "montage_figure", "pair_plot_figure", "r2_bar_figure",
           "violin_figure", "walk_figure"]


def crop_rgb(crop: np.ndarray) -> np.ndarray:
    """``(C, Y, X)`` or ``(C, Z, Y, X)`` crop (channels cell, dna[, target]) -> ``(Y, X, 3)`` RGB in [0, 1].

    Each channel is clipped to [0, 1] (crops and decoded images already are in that range, so
    intensities stay comparable between real and generated cells).
    """
    a = np.asarray(crop, dtype=np.float32)
    if a.ndim == 4:
        a = a.max(axis=1)
    if a.ndim != 3:
        raise ValueError(f"a crop must be (C, Y, X) or (C, Z, Y, X), got {np.shape(crop)}")
    rgb = np.zeros((*a.shape[1:], 3), dtype=np.float32)
    for ch, col in zip(range(min(3, a.shape[0])), (0, 2, 1)):  # cell -> R, dna -> B, target -> G
        rgb[..., col] = np.clip(np.nan_to_num(a[ch]), 0.0, 1.0)
    return rgb


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def montage_figure(crops: np.ndarray | Sequence[np.ndarray], titles: Sequence[str] | None = None,
                   ncol: int = 8, size: float = 1.6) -> Figure:
    """Grid of crops as RGB composites, ``ncol`` per row, optional title per crop."""
    n = len(crops)
    ncol = max(1, min(ncol, n))
    nrow = max(1, -(-n // ncol))
    fig = Figure(figsize=(size * ncol, size * nrow + (0.2 * nrow if titles else 0)))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for k in range(nrow * ncol):
        ax = axes[k // ncol][k % ncol]
        _off(ax)
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(crop_rgb(crops[k]), interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[k]), fontsize=7)
    fig.tight_layout()
    return fig


def walk_figure(walk: np.ndarray, row_labels: Sequence[str], step_labels: Sequence[str],
                size: float = 1.4) -> Figure:
    """Latent walks ``(n_dims, steps, C, *size)``: one row per dimension, one column per step."""
    n_dims, steps = walk.shape[:2]
    fig = Figure(figsize=(size * steps + 0.8, size * n_dims + 0.4))
    axes = fig.subplots(n_dims, steps, squeeze=False)
    for r in range(n_dims):
        for c in range(steps):
            ax = axes[r][c]
            _off(ax)
            ax.imshow(crop_rgb(walk[r, c]), interpolation="nearest")
            if r == 0:
                ax.set_title(step_labels[c], fontsize=8)
            if c == 0:  # "zr_2: cell_area" on two lines, so labels of neighbouring rows do not run together
                ax.set_ylabel(row_labels[r].replace(": ", ":\n"), fontsize=7)
    fig.tight_layout()
    return fig


def _finite(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v[np.isfinite(v)]


def violin_figure(real: Mapping[str, np.ndarray], generated: Mapping[str, np.ndarray],
                  units: Mapping[str, str] | None = None, ncol: int = 7) -> Figure:
    """One violin panel per feature: real (red) next to generated (blue) values."""
    names = list(real)
    nrow = max(1, -(-len(names) // ncol))
    fig = Figure(figsize=(2.2 * min(ncol, len(names)), 2.4 * nrow))
    axes = fig.subplots(nrow, min(ncol, len(names)), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(names):
            ax.axis("off")
            continue
        name = names[k]
        data, pos, colours = [], [], []
        for p, (vals, col) in enumerate(((real[name], "tab:red"), (generated.get(name, []), "tab:blue"))):
            v = _finite(vals)
            if v.size >= 2 and np.ptp(v) > 0:
                data.append(v)
                pos.append(p)
                colours.append(col)
            elif v.size:
                ax.plot([p], [v.mean()], "_", color=col, markersize=20)
        if data:
            parts = ax.violinplot(data, positions=pos, showmedians=True, widths=0.8)
            for body, col in zip(parts["bodies"], colours):
                body.set_facecolor(col)
                body.set_alpha(0.5)
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["real", "gen."], fontsize=7)
        unit = (units or {}).get(name, "")
        ax.set_title(name + (f" ({unit})" if unit else ""), fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def pair_plot_figure(z: np.ndarray, labels: Sequence[str], max_points: int = 2000) -> Figure:
    """Pairwise scatter plots of a few latent dimensions ``(n, k)``, histograms on the diagonal."""
    z = np.asarray(z, dtype=np.float64)
    k = z.shape[1]
    if len(z) > max_points:
        z = z[np.random.default_rng(0).choice(len(z), max_points, replace=False)]
    fig = Figure(figsize=(2.0 * k + 0.5, 2.0 * k + 0.5))
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i][j]
            ax.tick_params(labelsize=6)
            if i == j:
                ax.hist(z[:, i], bins=30, color="tab:gray")
            else:
                ax.scatter(z[:, j], z[:, i], s=3, alpha=0.5, color="tab:blue", linewidths=0)
            if i == k - 1:
                ax.set_xlabel(labels[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=8)
    fig.tight_layout()
    return fig


def kl_bar_figure(kl: Mapping[str, np.ndarray], threshold: float | None = 0.6) -> Figure:
    """Mean KL per latent dimension, sorted descending, one panel per space (e.g. zr, zt)."""
    spaces = list(kl)
    fig = Figure(figsize=(6.0, 2.4 * max(1, len(spaces))))
    axes = fig.subplots(max(1, len(spaces)), 1, squeeze=False)
    for ax, space in zip(axes[:, 0], spaces):
        v = np.sort(np.nan_to_num(np.asarray(kl[space], dtype=np.float64)))[::-1]
        ax.bar(np.arange(len(v)), v, color="tab:blue", width=0.9)
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"KL = {threshold:g}")
            ax.legend(fontsize=7)
        ax.set_ylabel(f"{space} mean KL (nats)", fontsize=8)
        ax.set_xlabel("dimensions, sorted by KL", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks, not fractions
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def r2_bar_figure(labels: Sequence[str], r2: Sequence[float], explained: Sequence[float] | None = None) -> Figure:
    """Held-out R^2 per principal component (bars), with each PC's explained variance ratio (dots)."""
    fig = Figure(figsize=(1.0 * len(labels) + 2.0, 3.0))
    ax = fig.subplots()
    x = np.arange(len(labels))
    v = np.nan_to_num(np.asarray(r2, dtype=np.float64))
    ax.bar(x, v, color="tab:blue", label="held-out R^2")
    if explained is not None:
        ax.plot(x, explained, "o", color="black", label="explained variance ratio")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    # R^2 is unbounded below: one very negative bar (a poor fit) would flatten the others, so the
    # axis stops at -1 and the clipped bars carry their value
    ax.set_ylim(max(-1.0, min(0.0, float(v.min()) if len(v) else 0.0)), 1.0)
    for xi, vi in zip(x, v):
        if vi < -1.0:
            ax.text(xi, -0.97, f"{vi:.3g}", ha="center", va="bottom", fontsize=7, color="white")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
