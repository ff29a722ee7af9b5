"""Figures and the report of ``cytogen evaluate positions``: positional densities in the unit
disc (2D) or two projections of the unit ball (3D), real vs generated, and radial histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from cytogen.io.atomic import write_bytes
from cytogen.report.figures import figure_png_bytes
from cytogen.report.html import Section, write_report

__all__ = ["positions_figure", "positions_report"]


def _disc(ax, img: np.ndarray, title: str, xlabel: str, ylabel: str, *, cmap: str = "magma",
          vmin: float | None = None, vmax: float | None = None) -> None:
    im = ax.imshow(img.T, origin="lower", extent=(-1, 1, -1, 1), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.add_patch(Circle((0, 0), 1.0, fill=False, color="w" if cmap == "magma" else "k", lw=0.8))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def positions_figure(densities: dict[str, np.ndarray], radii: dict[str, np.ndarray], summary: dict[str, Any],
                     *, shell: bool | None = None, labels: tuple[str, str] = ("real", "generated")) -> Figure:
    """Real and generated densities side by side (with their difference) and radial histograms.

    Parameters
    ----------
    densities
        ``{"real": grid, "generated": grid}`` from :func:`cytogen.evaluate.spatial_density.positional_test`
        (``(S, S)`` or ``(S, S, S)``; grid axes = frame axes 1, 2[, 3]).
    radii
        Per side, the radial coordinate of each object (the one the densities use).
    summary
        Holds ``kl``, ``p_permutation`` and optionally ``p_real_vs_real`` and ``frame.radius``.
    labels
        Names shown for the ``"real"`` and ``"generated"`` sides.
    """
    d = densities["real"].ndim
    frame = summary.get("frame", {})
    if shell is None:  # the nucleus boundary is at 0.5 only in the shell frame centred on the nucleus
        shell = frame.get("radius", "shell") == "shell" and frame.get("centre", "nucleus").startswith("nucleus")
    name = dict(zip(("real", "generated"), labels))
    planes = [("axis 1 (major)", "axis 2", (2,))] if d == 2 else [("axis 1 (major)", "axis 2", (2,)),
                                                                   ("axis 1 (major)", "axis 3", (1,))]
    fig = Figure(figsize=(17, 3.8 * len(planes)))
    axes = fig.subplots(len(planes), 4, squeeze=False)
    for row, (xl, yl, drop) in enumerate(planes):
        proj = {s: (g if d == 2 else g.sum(axis=drop[0])) for s, g in densities.items()}
        vmax = max(float(p.max()) for p in proj.values())
        for col, s in enumerate(("real", "generated")):
            n = len(radii[s])
            where = "" if d == 2 else f", summed over axis {3 if drop[0] == 2 else 2}"
            _disc(axes[row][col], proj[s], f"{name[s]} ({n} objects){where}", xl, yl, vmin=0, vmax=vmax)
        diff = proj["generated"] - proj["real"]
        lim = float(np.abs(diff).max()) or 1.0
        _disc(axes[row][2], diff, f"{name['generated']} - {name['real']}", xl, yl, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax = axes[0][3]
    bins = np.linspace(0, 1, 21)
    for s in ("real", "generated"):
        ax.hist(radii[s], bins=bins, density=True, alpha=0.55, label=f"{name[s]} (median {np.median(radii[s]):.2f})")
    if shell:
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.text(0.5, ax.get_ylim()[1] * 0.6, " nucleus\n boundary", fontsize=7, va="top")
    ax.set_xlabel("radial coordinate (0 nucleus centre, 1 membrane)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("radial distance", fontsize=9)
    if len(planes) > 1:
        ax2 = axes[1][3]
        for s in ("real", "generated"):
            ax2.hist(radii[s], bins=bins, cumulative=True, density=True, histtype="step", label=name[s])
        ax2.set_title("cumulative radial distance", fontsize=9)
        ax2.legend(fontsize=7)
    rvr = summary.get("p_real_vs_real")
    fig.suptitle(f"KL(real || generated) {summary['kl']:.3f}, permutation p {summary['p_permutation']:.3g}"
                 + ("" if rvr is None else f"; real halves: median p {rvr:.2g}"), fontsize=10)
    fig.tight_layout()
    return fig


def positions_report(path: str | Path, fig: Figure, summary: dict[str, Any], png: str | Path | None = None) -> Path:
    """``report.html`` of the comparison (and ``png`` of the figure when given; rendered once)."""
    image = figure_png_bytes(fig)
    if png is not None:
        write_bytes(png, image)
    t = summary["test"]
    frame = summary["frame"]
    rows = [{"set": s, "objects": summary[f"n_objects_{s}"], "cells": summary[f"n_cells_{s}"],
             "median r": summary[f"median_r_{s}"], "median rho": summary[f"median_rho_{s}"],
             "in nucleus": summary[f"fraction_in_nucleus_{s}"],
             **{k: v for k, v in summary["counts"][s].items() if k.startswith("dropped")}}
            for s in ("real", "generated")]
    stats_rows = [{"comparison": "real vs generated", "KL": t["kl"], "KL reverse": t["kl_reverse"],
                   "p (permutation)": t["p_permutation"], "null KL median": t["kl_null_median"],
                   "null KL 95 %": t["kl_null_95"]}]
    rvr = summary.get("real_vs_real")
    if rvr:
        stats_rows.append({"comparison": f"real halves ({rvr['n_splits']} splits of {rvr['n_groups']} "
                                         f"{rvr.get('split_by', 'cell')}s)",
                           "KL": rvr["kl_median"], "p (permutation)": rvr["p_median"]})
    text = [f"Frame: {frame['meaning']}; cells aligned by their major axis ({frame['align']}). Densities: Gaussian "
            f"kernel of SD {t['bandwidth']:.3f} (frame units) on a grid of {t['grid']}; KL on that grid with a "
            f"floor of {t['floor']:g} x the uniform density; permutation p = (1 + #KL_perm >= KL) / "
            f"(1 + {t['n_permutations']}), labels shuffled by {t['permute_by']}."]
    sec = [Section("Positions in the normalised cell frame", text=text,
                   tables=[("Objects per set", rows), ("Divergences", stats_rows)],
                   figures=[("positional densities and radial distances", image)])]
    svp = summary.get("shape_vs_position")
    if svp:
        sec.append(Section("Shape vs position", text=[svp["predictors"]],
                           tables=[("OLS of PC1 on position", [{"set": s, **{k: v for k, v in svp[s].items()
                                                                             if k != "coefficients"}}
                                                              for s in ("real", "generated")])]))
    return write_report(path, "cytogen evaluate positions", sec)
