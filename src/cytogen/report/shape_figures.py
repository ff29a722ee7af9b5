"""Figures of ``cytogen evaluate shapes``: shape PCs real vs generated, the kNN-purity score
against k with its null bands, and a few objects with their reconstruction (matplotlib OO API)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from cytogen.evaluate.shapes import FourierShape
from cytogen.evaluate.spharm import sh_evaluate

__all__ = ["pca_figure", "purity_figure", "reconstruction_figure"]


def pca_figure(x_real: np.ndarray, x_gen: np.ndarray, evr: np.ndarray) -> Figure:
    """PC1-PC2 and PC1-PC3 scatter of real and generated objects."""
    fig = Figure(figsize=(10, 4.5))
    pairs = [(0, 1), (0, 2)] if x_real.shape[1] >= 3 else [(0, min(1, x_real.shape[1] - 1))]
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    for ax, (a, b) in zip(axes, pairs):
        ax.scatter(x_real[:, a], x_real[:, b], s=10, alpha=0.6, label=f"real ({len(x_real)})")
        ax.scatter(x_gen[:, a], x_gen[:, b], s=10, alpha=0.6, marker="^", label=f"generated ({len(x_gen)})")
        ax.set_xlabel(f"PC{a + 1} ({evr[a]:.0%})")
        ax.set_ylabel(f"PC{b + 1} ({evr[b]:.0%})" if b < len(evr) else "")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def purity_figure(results: list[dict]) -> Figure:
    """Observed score per k with the 5-95 % bands of the permutation and real-vs-real nulls."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    rows = [r for r in results if r.get("score") is not None]
    ks = np.array([r["k"] for r in rows])
    for key, label, colour in (("null_permutation", "label permutations", "C0"),
                               ("null_real_vs_real", "real vs real", "C2")):
        sub = [r for r in rows if key in r]
        if sub:
            kk = [r["k"] for r in sub]
            ax.fill_between(kk, [r[key]["q05"] for r in sub], [r[key]["q95"] for r in sub], alpha=0.25,
                            color=colour, label=f"{label} 5-95 %")
    if len(ks):
        ax.plot(ks, [r["score"] for r in rows], "o-", color="C3", label="real vs generated")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k nearest neighbours")
    ax.set_ylabel("kNN-purity score (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _outline(ex: dict) -> tuple[np.ndarray, np.ndarray, tuple]:
    """2D image of the example (mid z plane in 3D), its extent in um and the reconstructed outline (x, y)."""
    mask, off, sp, s = ex["mask"], np.asarray(ex["offset"]), np.asarray(ex["spacing"]), ex["shape"]
    ang = np.linspace(0, 2 * np.pi, 361)
    if isinstance(s, FourierShape):
        deg = (len(s.coefficients) - 1) // 2
        k = np.arange(-deg, deg + 1)
        z = (s.coefficients[None, :] * np.exp(2j * np.pi * k[None, :] * np.linspace(0, 1, 361)[:, None])).sum(1)
        from cytogen.evaluate.spharm import PAD
        xy = np.stack([z.real - PAD * sp[1] + off[1], z.imag - PAD * sp[0] + off[0]], 1)
        img = mask
    else:
        zc = s.centroid_um[0]
        iz = int(np.clip(round((zc - off[0]) / sp[0]), 0, mask.shape[0] - 1))
        img = mask[iz]
        u_img = np.stack([np.zeros_like(ang), np.sin(ang), np.cos(ang)], 1)
        r = sh_evaluate(s.coefficients, u_img @ s.rotation.T)
        xy = np.stack([s.centroid_um[2] + r * np.cos(ang), s.centroid_um[1] + r * np.sin(ang)], 1)
        off, sp = off[1:], sp[1:]
    extent = (off[1] - 0.5 * sp[1], off[1] + (img.shape[1] - 0.5) * sp[1],
              off[0] + (img.shape[0] - 0.5) * sp[0], off[0] - 0.5 * sp[0])
    return img, xy, extent


def reconstruction_figure(examples: list[dict], units: str = "um") -> Figure:
    """Each example's mask (3D: the plane through its centroid) with its reconstruction (red)."""
    n = max(1, len(examples))
    fig = Figure(figsize=(3.2 * n, 3.4))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, ex in zip(axes, examples):
        img, xy, extent = _outline(ex)
        ax.imshow(img, cmap="gray", extent=extent, interpolation="nearest")
        ax.plot(xy[:, 0], xy[:, 1], "r-", lw=1.2)
        ax.set_title(ex["title"] + f" {units}", fontsize=8)
        ax.set_xlabel(f"x ({units})", fontsize=8)
    for ax in axes[len(examples):]:
        ax.axis("off")
    fig.tight_layout()
    return fig
