"""Command line of ``cytogen evaluate uncertainty`` (registered by :mod:`cytogen.cli`).

Parses arguments and calls :func:`cytogen.workflows.evaluate_uncertainty.evaluate_uncertainty`.
"""

from __future__ import annotations

import argparse
import json


def _cmd(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_uncertainty import evaluate_uncertainty

    s = evaluate_uncertainty(a.pred, a.truth, a.out, split=a.split, pixel_size_um=a.pixel_size_um,
                             channel=a.channel, seed=a.seed, progress=True)
    px, place = s["pixels"], s["objects"]["placement"]
    shown = {"n_fields": px["n_fields"], "split": s["inputs"]["split"],
             "spearman_pooled": px["pooled_spearman"]["value"], "spearman_pooled_ci95": px["pooled_spearman"]["ci95"],
             "spearman_field_median": px["field_spearman"]["median"],
             "calibration_ratio": px["calibration_ratio"]["value"], "unit": s["objects"]["unit"]}
    if place.get("status") == "ok":
        shown.update(distance_top_quartile=place["top"]["median_distance"],
                     distance_bottom_quartile=place["bottom"]["median_distance"],
                     p_top_gt_bottom=place["p_one_sided"])
    shown["report"] = f"{a.out}/report.html"
    print(json.dumps(shown))


def add_evaluate_uncertainty_parser(esub) -> None:
    """Add ``evaluate uncertainty`` to the ``evaluate`` sub-commands."""
    p = esub.add_parser("uncertainty", help="does the spread of predict --tta/--ensemble/--mc-dropout/--samples "
                                            "predict the error? Spearman, reliability deciles, nuclei by spread")
    p.add_argument("--pred", required=True, help="folder of <name>.tif (mean) and <name>_spread.tif (per-pixel SD)")
    p.add_argument("--truth", required=True, help="manifest CSV whose targets are the truth")
    p.add_argument("--out", required=True, help="new folder: uncertainty.json, fields.csv, deciles.csv, "
                                                "objects.csv, reliability.png, spread_maps.png, report.html")
    p.add_argument("--split", default=None, help="manifest split (default: test if any, else all)")
    p.add_argument("--pixel-size-um", type=float, default=None,
                   help="in-plane pixel size for nucleus distances (wins over the manifest and the metadata)")
    p.add_argument("--channel", type=int, default=0, help="channel evaluated (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pixel samples and the bootstrap (default 0)")
    p.set_defaults(func=_cmd)
