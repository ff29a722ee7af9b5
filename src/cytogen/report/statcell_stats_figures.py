"""Figures of the Statistical Cell statistics: rate/distortion, coupling, shifts, dose-response, Z'.

Built with the object-oriented matplotlib API (no pyplot), like :mod:`cytogen.report.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def rate_distortion_figure(betas: Sequence[float], rates: Sequence[float], distortions: Sequence[float],
                           title: str = "") -> Figure:
    """Distortion (mean reconstruction error) against rate (mean summed KL), one point per beta."""
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    r, d = np.asarray(rates, float), np.asarray(distortions, float)
    order = np.argsort(np.asarray(betas, float))
    ax.plot(r[order], d[order], "-", color="#999999", lw=1)
    sc = ax.scatter(r, d, c=np.asarray(betas, float), cmap="viridis", s=40, zorder=3, vmin=0, vmax=1)
    for b, x, y in zip(betas, r, d):
        ax.annotate(f"β={b:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fig.colorbar(sc, ax=ax, label="β")
    ax.set_xlabel("rate: mean KL summed over latent dims (nats)")
    ax.set_ylabel("distortion: mean summed squared error")
    ax.set_title(title or "rate / distortion")
    return fig


def features_per_beta_figure(real: Mapping[str, np.ndarray], generated: Mapping[float, Mapping[str, np.ndarray]],
                             names: Sequence[str]) -> Figure:
    """Violins of some features: real cells, then the generated cells of each beta."""
    names = list(names)
    fig = Figure(figsize=(3.2 * len(names), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(names), squeeze=False)[0])
    betas = sorted(generated)
    for ax, name in zip(axes, names):
        data = [np.asarray(real.get(name, []), float)] + [np.asarray(generated[b].get(name, []), float)
                                                          for b in betas]
        labels = ["real"] + [f"{b:g}" for b in betas]
        keep = [i for i, v in enumerate(data) if np.isfinite(v).sum() > 1]
        if keep:
            parts = ax.violinplot([data[i][np.isfinite(data[i])] for i in keep], positions=keep,
                                  showmedians=True)
            for j, body in enumerate(parts["bodies"]):
                body.set_facecolor("#d62728" if keep[j] == 0 else "#1f77b4")
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("real | β")
    fig.tight_layout()
    return fig


def coupling_figure(rows: Sequence[Mapping], cell_channel: str = "cell") -> Figure:
    """Per-group mean couplings to the cell channel and the nucleus (bars, bootstrap intervals) and d_s."""
    labels = [str(r["group"]) for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 3), 4.0))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    w = 0.38
    for k, (key, name, color) in enumerate((("coupling_cell", cell_channel, "#d62728"),
                                            ("coupling_nucleus", "nucleus", "#1f77b4"))):
        m = np.array([r[f"{key}_mean"] for r in rows], float)
        lo = np.array([r[f"{key}_lo"] for r in rows], float)
        hi = np.array([r[f"{key}_hi"] for r in rows], float)
        err = np.vstack([np.clip(m - lo, 0, None), np.clip(hi - m, 0, None)])
        ax1.bar(x + (k - 0.5) * w, m, w, yerr=np.nan_to_num(err), capsize=3, color=color, label=name)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("mean coupling (Eq 4, ELBO difference)")
    ax1.legend(fontsize=8)
    d = np.array([r["d_s"] for r in rows], float)
    dlo = np.array([r["d_s_lo"] for r in rows], float)
    dhi = np.array([r["d_s_hi"] for r in rows], float)
    ax2.errorbar(d, x, xerr=np.nan_to_num(np.vstack([np.clip(d - dlo, 0, None), np.clip(dhi - d, 0, None)])),
                 fmt="o", color="k", capsize=3)
    ax2.axvline(0, color="#999999", lw=0.6)
    ax2.set_xlim(-1.05, 1.05)
    ax2.set_yticks(x, labels, fontsize=8)
    ax2.set_xlabel(f"d_s (Eq 5): -1 nucleus … +1 {cell_channel}")
    fig.tight_layout()
    return fig


def shift_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                 title: str = "") -> Figure:
    """Standardised centroid shift from the control per condition value, per space; filled markers p < 0.05."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    for i, (space, (xs, shifts, ps)) in enumerate(curves.items()):
        c = _COLORS[i % len(_COLORS)]
        xs, shifts, ps = np.asarray(xs, float), np.asarray(shifts, float), np.asarray(ps, float)
        ax.plot(xs, shifts, "-", color=c, label=space)
        sig = ps < 0.05
        ax.scatter(xs[sig], shifts[sig], color=c, zorder=3)
        ax.scatter(xs[~sig], shifts[~sig], facecolor="white", edgecolor=c, zorder=3)
    ax.set_xlabel("condition")
    ax.set_ylabel("centroid shift / control spread")
    ax.set_title(title or "shift from the control (filled: Bonferroni p < 0.05)")
    ax.legend(fontsize=8)
    return fig


