"""Command line of ``cytogen evaluate perceptual`` (registered by :mod:`cytogen.cli`).

Parses arguments and calls :func:`cytogen.workflows.evaluate_perceptual.evaluate_perceptual`.
"""

from __future__ import annotations

import argparse
import json


def _cmd(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_perceptual import evaluate_perceptual

    r = evaluate_perceptual(a.pred, a.truth, a.out, split=a.split, fid=a.fid, lpips_backbone=a.lpips_backbone,
                            lpips_lin=a.lpips_lin, lpips_net=a.lpips_net, crop=a.crop, n_boot=a.n_boot,
                            fid_splits=a.fid_splits, seed=a.seed, channel=a.channel, progress=True)

    def short(d: dict, key: str = "distance") -> dict:
        base = d.get("real_halves", {})
        return {"value": d[key], "ci95": [d.get("ci_low"), d.get("ci_high")], "real_vs_real": base.get("median")}

    shown = {"n_fields": r["n_fields"], "lower_is_better": True, "object_frechet": short(r["object_frechet"]),
             "patch_frechet": short(r["patch_frechet"])}
    f = r["fid"]
    shown["fid"] = f if isinstance(f, str) else {"value": f["fid"], "real_vs_real": f["fid_real_halves"]["median"]}
    shown["kid"] = None if isinstance(f, str) else {"mean": f["kid"]["mean"], "sd": f["kid"]["sd"],
                                                    "real_vs_real": f["kid_real_halves"]["median"]}
    lp = r["lpips"]
    shown["lpips"] = lp if isinstance(lp, str) else {"median": lp["median"], "ci95": [lp["ci_low"], lp["ci_high"]]}
    shown["out"] = str(a.out)
    print(json.dumps(shown))


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_evaluate_perceptual_parser(esub) -> None:
    """Add ``evaluate perceptual`` to the ``evaluate`` sub-commands."""
    p = esub.add_parser("perceptual", help="realism of predictions as distributions: object-feature and "
                                           "patch-statistics Frechet distances (intervals, real-vs-real "
                                           "baselines), FID/KID, LPIPS")
    p.add_argument("--pred", required=True, metavar="DIR", help="predictions <name>.tif (cytogen predict; "
                                                                "<name>_spread.tif files are not read)")
    p.add_argument("--truth", required=True, metavar="CSV", help="manifest whose targets are the real images")
    p.add_argument("--out", required=True, help="new folder: perceptual.json, fields.csv, objects.csv, "
                                                "distances.png, features.png, report.html")
    p.add_argument("--split", default=None, help="evaluate only this split's fields (each needs a prediction)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fid", dest="fid", action="store_const", const=True, default="auto",
                   help="require FID/KID (error without the fid extra; default: computed when installed)")
    g.add_argument("--no-fid", dest="fid", action="store_const", const=False, help="skip FID/KID")
    p.add_argument("--fid-splits", type=int, default=3,
                   help="real-vs-real splits of the FID/KID baseline (default 3; 0: none; each FID costs "
                        "10-30 s of CPU)")
    p.add_argument("--lpips-backbone", default=None, metavar="FILE", help="LPIPS backbone weights: adds LPIPS")
    p.add_argument("--lpips-lin", default=None, metavar="FILE", help="LPIPS linear-layer weights")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS network (default alex)")
    p.add_argument("--crop", type=int, default=256, help="crop side in px for FID, KID and LPIPS (default 256)")
    p.add_argument("--n-boot", type=_positive, default=200, help="bootstrap resamples (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the splits (default 0)")
    p.add_argument("--channel", type=int, default=0, help="channel compared (default 0)")
    p.set_defaults(func=_cmd)
