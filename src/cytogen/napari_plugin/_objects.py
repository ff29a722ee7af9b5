"""An ``cytogen evaluate objects`` folder as napari layers.

For each field of ``fields.csv``: real nuclei (blue) and predicted nuclei (red) as points layers at
their centroids with the per-object columns of ``objects.csv`` as features, a shapes layer of lines
joining each matched predicted nucleus to its real partner (``matched_label``), and, when
``summary.json`` names the evaluation's inputs (``inputs.pred`` / ``inputs.truth``, written by
:func:`cytogen.workflows.evaluate_objects.evaluate_objects`) and they are still there, the real
and predicted images beneath. Only the first field is visible; the others are listed, hidden.

Coordinates are the CSV's pixel centroids; ``scale`` is the pixel size the evaluation used
(``centroid_*_um / centroid_*_px``), so the layers are in micrometres and overlay the field
images, which get the same scale. Without a pixel size (the evaluation ran in px) the scale is 1.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cytogen.errors import CytogenError
from cytogen.napari_plugin._reader import LayerData

REAL_COLOUR = "dodgerblue"
PRED_COLOUR = "red"
MATCH_COLOUR = "yellow"
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
FEATURES = ("label", "size_px", "size_um", "equivalent_radius_px", "equivalent_radius_um",
            "matched_label", "n_partners", "distance_um", "distance_px", "touches_border")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def _centroids(rows: list[dict[str, str]], axes: tuple[str, ...], unit: str) -> np.ndarray:
    return np.array([[_float(r[f"centroid_{a}_{unit}"]) for a in axes] for r in rows],
                    dtype=np.float64).reshape(len(rows), len(axes))


def pixel_size(rows: list[dict[str, str]], axes: tuple[str, ...]) -> tuple[float, ...] | None:
    """The evaluation's pixel size per axis (median of ``um / px`` over the centroids), or None."""
    if not rows or not all(f"centroid_{a}_um" in rows[0] for a in axes):
        return None
    px, um = _centroids(rows, axes, "px"), _centroids(rows, axes, "um")
    sizes = []
    for a in range(len(axes)):
        ok = np.isfinite(um[:, a]) & (px[:, a] > 0.5)
        if not ok.any():
            return None
        sizes.append(float(np.median(um[ok, a] / px[ok, a])))
    return tuple(sizes)


