"""Steps shared by the cell segmentation benchmarks (``cellseg_*.py``), all through cytogen's
Python API (the same calls as ``cytogen train`` / ``segment cells`` / ``evaluate cells``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _bench import emit


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A CSV of ``rows`` (the union of their keys as columns, empty where missing)."""
    from cytogen.workflows.evaluate import write_csv

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return write_csv(path, [{c: r.get(c, "") for c in cols} for r in rows])


def train_segmenter(data: Path, out: Path, minutes: float, overrides: list[str] = (), name: str = "cellseg") -> dict:
    """``cytogen train configs/cellseg_consistency2d.yaml`` for a wall-clock budget."""
    from cytogen.config import bundled_recipe
    from cytogen.workflows.train import train

    s = train(bundled_recipe("cellseg_consistency2d"), data, out,
              overrides=[f"train.max_time_min={minutes}", "train.max_steps=100000", *overrides], progress=False)
    emit({"step": f"train_{name}", "steps": s["steps"], "seconds": s["train_seconds"],
          "best_val_loss": s.get("best_val_loss"), "precision": s.get("precision"),
          "n_markers": s.get("n_markers"), "marker_source": s.get("marker_source")})
    return s


def train_translator(manifest: Path, out: Path, minutes: float, overrides: list[str] = ()) -> dict:
    """A U-Net cell image -> nucleus image translator (``configs/translate_unet2d.yaml``)."""
    from cytogen.config import bundled_recipe
    from cytogen.workflows.train import train

    s = train(bundled_recipe("translate_unet2d"), manifest, out,
              overrides=[f"train.max_time_min={minutes}", "train.max_steps=100000", *overrides], progress=False)
    emit({"step": "train_translator", "steps": s["steps"], "seconds": s["train_seconds"],
          "best_val_loss": s.get("best_val_loss"), "precision": s.get("precision")})
    return s


def segment(model: Path | None, data: Path, out: Path, label: str, **kw: Any) -> dict:
    from cytogen.workflows.segment_cells import segment_cells

    t0 = time.perf_counter()
    s = segment_cells(model, data, out, progress=False, **kw)
    emit({"step": f"segment_{label}", "n_fields": s.get("n_fields"), "n_cells": s.get("n_cells"),
          "marker_source": s.get("marker_source"), "marker_errors": s.get("marker_errors"),
          "seconds": round(time.perf_counter() - t0, 1)})
    return s


def score(pred: Path, truth: Path, out: Path, label: str, **kw: Any) -> dict:
    from cytogen.errors import CytogenError
    from cytogen.workflows.evaluate_cells import evaluate_cells

    try:
        s = evaluate_cells(pred, truth, out, **kw)
    except CytogenError as exc:  # e.g. no cell on either side: a row that says so, not a crash or a score
        row = {"result": label, "error": str(exc)}
        emit({"step": "evaluate", **row})
        return row
    row = {"result": label, "n_fields": s["n_fields"], "n_true": s["n_true"], "n_pred": s["n_pred"],
           "miou_matched": s["miou_matched"], "miou_foreground_only": s["miou_foreground_only"],
           "miou_all_true": s.get("miou_all_true"), "ap50": s["ap50"],
           "f1_50": s["f1_50"], "pq50": s["pq50"], "truth_kind": s.get("truth_kind")}
    emit({"step": "evaluate", **row})
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`score` rows."""
    keys = ("result", "n_fields", "n_true", "n_pred", "miou_matched", "miou_foreground_only", "miou_all_true", "ap50", "f1_50", "pq50")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(k):.3f}" if isinstance(r.get(k), float) else str(r.get(k))
                                       for k in keys) + " |")
    return "\n".join(lines)
