"""Matplotlib figures for reports.

Figures are built with the object-oriented API (:class:`matplotlib.figure.Figure`, rendered by
the Agg canvas when saved), never through pyplot: importing this module does not switch the
user's matplotlib backend, registers no figure with pyplot's global state, and works headless.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cytogen.io.atomic import atomic_file


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically (see :mod:`cytogen.io.atomic`); returns ``path``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def figure_png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def to_2d(img: np.ndarray) -> np.ndarray:
    """2D view of a ``(Y, X)``, ``(C, Y, X)`` or ``(C, Z, Y, X)`` image: first channel, max over Z."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim >= 3:
        a = a[0]
    if a.ndim == 3:
        a = a.max(axis=0)
    return a


def stretch(a: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.8) -> np.ndarray:
    """Contrast stretch to [0, 1] between two percentiles."""
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)


def panels_figure(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], size: float = 3.0) -> Figure:
    """Grid of image panels: one row per field, ``(title, image)`` per column.

    Images are ``(C, Y, X)`` or ``(C, Z, Y, X)`` (shown as the first channel's max projection).
    """
    ncol = max(len(cols) for _, cols in rows)
    fig = Figure(figsize=(size * ncol, size * len(rows)))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for r, (label, cols) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cols):
                ax.axis("off")
                continue
            title, img = cols[c]
            ax.imshow(stretch(to_2d(img)), cmap="gray", interpolation="nearest")
            ax.set_title(f"{label}: {title}" if c == 0 else title, fontsize=9)
    fig.tight_layout()
    return fig


def loss_curve_figure(log: dict[str, np.ndarray]) -> Figure:
    """Training and validation loss against step, on a log scale."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    step = log.get("step")
    for key, style in (("train_loss", "-"), ("val_loss", "o-")):
        if key in log and step is not None:
            ok = np.isfinite(log[key])
            if ok.any():
                ax.plot(step[ok], log[key][ok], style, label=key.replace("_", " "), ms=3, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def metric_hist_figure(values: dict[str, np.ndarray]) -> Figure:
    """One histogram per metric (e.g. Pearson r per field)."""
    fig = Figure(figsize=(3.2 * len(values), 2.8))
    axes = fig.subplots(1, len(values), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=min(20, max(3, v.size)), color="#4a7bb7")
        if v.size:
            ax.axvline(np.median(v), color="k", ls="--", lw=1, label=f"median {np.median(v):.3g}")
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig
