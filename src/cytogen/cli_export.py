"""Command line of ``cytogen export`` (registered by :mod:`cytogen.cli`).

Parses arguments and calls :func:`cytogen.workflows.export.export`.
"""

from __future__ import annotations

import argparse
import json

from cytogen.cli import _ints

WEIGHTS = ("pytorch_state_dict", "torchscript", "onnx")


def _weights(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in WEIGHTS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(WEIGHTS)}, got {text!r}")
    return names


def _authors(text: str) -> list[str]:
    names = [t.strip() for t in text.split(";") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected names separated by ';', got {text!r}")
    return names


def _cite(text: str) -> tuple[str, str]:
    body, sep, ref = text.rpartition("|")
    if not sep or not body.strip() or not ref.strip():
        raise argparse.ArgumentTypeError(f"expected 'TEXT|DOI-or-URL', got {text!r}")
    return body.strip(), ref.strip()


def _cmd_export(a: argparse.Namespace) -> None:
    from cytogen.workflows.export import export

    s = export(a.model, a.out, format=a.format, test_input=a.test_input, crop=a.crop, authors=a.authors,
               name=a.name, description=a.description, license=a.license, cite=a.cite,
               weights=a.weights or WEIGHTS, check=a.check)
    print(json.dumps(s))


def add_export_parser(sub) -> None:
    """``cytogen export MODEL --format bioimageio|onnx --out FILE``."""
    e = sub.add_parser("export", help="a model folder as a bioimage.io model package (.zip, spec 0.5, tested "
                       "with bioimageio.core) or an ONNX file (dynamic batch and spatial axes)")
    e.add_argument("model", help="RUN/model folder from 'cytogen train'")
    e.add_argument("--format", required=True, choices=("bioimageio", "onnx"))
    e.add_argument("--out", required=True, help="PKG.zip (bioimageio) or MODEL.onnx (onnx); written atomically")
    e.add_argument("--test-input", default=None,
                   help="bioimageio: a real field of the source channel(s) (path#c=K, or files joined by ';'); "
                        "a centred crop gives the test tensors and the cover")
    e.add_argument("--crop", type=_ints, default=None,
                   help="test crop size (one or per axis, multiples of the size multiple; default up to 256 px)")
    e.add_argument("--name", default=None, help="package name (default: cytogen ARCH SOURCE to TARGET)")
    e.add_argument("--description", default=None)
    e.add_argument("--authors", type=_authors, default=None, help="'Name;Name' (default: model.json's authors)")
    e.add_argument("--license", default=None, help="SPDX id (default: model.json's, else BSD-3-Clause)")
    e.add_argument("--cite", type=_cite, action="append", default=None,
                   help="'TEXT|DOI-or-URL', repeatable (the architecture's paper is always cited)")
    e.add_argument("--weights", type=_weights, default=None,
                   help=f"bioimageio weight formats, comma-separated (default all: {','.join(WEIGHTS)})")
    e.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run bioimageio.core's test on the package before writing it (default on)")
    e.set_defaults(func=_cmd_export)
