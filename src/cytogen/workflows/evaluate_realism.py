"""``cytogen evaluate realism``: are synthetic nuclei like real ones?

Both sides are manifests of images with their instance labels (``source`` = image, ``target`` =
labels: the format of ``cytogen synthesize from-masks`` and of the segmenter's training data).
Every object is measured (:func:`cytogen.evaluate.realism.object_features`); the two sets are
compared per feature (KS) and as a whole (Frechet distance, with the real-vs-real null).
Writes ``OUT/realism.json``, ``OUT/objects.csv`` (one row per object, ``set`` real/synthetic)
and ``OUT/features.png`` (overlaid histograms), swapped in as one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cytogen.data.manifest import read_manifest
from cytogen.errors import CytogenError
from cytogen.evaluate.realism import FEATURES, compare_features, object_features, real_halves_frechet
from cytogen.io.atomic import atomic_dir, write_json
from cytogen.io.images import read_spec
from cytogen.report.figures import save_figure
from cytogen.workflows.evaluate import check_out, write_csv

OUTPUTS = ("realism.json", "objects.csv", "features.png")


def _measure(manifest: str | Path, split: str | None) -> list[dict[str, np.ndarray]]:
    rows = [e for e in read_manifest(manifest) if split is None or e.split == split]
    if not rows:
        raise CytogenError(f"{manifest}: no rows{'' if split is None else f' with split={split}'}")
    out = []
    for e in rows:
        image, labels = read_spec(e.source[0]).data, read_spec(e.target[0]).data
        try:
            out.append(object_features(image, labels))
        except CytogenError as exc:
            raise CytogenError(f"{manifest}, field {e.name!r}: {exc}") from None
    return out


def _pool(per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([f[k] for f in per_image]) for k in FEATURES}


def _figure(real: dict[str, np.ndarray], synth: dict[str, np.ndarray], result: dict) -> Figure:
    fig = Figure(figsize=(13, 6.5))
    axes = fig.subplots(3, 3).ravel()
    for ax, k in zip(axes, FEATURES):
        lo, hi = np.percentile(np.concatenate([real[k], synth[k]]), [1, 99])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        ax.hist(real[k], bins=bins, alpha=0.55, density=True, label=f"real ({len(real[k])})")
        ax.hist(synth[k], bins=bins, alpha=0.55, density=True, label=f"synthetic ({len(synth[k])})")
        f = result["features"][k]
        ax.set_title(f"{k}: KS {f['ks']:.2f} (p {f['p']:.1e})", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Frechet distance {result['frechet']:.2f} (real vs real halves: median "
                 f"{result['frechet_real_halves']['median']:.2f})", fontsize=10)
    fig.tight_layout()
    return fig


def evaluate_realism(real: str | Path, synthetic: str | Path, out: str | Path, *, real_split: str | None = None,
                     synthetic_split: str | None = None) -> dict[str, Any]:
    """Compare the objects of two manifests (see the module docstring); returns ``realism.json``'s dict."""
    check_out(out, OUTPUTS, "a realism evaluation")
    real_f, synth_f = _measure(real, real_split), _measure(synthetic, synthetic_split)
    r, s = _pool(real_f), _pool(synth_f)
    result = compare_features(r, s)
    result["frechet_real_halves"] = real_halves_frechet(real_f) if len(real_f) >= 2 else None
    if result["frechet_real_halves"] is None:
        result["frechet_real_halves"] = {"median": float("nan"), "note": "one real image: no real-vs-real reference"}
    result.update({"real": str(real), "synthetic": str(synthetic), "normalisation":
                   "each image scaled to its own 1st-99.8th percentiles before measuring",
                   "test": "two-sided Kolmogorov-Smirnov, objects as independent draws"})
    rows = [{"set": name, **{k: float(v[k][i]) for k in FEATURES}}
            for name, v in (("real", r), ("synthetic", s)) for i in range(len(v[FEATURES[0]]))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        write_json(tmp / "realism.json", result)
        write_csv(tmp / "objects.csv", rows)
        save_figure(_figure(r, s, result), tmp / "features.png")
    return result
