"""Single-cell crops of the Statistical Cell: preprocess, mask, align, centre, flip, pad (pure functions).

As in Donovan-Maiye et al. (2022, section 4.1.2): each channel of a field has its most frequent
intensity (the background) subtracted and negatives set to 0; each cell is cut out with everything
outside its mask zeroed (neighbours removed), turned so that the major axis of the cell mask (in the
XY plane; about z in 3D) lies along X, centred on the nucleus centroid, flipped along each in-plane
axis so that the cell mask's skew along it is positive, padded (or, with ``rescale``, shrunk) to a
fixed size, and each channel rescaled to ``[0, 1]`` by its maximum inside the cell.

One affine map per cell (:func:`scipy.ndimage.affine_transform`, linear for images, nearest for
masks) does the resampling (to a chosen isotropic pixel size), rotation, flip, centring and scaling
at once, so a crop is interpolated only once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cytogen.evaluate.features import cell_features, largest_component

__all__ = ["CellCrop", "crop_cell", "field_background", "major_axis_angle", "measure_cell",
           "preprocess_field", "touches_border"]


@dataclass
class CellCrop:
    """One aligned crop.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(C, *size)`` in ``[0, 1]`` (zero outside the cell).
    angle_deg : float
        Angle of the cell's major axis from the field's X axis (towards +Y, degrees in (-90, 90]);
        the crop is the field turned by ``-angle_deg``.
    flipped : str
        Crop axes mirrored after the turn to make the skew positive: ``""``, ``"x"``, ``"y"`` or ``"yx"``.
    scale : float
        Shrink factor applied to fit (1 = none).
    pixel_size : tuple of float
        Size of a crop pixel per axis (um when the field's pixel size is known, else field pixels).
    """

    image: np.ndarray
    angle_deg: float
    flipped: str
    scale: float
    pixel_size: tuple[float, ...]


def field_background(image: np.ndarray) -> float:
    """Most frequent intensity of an image (integer images exactly; float ones at 1/1024 of the range)."""
    a = np.asarray(image)
    if a.size == 0:
        return 0.0
    if a.dtype.kind in "biu":
        lo = int(a.min())
        return float(lo + int(np.argmax(np.bincount((a.astype(np.int64) - lo).ravel()))))
    a = a[np.isfinite(a)].astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return lo
    vals, counts = np.unique(a, return_counts=True)
    if counts.max() > 1 and len(vals) < 65536:  # quantised floats: exact mode
        return float(vals[int(np.argmax(counts))])
    hist, edges = np.histogram(a, bins=1024, range=(lo, hi))
    k = int(np.argmax(hist))
    return float((edges[k] + edges[k + 1]) / 2)


def preprocess_field(image: np.ndarray) -> np.ndarray:
    """float32 image minus its most frequent intensity, negatives set to 0."""
    a = np.asarray(image, dtype=np.float32)
    return np.clip(a - np.float32(field_background(image)), 0, None)


def touches_border(mask: np.ndarray, axes: Sequence[int] | None = None) -> bool:
    """Whether a mask reaches the first or last index along any of ``axes`` (default: the last two)."""
    axes = range(mask.ndim - 2, mask.ndim) if axes is None else axes
    for ax in axes:
        if np.take(mask, 0, axis=ax).any() or np.take(mask, -1, axis=ax).any():
            return True
    return False


def _spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.atleast_1d(np.asarray(spacing, dtype=float))
    return np.repeat(s, ndim) if s.size == 1 else s


def major_axis_angle(mask: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Angle (degrees, in (-90, 90]) of the major axis of a mask's pixels in the YX plane, from +X towards +Y."""
    sp = _spacing(spacing, mask.ndim)
    yx = np.argwhere(mask)[:, -2:] * sp[-2:]
    if len(yx) < 2:
        return 0.0
    cov = np.cov(yx.T)
    evals, evecs = np.linalg.eigh(cov)
    vy, vx = evecs[:, int(np.argmax(evals))]
    ang = float(np.degrees(np.arctan2(vy, vx)))
    if ang <= -90:
        ang += 180
    elif ang > 90:
        ang -= 180
    return ang


def _rotation(angle_deg: float, ndim: int) -> np.ndarray:
    """Matrix taking crop offsets (z, y, x) to field offsets: crop +X goes to the major axis."""
    t = np.radians(angle_deg)
    r = np.eye(ndim)
    r[-2:, -2:] = [[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]
    return r


def _skew(v: np.ndarray) -> float:
    sd = v.std()
    return 0.0 if sd == 0 else float(np.mean(((v - v.mean()) / sd) ** 3))


def crop_cell(channels: Sequence[np.ndarray], is_mask: Sequence[bool], cell: np.ndarray,
              nucleus: np.ndarray, size: Sequence[int], *, spacing: Sequence[float] | None = None,
              out_pixel_size: Sequence[float] | None = None, rescale: bool = False) -> CellCrop | None:
    """Align, centre, flip and pad one cell; None when it does not fit and ``rescale`` is False.

    Parameters
    ----------
    channels : sequence of numpy.ndarray
        Preprocessed channel images around the cell (same shape as ``cell``; a region of the field
        holding the whole cell). Zeroed outside the cell here.
    is_mask : sequence of bool
        Per channel: a binary mask (resampled nearest) or an intensity image (linear).
    cell, nucleus : numpy.ndarray
        Boolean masks of the cell and of its nucleus (the crop is centred on the nucleus centroid,
        or on the cell's when the nucleus is empty).
    size : sequence of int
        Crop size, one per axis of ``cell``.
    spacing : sequence of float, optional
        Field pixel size per axis (um); None: square pixels of 1.
    out_pixel_size : sequence of float, optional
        Crop pixel size per axis in the units of ``spacing``; default ``spacing`` (native sampling).
    rescale : bool
        Shrink a cell that does not fit (isotropically) instead of returning None.
    """
    cell = np.asarray(cell, dtype=bool)
    d = cell.ndim
    size = tuple(int(s) for s in size)
    if len(size) != d:
        raise ValueError(f"size {size} must have one entry per axis of the {d}D cell")
    sp = _spacing(spacing, d)
    op = sp.copy() if out_pixel_size is None else _spacing(out_pixel_size, d)
    nuc = np.asarray(nucleus, dtype=bool)
    centre = np.argwhere(nuc if nuc.any() else cell).mean(axis=0)
    angle = major_axis_angle(cell, sp)
    rot = _rotation(angle, d)
    u = ((np.argwhere(cell) - centre) * sp) @ rot  # crop-frame physical offsets (rows)
    flips = np.ones(d)
    flipped = ""
    for ax, name in ((d - 2, "y"), (d - 1, "x")):
        if _skew(u[:, ax]) < 0:
            flips[ax] = -1.0
            flipped += name
    w = u * flips
    half_allowed = (np.array(size) - 1) / 2.0 * op
    extent = np.abs(w).max(axis=0) + sp.max() / 2.0
    need = float(np.min(half_allowed / np.maximum(extent, 1e-12)))
    scale = 1.0
    if need < 1.0:
        if not rescale:
            return None
        scale = need
    matrix = np.diag(1.0 / sp) @ rot @ np.diag(flips) @ np.diag(op / scale)
    c_out = (np.array(size) - 1) / 2.0
    offset = centre - matrix @ c_out
    out_mask = ndi.affine_transform(cell.astype(np.float32), matrix, offset, output_shape=size, order=0) > 0.5
    # anti-aliasing before a downsampling: input pixels per output pixel, per input axis
    factor = np.abs(matrix).sum(axis=1)
    sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
    out = np.zeros((len(channels), *size), dtype=np.float32)
    for k, (ch, m) in enumerate(zip(channels, is_mask)):
        a = np.where(cell, np.asarray(ch, dtype=np.float32), 0.0).astype(np.float32)
        if not m and sigma.max() > 0.3:
            a = ndi.gaussian_filter(a, sigma)
        t = ndi.affine_transform(a, matrix, offset, output_shape=size, order=0 if m else 1)
        t = np.where(out_mask, np.clip(t, 0, None), 0.0)
        mx = float(t.max())
        out[k] = t / mx if mx > 0 else 0.0
    return CellCrop(image=out, angle_deg=angle, flipped=flipped, scale=scale,
                    pixel_size=tuple(float(v) for v in op / scale))


def measure_cell(cell: np.ndarray, nucleus: np.ndarray, cell_image: np.ndarray, dna_image: np.ndarray,
                 target_raw: np.ndarray | None, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """The 14 features of a real cell on the field (channels rescaled to [0, 1] inside the cell, as
    in its crop) and ``target_nc_ratio``: mean background-subtracted target intensity in the nucleus
    over that in the cytoplasm (cell minus nucleus); NaN when undefined."""
    cell = np.asarray(cell, dtype=bool)
    nucleus = np.asarray(nucleus, dtype=bool) & cell

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.where(cell, np.asarray(a, dtype=np.float32), 0.0)
        mx = float(a.max())
        return a / mx if mx > 0 else a

    feats = cell_features(cell, nucleus, unit(cell_image), unit(dna_image), spacing)
    ratio = float("nan")
    if target_raw is not None:
        cyto = cell & ~nucleus
        if nucleus.any() and cyto.any():
            m_cyto = float(np.mean(target_raw[cyto]))
            if m_cyto > 0:
                ratio = float(np.mean(target_raw[nucleus])) / m_cyto
    feats["target_nc_ratio"] = ratio
    return feats


@dataclass
class FieldCells:
    """The crops and rows of one field, with the counts of dropped cells."""

    crops: list[np.ndarray]
    rows: list[dict]
    counts: dict[str, int]


def field_cells(channels: Sequence[np.ndarray], is_mask: Sequence[bool], cells: np.ndarray,
                nuclei: np.ndarray, size: Sequence[int], *, target: np.ndarray | None = None,
                spacing: Sequence[float] | None = None, spacing_known: bool = False,
                out_pixel_size: Sequence[float] | None = None, rescale: bool = False,
                projection: bool = False, min_cell_area_px: int = 30) -> FieldCells:
    """Crop every whole cell of one field.

    Parameters
    ----------
    channels, is_mask
        Preprocessed field channels (cell, dna[, target]) and which are binary masks.
    cells, nuclei
        Instance labels; the nucleus of cell ``i`` has label ``i`` (see
        :func:`cytogen.segment.cells.match_nuclei`).
    size
        Crop size (2 entries for 2D fields or ``projection``, 3 for 3D).
    target
        Background-subtracted target image for ``target_nc_ratio`` (None: no target).
    spacing, spacing_known
        Field pixel size per axis and whether it is a real (um) size; features are in um only then.
    out_pixel_size, rescale
        See :func:`crop_cell`.
    projection
        3D field -> 2D crops of the maximum projections (masks: their union over z) of each cell.
    min_cell_area_px
        Cells with fewer pixels (voxels) are dropped as segmentation debris.
    """
    nd = cells.ndim
    sp = _spacing(spacing, nd)
    counts = {"n_cells": 0, "n_border_dropped": 0, "n_too_big": 0, "n_small": 0, "n_no_nucleus": 0}
    crops: list[np.ndarray] = []
    rows: list[dict] = []
    for lab, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        if any(s.start == 0 or s.stop == n for s, n in zip(sl[-2:], cells.shape[-2:])):
            counts["n_border_dropped"] += 1
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, cells.shape))
        cell = largest_component(cells[box] == lab)  # stray fragments of a label are not the cell
        if int(cell.sum()) < min_cell_area_px:
            counts["n_small"] += 1
            continue
        nuc = (nuclei[box] == lab) & cell
        if not nuc.any():
            counts["n_no_nucleus"] += 1
            continue
        centroid = np.argwhere(nuc).mean(axis=0) + [s.start for s in box]
        local = [np.where(cell, np.asarray(c[box], dtype=np.float32), 0.0) for c in channels]
        tgt = None if target is None else np.where(cell, target[box], 0.0)
        c_sp = sp
        if projection and nd == 3:
            local = [a.max(axis=0) for a in local]
            tgt = None if tgt is None else tgt.max(axis=0)
            cell, nuc = cell.any(axis=0), nuc.any(axis=0)
            c_sp = sp[-2:]
        out_px = None if out_pixel_size is None else _spacing(out_pixel_size, cell.ndim)
        crop = crop_cell(local, is_mask, cell, nuc, size, spacing=c_sp, out_pixel_size=out_px,
                         rescale=rescale)
        if crop is None:
            counts["n_too_big"] += 1
            continue
        feats = measure_cell(cell, nuc, local[0], local[1], tgt, c_sp if spacing_known else None)
        row = {"cell_label": lab, "crop_pixel_size_um": crop.pixel_size[-1] if spacing_known else "",
               "centroid_y": float(centroid[-2]), "centroid_x": float(centroid[-1])}
        if nd == 3:
            row["centroid_z"] = float(centroid[0])
        row.update(angle_deg=round(crop.angle_deg, 3), flipped=crop.flipped, scale=round(crop.scale, 5))
        row.update(feats)
        crops.append(crop.image.astype(np.float16))
        rows.append(row)
        counts["n_cells"] += 1
    return FieldCells(crops=crops, rows=rows, counts=counts)