def dose_response_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                         title: str = "") -> Figure:
    """Mean +- sd of the projection on the control -> treated direction per dose, one panel per space."""
    n = max(1, len(curves))
    fig = Figure(figsize=(3.6 * n, 3.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, (ax, (space, (xs, m, sd))) in enumerate(zip(axes, curves.items())):
        c = _COLORS[i % len(_COLORS)]
        xs, m, sd = np.asarray(xs, float), np.asarray(m, float), np.asarray(sd, float)
        ax.fill_between(xs, m - sd, m + sd, color=c, alpha=0.2)
        ax.plot(xs, m, "o-", color=c)
        ax.set_title(space, fontsize=9)
        ax.set_xlabel("dose")
    axes[0].set_ylabel("projection (control mean = 0)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def projection_violin_figure(per_space: Mapping[str, Mapping[float, np.ndarray]], title: str = "") -> Figure:
    """Violins of the per-cell projections per dose, one panel per space."""
    n = max(1, len(per_space))
    fig = Figure(figsize=(4.0 * n, 3.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, (ax, (space, by_dose)) in enumerate(zip(axes, per_space.items())):
        doses = sorted(by_dose)
        data = [np.asarray(by_dose[d], float) for d in doses]
        keep = [j for j, v in enumerate(data) if len(v) > 1]
        if keep:
            parts = ax.violinplot([data[j] for j in keep], positions=keep, showmedians=True)
            for body in parts["bodies"]:
                body.set_facecolor(_COLORS[i % len(_COLORS)])
        ax.set_xticks(range(len(doses)), [f"{d:g}" for d in doses], fontsize=7)
        ax.set_title(space, fontsize=9)
        ax.set_xlabel("dose")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def zprime_figure(rows: Sequence[Mapping], title: str = "") -> Figure:
    """Z'-factor bars (with bootstrap intervals) of each read-out; dashed line at 0.5 (excellent assay)."""
    labels = [str(r["readout"]) for r in rows]
    z = np.array([r["z_prime"] for r in rows], float)
    lo = np.array([r["z_prime_lo"] for r in rows], float)
    hi = np.array([r["z_prime_hi"] for r in rows], float)
    fig = Figure(figsize=(max(4.0, 1.0 * len(rows) + 2), 3.6))
    ax = fig.subplots()
    x = np.arange(len(rows))
    shown = np.clip(z, -2, 1)
    err = np.vstack([np.clip(shown - np.clip(lo, -2, 1), 0, None), np.clip(np.clip(hi, -2, 1) - shown, 0, None)])
    colors = [_COLORS[i % len(_COLORS)] for i in range(len(rows))]
    ax.bar(x, np.nan_to_num(shown), yerr=np.nan_to_num(err), capsize=3, color=colors)
    ax.axhline(0.5, ls="--", color="#555555", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Z' (clipped at -2)")
    ax.set_title(title or "Z'-factor, treated vs control (held-out cells)")
    fig.tight_layout()
    return fig
