"""Command line of ``cytogen evaluate uncertainty`` (registered by :mod:`cytogen.cli`).

Parses arguments and calls :func:`cytogen.workflows.evaluate_uncertainty.evaluate_uncertainty`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cmd(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_uncertainty import evaluate_uncertainty

    s = evaluate_uncertainty(a.pred, a.truth, a.out, split=a.split, pixel_size_um=a.pixel_size_um,
                             channel=a.channel, progress=True)
    px, pl = s["pixels"], s["objects"]["placement"]
    shown = {"n_fields": px["n_fields"], "pooled_spearman": px["pooled_spearman"]["value"],
             "pooled_spearman_ci95": px["pooled_spearman"]["ci95"],
             "calibration_ratio": px["calibration_ratio"]["value"],
             "decile_spearman": px["decile_spearman"]["value"],
             "objects": (pl["status"] if pl["status"] != "ok" else
                         {"unit": pl["unit"], "median_distance_top": pl["top"]["median_distance"],
                          "median_distance_bottom": pl["bottom"]["median_distance"],
                          "p_one_sided": pl["p_one_sided"]}),
             "report": str(Path(a.out) / "report.html")}
    print(json.dumps(shown))


def add_evaluate_uncertainty_parser(esub) -> None:
    """Add ``evaluate uncertainty`` to the ``evaluate`` sub-commands."""
    p = esub.add_parser("uncertainty", help="calibration of a prediction's per-pixel spread: Spearman of "
                                            "spread vs |error|, reliability deciles, nuclei by spread")
    p.add_argument("--pred", required=True, metavar="DIR",
                   help="folder of <name>.tif (mean) and <name>_spread.tif (per-pixel standard deviation)")
    p.add_argument("--truth", required=True, help="manifest CSV whose targets are the truth")
    p.add_argument("--out", required=True, help="new folder: uncertainty.json, fields.csv, deciles.csv, "
                                                "objects.csv, reliability.png, spread_maps.png, report.html")
    p.add_argument("--split", default=None, help="manifest split (default: test if any, else all)")
    p.add_argument("--pixel-size-um", type=float, default=None,
                   help="in-plane pixel size in um for the nucleus distances; wins over the manifest's "
                        "pixel_size_um column, which wins over the image metadata")
    p.add_argument("--channel", type=int, default=0, help="channel evaluated (pixels and nuclei; default 0)")
    p.set_defaults(func=_cmd)
