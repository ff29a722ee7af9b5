"""Command line of ``cytogen evaluate exclusivity`` (registered by :mod:`cytogen.cli`).

Parses arguments and calls :func:`cytogen.workflows.evaluate_exclusivity.evaluate_exclusivity`.
"""

from __future__ import annotations

import argparse
import json

from cytogen.cli import _threshold, two_numbers


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected names like DAPI,MAP2,NFH, got {text!r}")
    return names


def _percentiles(text: str) -> tuple[float, float]:
    return two_numbers(text, ",", f"expected two percentiles like 1,99.8, got {text!r}")


def _cmd(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_exclusivity import evaluate_exclusivity

    s = evaluate_exclusivity(a.pred, a.out, truth=a.truth, names=a.names, scale=a.scale,
                             percentiles=a.percentiles, threshold=a.threshold, progress=True)
    keys = ("structures", "n_fields", "scale")
    shown = {k: s[k] for k in keys}
    shown["overall"] = s["prediction"]["overall"]
    shown["per_structure"] = s["prediction"]["per_structure"]
    if "truth" in s:
        shown.update(truth_overall=s["truth"]["overall"], mse=s["mse"], jaccard=s["jaccard"])
    print(json.dumps(shown))


def add_evaluate_exclusivity_parser(esub) -> None:
    """Add ``evaluate exclusivity`` to the ``evaluate`` sub-commands."""
    p = esub.add_parser("exclusivity", help="overlap between predicted structures: overall, per-structure "
                                            "and pairwise exclusivity (Sun et al. 2022), MSE, Jaccard")
    p.add_argument("--pred", nargs="+", required=True, metavar="DIR",
                   help="one folder per structure (files matched by name), or one folder of multi-channel "
                        "predictions (one channel per structure)")
    p.add_argument("--out", required=True, help="new folder: summary.json, fields.csv, pairwise.csv, "
                                                "exclusivity.png, report.html")
    p.add_argument("--truth", nargs="+", default=None, metavar="DIR",
                   help="the real images in the same layout as --pred, or one manifest CSV whose targets "
                        "are the structures in --pred's order: adds MSE, Jaccard and the truth's exclusivity")
    p.add_argument("--names", type=_names, default=None,
                   help="structure names, comma-separated (default: folder names, else channel names)")
    p.add_argument("--scale", choices=("truth", "percentile", "minmax", "none"), default=None,
                   help="common intensity scale (default: truth with --truth, else percentile): truth = "
                        "each structure by its truth field's (x - p1)/(p99.8 - p1); percentile = by its "
                        "own pooled percentiles; minmax = [0, 1] by pooled min and max (x 255 = the "
                        "paper's 8-bit units); none = as given")
    p.add_argument("--percentiles", type=_percentiles, default=(1.0, 99.8),
                   help="low,high percentiles of the truth and percentile scales (default 1,99.8)")
    p.add_argument("--threshold", type=_threshold, default="otsu",
                   help="region threshold for the Jaccard index: otsu (default), li, triangle or a value "
                        "on the common scale")
    p.set_defaults(func=_cmd)