def _features(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    feats: dict[str, np.ndarray] = {}
    for key in FEATURES:
        if rows and key in rows[0]:
            if key == "touches_border":
                feats[key] = np.array([r[key] == "True" for r in rows], dtype=bool)
            elif key in ("label", "matched_label", "n_partners"):  # no partner: -1
                feats[key] = np.array([int(_float(r[key])) if np.isfinite(_float(r[key])) else -1
                                       for r in rows], dtype=np.int64)
            else:
                feats[key] = np.array([_float(r[key]) for r in rows], dtype=np.float64)
    return feats


def _points(rows: list[dict[str, str]], axes: tuple[str, ...], name: str, colour: str,
            scale: tuple[float, ...], visible: bool) -> LayerData:
    radius = np.array([_float(r.get("equivalent_radius_px")) for r in rows])
    size = float(np.nanmedian(radius)) if rows and np.isfinite(radius).any() else 5.0
    return (_centroids(rows, axes, "px"),
            {"name": name, "scale": scale, "face_color": colour, "border_color": "white",
             "border_width": 0.1, "size": max(size, 1.0), "features": _features(rows),
             "visible": visible, "metadata": {"cytogen": {"kind": name}}}, "points")


def _match_lines(true_rows: list[dict[str, str]], pred_rows: list[dict[str, str]],
                 axes: tuple[str, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    """Lines from each matched predicted centroid to its real partner's, and their distances."""
    true_at = {int(_float(r["label"])): c for r, c in zip(true_rows, _centroids(true_rows, axes, "px"))}
    lines, dist = [], []
    dist_key = next((k for k in ("distance_um", "distance_px") if pred_rows and k in pred_rows[0]), None)
    for r, c in zip(pred_rows, _centroids(pred_rows, axes, "px")):
        partner = _float(r.get("matched_label"))
        if np.isfinite(partner) and int(partner) in true_at:
            lines.append(np.stack([c, true_at[int(partner)]]))
            dist.append(_float(r[dist_key]) if dist_key else float("nan"))
    return lines, np.array(dist, dtype=np.float64)


def _field_images(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``{field name: FieldPair}`` of the evaluation's inputs, or {} (with a warning) when gone."""
    inputs = summary.get("inputs")
    if not isinstance(inputs, dict) or not inputs.get("pred") or not inputs.get("truth"):
        return {}
    from cytogen.workflows.evaluate_objects import collect_pairs

    try:
        pairs = collect_pairs(Path(inputs["pred"]), Path(inputs["truth"]), inputs.get("split"))
    except CytogenError as exc:
        warnings.warn(f"{folder}: the evaluated images cannot be shown ({exc}); showing the "
                      "nuclei only", RuntimeWarning, stacklevel=2)
        return {}
    return {p.name: p for p in pairs}


def _image(data: np.ndarray, name: str, scale: tuple[float, ...], visible: bool,
           colormap: str) -> LayerData:
    return (data, {"name": name, "scale": scale, "visible": visible, "colormap": colormap,
                   "blending": "additive"}, "image")


def objects_layers(folder: str | Path) -> list[LayerData]:
    """Layers for an ``evaluate objects`` output folder (see the module docstring).

    Parameters
    ----------
    folder : str or pathlib.Path
        Holds ``objects.csv``, ``fields.csv`` and ``summary.json``.

    Returns
    -------
    list of LayerData
        Per field: [real image, predicted image,] real nuclei, predicted nuclei, matches.

    Raises
    ------
    CytogenError
        When ``objects.csv`` lacks the centroid columns the evaluation writes.
    """
    folder = Path(folder)
    rows = _read_csv(folder / "objects.csv")
    fields = [r["name"] for r in _read_csv(folder / "fields.csv")]
    summary = json.loads((folder / "summary.json").read_text())
    if rows and "centroid_y_px" not in rows[0]:
        raise CytogenError(f"{folder / 'objects.csv'}: no centroid_y_px column; is it the objects.csv "
                           "of 'cytogen evaluate objects'? Run the evaluation again")
    axes = AXES[3 if rows and "centroid_z_px" in rows[0] else 2]
    images = _field_images(folder, summary)
    layers: list[LayerData] = []
    for i, name in enumerate(fields):
        own = [r for r in rows if r["field"] == name]
        real = [r for r in own if r["kind"] == "true"]
        pred = [r for r in own if r["kind"] == "pred"]
        scale = pixel_size(own, axes) or pixel_size(rows, axes)
        pair, first = images.get(name), i == 0
        if pair is not None and pair.truth.ndim_spatial == len(axes):
            scale = scale or pair.truth.pixel_size_um
            img_scale = tuple(scale or (1.0,) * len(axes))
            for kind, image, colour in (("real", pair.truth, "blue"), ("predicted", pair.pred, "red")):
                for c in range(image.data.shape[0]):
                    ch = image.channel_names[c] if image.channel_names else str(c)
                    layers.append(_image(image.data[c], f"{name} {kind} image {ch}", img_scale, first,
                                         colour))
        scale = tuple(scale or (1.0,) * len(axes))
        layers.append(_points(real, axes, f"{name} real nuclei", REAL_COLOUR, scale, first))
        layers.append(_points(pred, axes, f"{name} predicted nuclei", PRED_COLOUR, scale, first))
        lines, dist = _match_lines(real, pred, axes)
        layers.append((lines, {"name": f"{name} matches", "scale": scale, "shape_type": "line",
                               "edge_color": MATCH_COLOUR, "edge_width": 0.5,
                               "features": {"distance": dist}, "visible": first}, "shapes"))
    return layers
