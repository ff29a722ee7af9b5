"""Figures of ``cytogen evaluate uncertainty``: the reliability plot and the spread maps."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

GAUSS_ABS = float(np.sqrt(2.0 / np.pi))


def reliability_figure(bins: list[dict], field_rho: list[float], pooled: dict) -> Figure:
    """Left: mean |error| per spread bin against the bin's mean spread, with its interval, and the
    calibrated-Gaussian line ``E|e| = sqrt(2/pi) sigma``. Right: the per-field Spearman rho as a
    strip, with the pooled rho and its interval."""
    fig = Figure(figsize=(10, 4))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    x = np.array([b["mean_spread"] for b in bins])
    y = np.array([b["mean_abs_error"] for b in bins])
    lo = np.array([np.nan if b["ci95_low"] is None else b["ci95_low"] for b in bins])
    hi = np.array([np.nan if b["ci95_high"] is None else b["ci95_high"] for b in bins])
    line = np.linspace(0, float(x.max()) * 1.1 if x.max() > 0 else 1.0, 2)  # the spreads' range; the line is clipped by it
    ax.plot(line, GAUSS_ABS * line, "--", color="#888", lw=1,
            label="calibrated Gaussian: E|e| = sqrt(2/pi) sigma")
    if np.isfinite(lo).any():
        ax.errorbar(x, y, yerr=np.clip([y - lo, hi - y], 0, None),  # (rounding of degenerate intervals)
                    fmt="o-", color="#4a7bb7", ms=4, lw=1, capsize=2,
                    label="mean |error| per spread decile (95 % interval, bootstrap over fields)")
    else:
        ax.plot(x, y, "o-", color="#4a7bb7", ms=4, lw=1, label="mean |error| per spread decile (no interval: 1 field)")
    ax.set_xlabel("mean spread of the decile (truth p1-p99.8 range units)")
    ax.set_ylabel("mean |error| (same units)")
    ax.set_xlim(0, float(line[-1]))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("reliability: error against spread", fontsize=9)
    rho = np.asarray(field_rho, float)
    ok = rho[np.isfinite(rho)]
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, ok.size)  # fixed: the same figure every run
    bx.scatter(jitter, ok, s=12, color="#4a7bb7", alpha=0.7, label=f"fields (n = {ok.size})")
    if pooled.get("value") is not None and np.isfinite(pooled["value"]):
        ci = pooled.get("ci95")
        bx.errorbar([0.35], [pooled["value"]], yerr=None if not ci else
                    np.clip([[pooled["value"] - ci[0]], [ci[1] - pooled["value"]]], 0, None),
                    fmt="s", color="#c0392b", capsize=3, label="pooled (95 % interval)")
    bx.axhline(0, color="#888", lw=1, ls=":")
    bx.set_xlim(-0.5, 0.7)
    bx.set_ylim(min(-0.1, float(ok.min()) - 0.05) if ok.size else -1, 1.02)
    bx.set_xticks([])
    bx.set_ylabel("Spearman rho, spread vs |error|")
    bx.legend(fontsize=7, loc="lower right")
    bx.set_title("per field", fontsize=9)
    fig.tight_layout()
    return fig


def _crop(a: np.ndarray, crop: int) -> np.ndarray:
    a = a.max(axis=0) if a.ndim == 3 else a
    y0, x0 = max(0, (a.shape[0] - crop) // 2), max(0, (a.shape[1] - crop) // 2)
    return a[y0:y0 + crop, x0:x0 + crop]


def spread_maps_figure(fields: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                       size: float = 2.8, crop: int = 256) -> Figure:
    """Per field ``(name, truth, prediction, spread, |error|)``: four panels of the same central crop.

    Truth and prediction share the truth's 1-99.8 percentile stretch; spread and |error| share one
    colour scale (0 to the 99th percentile of both), so a spread matching the error looks alike.
    3D fields are max-projected over z.
    """
    fig = Figure(figsize=(size * 4 + 0.8, size * max(1, len(fields))))
    axes = fig.subplots(max(1, len(fields)), 4, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for r, (name, t, p, s, e) in enumerate(fields):
        t, p, s, e = (_crop(np.asarray(a, np.float32), crop) for a in (t, p, s, e))
        lo, hi = np.percentile(t, [1, 99.8])
        span = max(float(hi - lo), 1e-12)
        vmax = max(float(np.percentile(np.r_[s.ravel(), e.ravel()], 99)), 1e-12)
        axes[r][0].imshow(np.clip((t - lo) / span, 0, 1), cmap="gray", interpolation="nearest")
        axes[r][1].imshow(np.clip((p - lo) / span, 0, 1), cmap="gray", interpolation="nearest")
        axes[r][2].imshow(s, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        im = axes[r][3].imshow(e, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        for c, title in enumerate(("truth", "prediction", "spread", "|error|")):
            axes[r][c].set_title(f"{name}: {title}" if c == 0 else title, fontsize=9)
        fig.colorbar(im, ax=axes[r][3], fraction=0.046, pad=0.04)
    if not fields:
        axes[0][0].text(0.5, 0.5, "no fields", ha="center", transform=axes[0][0].transAxes)
    fig.tight_layout()
    return fig

