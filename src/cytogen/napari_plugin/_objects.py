"""An ``cytogen evaluate objects`` folder as napari layers, one field per step of a slider.

Five kinds of layers, whose first axis is the field (in ``fields.csv`` order; the viewer's
slider steps through the fields): real nuclei (blue) and predicted nuclei (red) as points at
their centroids, with the per-object columns of ``objects.csv`` (and ``field``) as features; a
shapes layer of lines joining each matched predicted nucleus to its real partner
(``matched_label``, with the ``distance``); and, when ``summary.json`` names the evaluation's
inputs (``inputs.pred`` / ``inputs.truth``, written by
:func:`cytogen.workflows.evaluate_objects.evaluate_objects`) and they are still readable, the
real and predicted images beneath, one stack per channel (fields smaller than the largest are
padded with zeros). ``metadata["cytogen"]["fields"]`` lists the field names by slider position.
One stack per kind keeps the layer count at five whatever the number of fields.

Coordinates are the CSV's pixel centroids; ``scale`` is 1 for the field axis and the pixel size
the evaluation used (``centroid_*_um / centroid_*_px``, median over the objects) for the others,
so the layers are in micrometres and the field images, given the same scale, lie beneath their
nuclei. Without a pixel size (the evaluation ran in px) the scale is 1.
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


def _points(rows: list[dict[str, str]], index: list[int], axes: tuple[str, ...], name: str,
            colour: str, scale: tuple[float, ...], fields: list[str]) -> LayerData:
    radius = np.array([_float(r.get("equivalent_radius_px")) for r in rows])
    size = float(np.nanmedian(radius)) if rows and np.isfinite(radius).any() else 5.0
    coords = np.column_stack([np.asarray(index, np.float64), _centroids(rows, axes, "px")])
    features = {"field": np.array([r["field"] for r in rows], dtype=object), **_features(rows)}
    return (coords.reshape(len(rows), len(axes) + 1),
            {"name": name, "scale": scale, "face_color": colour, "border_color": "white",
             "border_width": 0.1, "size": max(size, 1.0), "features": features,
             "metadata": {"cytogen": {"fields": fields}}}, "points")


def _match_lines(true_rows: list[dict[str, str]], pred_rows: list[dict[str, str]],
                 axes: tuple[str, ...]) -> tuple[list[np.ndarray], list[float]]:
    """One field's lines from each matched predicted centroid to its real partner's, and their
    distances (``distance_um``, else ``distance_px``)."""
    true_at = {int(_float(r["label"])): c for r, c in zip(true_rows, _centroids(true_rows, axes, "px"))}
    lines, dist = [], []
    dist_key = next((k for k in ("distance_um", "distance_px") if pred_rows and k in pred_rows[0]), None)
    for r, c in zip(pred_rows, _centroids(pred_rows, axes, "px")):
        partner = _float(r.get("matched_label"))
        if np.isfinite(partner) and int(partner) in true_at:
            lines.append(np.stack([c, true_at[int(partner)]]))
            dist.append(_float(r[dist_key]) if dist_key else float("nan"))
    return lines, dist


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


def _stacks(pairs: list[Any], kind: str) -> list[tuple[str, np.ndarray]]:
    """Per channel of the ``kind`` images ("truth" or "pred"): one ``(field, [Z,] Y, X)`` stack,
    fields smaller than the largest padded with zeros at their far ends."""
    images = [getattr(p, kind) for p in pairs]
    shape = tuple(max(im.data.shape[a] for im in images) for a in range(images[0].data.ndim))
    out = []
    for c in range(shape[0]):
        stack = np.zeros((len(images), *shape[1:]), np.result_type(*[im.data.dtype for im in images]))
        for i, im in enumerate(images):
            if c < im.data.shape[0]:
                stack[(i, *(slice(0, n) for n in im.data.shape[1:]))] = im.data[c]
        names = images[0].channel_names
        label = f" {names[c]}" if names and c < len(names) else f" {c}" if shape[0] > 1 else ""
        out.append((label, stack))
    return out


def objects_layers(folder: str | Path) -> list[LayerData]:
    """Layers for an ``evaluate objects`` output folder (see the module docstring).

    Parameters
    ----------
    folder : str or pathlib.Path
        Holds ``objects.csv``, ``fields.csv`` and ``summary.json``.

    Returns
    -------
    list of LayerData
        [real image per channel, predicted image per channel,] real nuclei, predicted nuclei,
        matches; the first axis of each is the field (``fields.csv`` order).

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
    position = {name: i for i, name in enumerate(fields)}
    rows = [r for r in rows if r["field"] in position]
    real = [r for r in rows if r["kind"] == "true"]
    pred = [r for r in rows if r["kind"] == "pred"]
    images = _field_images(folder, summary)
    pairs = [images[f] for f in fields if f in images]
    spacing = pixel_size(rows, axes)
    if len(pairs) == len(fields) and pairs and all(p.truth.ndim_spatial == len(axes) for p in pairs):
        spacing = spacing or pairs[0].truth.pixel_size_um
    else:
        pairs = []
    scale = (1.0, *(spacing or (1.0,) * len(axes)))
    meta = {"cytogen": {"fields": fields, "folder": str(folder)}}
    tag = f"{folder.name}: "
    layers: list[LayerData] = []
    for kind, label, colour in (("truth", "real", "blue"), ("pred", "predicted", "red")):
        for channel, stack in (_stacks(pairs, kind) if pairs else []):
            layers.append((stack, {"name": f"{tag}{label} image{channel}", "scale": scale,
                                   "colormap": colour, "blending": "additive", "metadata": meta},
                           "image"))
    layers.append(_points(real, [position[r["field"]] for r in real], axes, f"{tag}real nuclei",
                          REAL_COLOUR, scale, fields))
    layers.append(_points(pred, [position[r["field"]] for r in pred], axes, f"{tag}predicted nuclei",
                          PRED_COLOUR, scale, fields))
    lines, dist, where = [], [], []
    for i, name in enumerate(fields):
        own_lines, own_dist = _match_lines([r for r in real if r["field"] == name],
                                           [r for r in pred if r["field"] == name], axes)
        lines += [np.column_stack([np.full(2, float(i)), line]) for line in own_lines]
        dist += own_dist
        where += [name] * len(own_lines)
    layers.append((lines, {"name": f"{tag}matches", "scale": scale, "shape_type": "line",
                           "edge_color": MATCH_COLOUR, "edge_width": 0.5, "metadata": meta,
                           "features": {"field": np.array(where, dtype=object),
                                        "distance": np.array(dist, dtype=np.float64)}}, "shapes"))
    return layers
