"""Command line of segmentation: ``cytogen segment cells`` (unsupervised), ``cytogen segment
nuclei`` (supervised) and ``cytogen evaluate cells``.

Parses arguments and calls :mod:`cytogen.workflows.segment_cells`,
:mod:`cytogen.workflows.segment_nuclei` and :mod:`cytogen.workflows.evaluate_cells`, nothing
more (registered by :mod:`cytogen.cli`).
"""

from __future__ import annotations

import argparse
import json

from cytogen.errors import CytogenError

MARKER_SOURCES = ("nuclei", "nucleus_model", "markers")


def _cmd_segment_cells(a: argparse.Namespace) -> None:
    from cytogen.workflows.segment_cells import segment_cells

    if a.method == "model" and a.model is None:
        raise CytogenError("segment cells: give a model folder (RUN/model of 'cytogen train "
                           "configs/cellseg_consistency2d.yaml'), or --method propagate for the baseline")
    if a.method == "propagate" and a.model is not None:
        raise CytogenError(f"segment cells: --method propagate uses no model, but {a.model!r} was given; "
                           "drop it, or use --method model")
    from cytogen.config import parse_overrides

    given = parse_overrides(a.set)
    if set(given) - {"cellseg"}:
        raise CytogenError(f"segment cells --set takes cellseg.KEY=VALUE only, got {sorted(given)}")
    s = segment_cells(a.model, a.data, a.out, method=a.method, split=a.split, markers_from=a.markers_from,
                      threshold=a.threshold, batch_size=a.batch_size, settings=given.get("cellseg"),
                      output_format=a.output_format, progress=True)
    print(json.dumps({k: s[k] for k in ("out", "method", "n_fields", "n_cells", "marker_source", "seconds",
                                          "marker_errors") if k in s}, default=str))


def _cmd_segment_nuclei(a: argparse.Namespace) -> None:
    from cytogen.config import parse_overrides
    from cytogen.workflows.segment_nuclei import segment_nuclei

    given = parse_overrides(a.set)
    if set(given) - {"instances"}:
        raise CytogenError(f"segment nuclei --set takes instances.KEY=VALUE only, got {sorted(given)}")
    s = segment_nuclei(a.model, a.files or None, data=a.data, split=a.split, out=a.out,
                       settings=given.get("instances"), precision=a.precision, output_format=a.output_format)
    print(json.dumps({k: s[k] for k in ("out", "n_images", "n_nuclei", "seconds")}))


def _cmd_evaluate_cells(a: argparse.Namespace) -> None:
    from cytogen.workflows.evaluate_cells import evaluate_cells

    s = evaluate_cells(a.pred, a.truth, a.out, split=a.split)
    print(json.dumps({k: s[k] for k in ("n_fields", "n_true", "n_pred", "miou_matched", "ap50", "f1_50",
                                          "pq50", "report") if k in s}, default=str))


def add_segment_parser(sub: argparse._SubParsersAction) -> None:
    """``cytogen segment cells`` and ``cytogen segment nuclei``."""
    s = sub.add_parser("segment", help="segment cells (unsupervised, marker-controlled) or nuclei (supervised)")
    ssub = s.add_subparsers(dest="what", required=True)
    c = ssub.add_parser("cells", help="label images of whole cells from a cell image and nucleus markers")
    c.add_argument("model", nargs="?", default=None,
                   help="RUN/model of 'cytogen train configs/cellseg_consistency2d.yaml' (not with --method propagate)")
    c.add_argument("--data", required=True,
                   help="M.csv: name, source, one of nuclei / nucleus_model / markers, optional foreground, "
                        "scribbles, cells, split, pixel_size_um")
    c.add_argument("--out", required=True, help="new folder: <name>.tif uint16 labels, markers.csv, report.html")
    c.add_argument("--split", default=None, help="only rows of this split (default: every row)")
    c.add_argument("--method", choices=("model", "propagate"), default="model",
                   help="model (default): the trained segmenter; propagate: the classical baseline "
                        "(seeded watershed of the cell image from the same markers inside the foreground)")
    c.add_argument("--markers-from", choices=MARKER_SOURCES, default=None,
                   help="marker source when M.csv gives several (default: the only one given); the others "
                        "then serve as reference markers for false negatives / positives at 15 um")
    c.add_argument("--threshold", type=float, default=None,
                   help="background below this cell probability (default: the model's recipe, 0.5)")
    c.add_argument("--batch-size", type=int, default=256, help="patches per model call")
    c.add_argument("--set", action="append", metavar="cellseg.KEY=VALUE",
                   help="marker / foreground setting over the model's (or the defaults for propagate), e.g. "
                        "cellseg.nucleus_diameter_um=12: give the baseline the model's markers")
    c.add_argument("--output-format", choices=("tif", "ome-zarr"), default="tif",
                   help="tif (default): <name>.tif labels; ome-zarr: <name>.ome.zarr, the cell image with the "
                        "labels as NGFF labels/cells (opens in napari, Fiji/MoBIE)")
    c.set_defaults(func=_cmd_segment_cells)
    n = ssub.add_parser("nuclei", help="nucleus label images from a trained nucleus segmenter")
    n.add_argument("model", help="RUN/model of 'cytogen train configs/segment_nuclei2d.yaml'")
    n.add_argument("files", nargs="*", help="images (path or path#c=K); or --data")
    n.add_argument("--data", default=None, help="manifest CSV: its 'source' images")
    n.add_argument("--split", default=None, help="manifest rows of this split (default: test where there is one)")
    n.add_argument("--out", required=True, help="new folder: <name>.tif uint16 labels, nuclei.csv, summary.json")
    n.add_argument("--precision", default="auto", help="auto (bf16 where faster), 32 or bf16-mixed")
    n.add_argument("--output-format", choices=("tif", "ome-zarr"), default="tif",
                   help="tif (default): <name>.tif labels; ome-zarr: <name>.ome.zarr, the image with the "
                        "labels as NGFF labels/nuclei (opens in napari, Fiji/MoBIE)")
    n.add_argument("--set", action="append", metavar="instances.KEY=VALUE",
                   help="fg_threshold, seed_threshold, min_size_px or min_size_um2 over the model's")
    n.set_defaults(func=_cmd_segment_nuclei)


def add_evaluate_cells_parser(esub: argparse._SubParsersAction) -> None:
    """``cytogen evaluate cells`` (added to the ``evaluate`` verb)."""
    e = esub.add_parser("cells", help="instance scores of cell label images: mIoU of matched cells, AP/F1/PQ")
    e.add_argument("--pred", required=True, help="folder of <name>.tif label images (cytogen segment cells)")
    e.add_argument("--truth", required=True,
                   help="M.csv (its 'cells' column of ground-truth labels) or a folder of same-named label "
                        "images (agreement between two segmentations)")
    e.add_argument("--out", required=True)
    e.add_argument("--split", default=None, help="only rows of this split of M.csv")
    e.set_defaults(func=_cmd_evaluate_cells)
