"""Figures of ``cytogen evaluate exclusivity``: per-structure bars, pairwise heat maps, field views."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0.45, 1], [1, 0, 1], [1, 0.8, 0], [0, 1, 1]], np.float32)


def _pair_matrix(pairwise: dict, names: list[str]) -> np.ndarray:
    m = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            v = pairwise.get(a, {}).get(b)
            if i != j and v is not None:
                m[i, j] = v
    return m


def _heat(ax, fig, m: np.ndarray, names: list[str], title: str, vmax: float) -> None:
    im = ax.imshow(m, cmap="magma", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 * vmax else "black")
    ax.set_xlabel("over (B)")
    ax.set_ylabel("highest (A)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)


def summary_figure(summary: dict) -> Figure:
    """Per-structure exclusivity (prediction vs truth) and the directed pairwise heat maps."""
    names = summary["structures"]
    sets = [("prediction", summary["prediction"])] + ([("truth", summary["truth"])] if "truth" in summary else [])
    fig = Figure(figsize=(4.2 * (1 + len(sets)), 3.8))
    axes = fig.subplots(1, 1 + len(sets), squeeze=False)[0]
    width = 0.8 / len(sets)
    for k, (label, d) in enumerate(sets):
        vals = [np.nan if d["per_structure"][n] is None else d["per_structure"][n] for n in names]
        axes[0].bar(np.arange(len(names)) + k * width, vals, width, label=f"{label} (overall {d['overall']:.3f})")
    axes[0].set_xticks(np.arange(len(names)) + width * (len(sets) - 1) / 2, names, rotation=30, fontsize=8)
    axes[0].set_ylabel(f"exclusivity ({summary['scale']} scale)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("per structure", fontsize=9)
    mats = [_pair_matrix(d["pairwise"], names) for _, d in sets]
    vmax = max([float(np.nanmax(m)) for m in mats if np.isfinite(m).any()] + [1e-6])
    for ax, (label, _), m in zip(axes[1:], sets, mats):
        _heat(ax, fig, m, names, f"pairwise, {label}", vmax)
    fig.tight_layout()
    return fig


def _composite(stack: np.ndarray) -> np.ndarray:
    """Colour composite of up to six structures, each clipped to [0, 1] of the common scale."""
    c = np.clip(stack[: len(_COLOURS)], 0, 1)
    rgb = np.einsum("syx,sc->yxc", c, _COLOURS[: c.shape[0]])
    return np.clip(rgb, 0, 1)


def field_figure(field: str, pred: np.ndarray, emap: np.ndarray, names: list[str],
                 truth: np.ndarray | None = None) -> Figure:
    """One field (2D or max-projected): colour composite, each structure, the exclusivity map."""
    rows = [("prediction", pred)] + ([("truth", truth)] if truth is not None else [])
    ncol = 2 + len(names)
    fig = Figure(figsize=(2.6 * ncol, 2.7 * len(rows)))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    step = max(1, int(np.ceil(max(emap.shape) / 512)))
    for r, (label, stack) in enumerate(rows):
        ax = axes[r]
        ax[0].imshow(_composite(stack), interpolation="nearest")
        ax[0].set_title(f"{field} {label}: " + "/".join(names[: len(_COLOURS)]), fontsize=8)
        for i, n in enumerate(names):
            ax[1 + i].imshow(np.clip(stack[i], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax[1 + i].set_title(n, fontsize=8)
        if r == 0:
            im = ax[-1].imshow(emap[::step, ::step], cmap="viridis", vmin=0, interpolation="nearest")
            ax[-1].set_title("exclusivity map", fontsize=8)
            fig.colorbar(im, ax=ax[-1], fraction=0.046)
        else:
            ax[-1].axis("off")
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    return fig
