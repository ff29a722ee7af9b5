"""Command line of ``cytogen retrain exclusivity`` (registered by :mod:`cytogen.cli`)."""

from __future__ import annotations

import argparse
import json


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,0.5,1,2,4, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one weight, e.g. 0,1")
    return vals


def _splits(text: str) -> tuple[str, str]:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected VAL,TEST (two manifest splits, e.g. val,test), got {text!r}")
    return parts[0], parts[1]


def _cmd_retrain_exclusivity(a: argparse.Namespace) -> None:
    from cytogen.workflows.retrain_exclusivity import retrain_exclusivity

    s = retrain_exclusivity(a.models, a.data, a.out, weights=a.weights, steps=a.steps, order=a.order,
                            splits=a.split, overrides=a.set or [])
    t = s["test"]
    print(json.dumps({"out": a.out, "order": s["order"], "chosen_p": s["chosen_p"],
                      "test_overall_exclusivity": [t["before"]["overall_exclusivity"],
                                                   t["after"]["overall_exclusivity"]],
                      "test_overall_mse": [t["before"]["overall_mse"], t["after"]["overall_mse"]],
                      "gain_percent": t["overall_exclusivity_gain_percent"], "seconds": s["seconds"]}))


def add_retrain_parser(sub) -> None:
    """``cytogen retrain exclusivity ...``."""
    from cytogen.workflows.retrain_exclusivity import DEFAULT_WEIGHTS, ORDERS

    r = sub.add_parser("retrain", help="retrain trained models with an extra objective")
    rsub = r.add_subparsers(dest="retrain_what", required=True)
    e = rsub.add_parser(
        "exclusivity", help="fine-tune one-structure models in turn with the exclusivity loss (Sun et al. 2022)",
        description="Greedy exclusivity retraining: structures in order of their initial validation "
                    "exclusivity; for each, fine-tune its model for every p (0 included), keep the p with the "
                    "highest overall exclusivity / MSE on the validation split, update its predictions, go on. "
                    "Writes trajectory.csv, summary.json (test split before/after), models/<structure>/, "
                    "figures and report.html.")
    e.add_argument("--models", nargs="+", required=True, metavar="RUN/model",
                   help="one model folder per structure, all from the same input channels")
    e.add_argument("--data", required=True, help="manifest whose targets include every structure (train/val/test)")
    e.add_argument("--out", required=True, help="new folder")
    e.add_argument("--weights", type=_floats, default=DEFAULT_WEIGHTS,
                   help="p values scanned per structure (default 0,0.5,1,2,4; 0 is always included)")
    e.add_argument("--steps", type=int, default=500, help="fine-tuning steps per structure and p (default 500)")
    e.add_argument("--order", choices=ORDERS, default="increasing",
                   help="retraining order by initial validation exclusivity (default increasing: the most "
                        "overlapping structure first; the paper's 3.2 says decreasing)")
    e.add_argument("--split", type=_splits, default=("val", "test"), metavar="VAL,TEST",
                   help="manifest splits to choose p on and to report on (default val,test)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="recipe override for the fine-tuning runs, e.g. optim.lr=0.0003")
    e.set_defaults(func=_cmd_retrain_exclusivity)
