"""Figures of ``cytogen retrain exclusivity`` (Sun et al. 2022, Fig 5 and Fig 6 style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

__all__ = ["before_after_figure", "trajectory_figure"]


def trajectory_figure(rows: Sequence[dict[str, Any]], order: Sequence[str]) -> Figure:
    """Greedy trajectory: per retrained structure (columns, in retraining order), the validation
    ratio overall exclusivity / MSE (top) and the overall exclusivity (bottom) against p, the
    chosen p circled and the value before that step dashed (Fig 5 of the paper).

    Parameters
    ----------
    rows
        Trajectory rows with ``step``, ``structure``, ``p``, ``ratio``, ``overall_exclusivity`` and
        ``chosen``; the row with ``step == 0`` is the initial state.
    order
        Structures in retraining order.
    """
    n = max(1, len(order))
    fig = Figure(figsize=(3.0 * n, 5.2), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    prev = next((r for r in rows if r["step"] == 0), None)
    for j, name in enumerate(order):
        mine = sorted((r for r in rows if r["structure"] == name and r["step"] > 0), key=lambda r: float(r["p"]))
        for i, key, label in ((0, "ratio", "overall excl. / MSE"), (1, "overall_exclusivity", "overall exclusivity")):
            ax = axes[i][j]
            ax.plot([float(r["p"]) for r in mine], [r[key] for r in mine], "o-", color="tab:blue")
            for r in mine:
                if r["chosen"]:
                    ax.plot([float(r["p"])], [r[key]], "o", ms=12, mfc="none", mec="tab:red", mew=2)
            if prev is not None:
                ax.axhline(prev[key], ls="--", color="grey", lw=1)
            ax.set_xlabel("p")
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"step {mine[0]['step'] if mine else '?'}: {name}")
        chosen = [r for r in mine if r["chosen"]]
        prev = chosen[0] if chosen else prev
    fig.suptitle("Retraining trajectory (validation split; dashed: before the step, red: chosen p)")
    return fig


def before_after_figure(before: dict[str, Any], after: dict[str, Any], names: Sequence[str]) -> Figure:
    """MSE (x) and per-structure exclusivity (y) before (blue) and after (red) retraining, one
    dashed line per structure (Fig 6 of the paper); the overall values as squares."""
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for n in names:
        xb, yb = before["mse"][n], before["exclusivity"][n]
        xa, ya = after["mse"][n], after["exclusivity"][n]
        ax.plot([xb, xa], [yb, ya], "--", color="grey", lw=1)
        ax.plot([xb], [yb], "o", color="tab:blue")
        ax.plot([xa], [ya], "o", color="tab:red")
        ax.annotate(n, (xa, ya), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([before["overall_mse"], after["overall_mse"]],
            [before["overall_exclusivity"], after["overall_exclusivity"]], "--", color="k", lw=1)
    ax.plot([before["overall_mse"]], [before["overall_exclusivity"]], "s", color="tab:blue", label="before")
    ax.plot([after["overall_mse"]], [after["overall_exclusivity"]], "s", color="tab:red", label="after")
    ax.set_xlabel("MSE (target-normalised units)")
    ax.set_ylabel("exclusivity")
    ax.legend(title="squares: overall", fontsize=8)
    ax.set_title("Test split, before and after retraining")
    return fig
