"""Object positions in a normalised cell frame (Sun et al. 2022, section 2.5), 2D and 3D.

Each cell is given its own frame (:func:`cell_frames`):

- **origin**: the centroid of the cell's nucleus (``centre="nucleus"``, the paper's choice), or the
  centroid of the cell mask (``centre="cell"``: for placing the nucleus itself in its cell). The
  cell's nucleus is the nucleus label covering most of the cell mask, clipped to the cell;
- **axes**: the principal axes of the cell mask's voxel coordinates in um, largest variance first.
  In 3D, ``align="xy"`` (default) turns the cell about z only (major axis of the YX coordinates;
  the third frame axis stays the image's +z, so apical/basal is kept); ``align="full"`` uses the
  three 3D principal axes. **Sign rule**: each in-plane axis (every axis with ``"full"``) points
  the way the cell mask's coordinates along it have positive skewness (the long tail of the cell
  mass lies on the + side), as in :mod:`cytogen.data.cells`, so a cell and its mirror image share
  one frame (the frame may be mirrored relative to the image); along an axis where the cell is
  symmetric (skewness ~ 0) the sign is arbitrary, which only blurs the density symmetrically.

Each object centroid ``p`` (um) is assigned to the cell whose mask holds its nearest voxel and
mapped along the ray from the origin ``c`` through ``p`` (:func:`object_positions`):

- ``distance_um`` = ``|p - c|``; ``membrane_um``: where the ray leaves the cell mask for the first
  time beyond ``p`` (so ``r <= 1`` even in a non-convex cell); ``nucleus_um``: where the ray,
  leaving ``c``, first leaves the nucleus mask (0 when ``c`` lies outside it). Crossings are
  found by sampling the masks (nearest voxel) every 0.25 of the smallest voxel size and taken half
  a step before the first outside sample, so they lie on the voxel faces within 1/8 voxel;
- ``r`` = ``distance / membrane`` (the paper's fractional distance: 0 at the nucleus centre, 1 at
  the membrane; the nucleus boundary falls anywhere in between);
- ``rho``, the **shell** coordinate (the frame used by default for the densities): 0 at the nucleus
  centre, **0.5 on the nucleus boundary**, 1 at the membrane, linear along the ray in between
  (``0.5 d / d_n`` inside the nucleus, ``0.5 + 0.5 (d - d_n) / (d_m - d_n)`` outside), so "in the
  nucleus vs in the cytoplasm" is a radius below or above 0.5 whatever the nucleus size (CellOrganizer
  normalises between the nuclear and the cell boundary in the same way). ``rho = r`` without nucleus;
- ``r_nucleus`` = ``distance / nucleus_um`` (``< 1`` inside the nucleus along the ray) and
  ``in_nucleus`` (the centroid's voxel lies in the cell's nucleus mask);
- ``direction``: the unit vector ``(p - c) / |p - c|`` in the cell frame (frame axes 1, 2[, 3]);
  ``theta`` = atan2(axis 2, axis 1) (radians, from the major axis); in 3D ``phi`` = arcsin(axis 3),
  the elevation above the frame's 1-2 plane. An object at ``c`` has direction 0 and angles 0.

:func:`unit_coordinates` turns a table into Cartesian points in the unit disc (2D) or ball (3D),
``radius x direction``, where kernel densities wrap the angles properly
(:mod:`cytogen.evaluate.spatial_density`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cytogen.errors import CytogenError

__all__ = ["CellFrame", "Positions", "cell_frames", "concat_positions", "object_centroids", "object_positions",
           "unit_coordinates"]

_STEP = 0.25  # ray sampling step, in units of the smallest voxel size
_CHUNK = 256  # rays sampled at once


@dataclass
class CellFrame:
    """The normalised frame of one cell (see the module docstring); arrays are in (z,) y, x order."""

    label: int
    centre_um: np.ndarray
    axes: np.ndarray  # rows: the frame's unit axes in image um coordinates
    cell: np.ndarray  # bool crop of the cell mask (bounding box + 1 voxel)
    nucleus: np.ndarray | None  # bool crop of the nucleus mask (same box), None for centre="cell"
    offset: np.ndarray  # voxel index of the crop's first voxel
    touches_border: bool


@dataclass
class Positions:
    """Frame coordinates of the objects kept, one row each, and what was dropped."""

    object: np.ndarray
    cell: np.ndarray
    centroid_um: np.ndarray
    distance_um: np.ndarray
    membrane_um: np.ndarray
    nucleus_um: np.ndarray
    r: np.ndarray
    rho: np.ndarray
    r_nucleus: np.ndarray
    in_nucleus: np.ndarray
    direction: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    file: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.object)


def _spacing(spacing: Sequence[float] | float | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.atleast_1d(np.asarray(spacing, dtype=float))
    s = np.repeat(s, ndim) if s.size == 1 else s
    if s.size != ndim or not np.all(np.isfinite(s) & (s > 0)):
        raise CytogenError(f"pixel size {tuple(spacing) if np.ndim(spacing) else spacing} must be one positive "
                           f"value or one per axis of the {ndim}D labels")
    return s


def _int_labels(a: np.ndarray) -> np.ndarray:
    """Integer labels without a copy where they are integers already (large 3D fields)."""
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return a
    if a.dtype == bool:
        return a.astype(np.uint8)
    return a.astype(np.int64)


def _skew(v: np.ndarray) -> float:
    sd = v.std()
    return 0.0 if sd == 0 else float(np.mean(((v - v.mean()) / sd) ** 3))


def _principal_axes(pts: np.ndarray, align: str) -> np.ndarray:
    """Rows = frame axes (unit, image um coordinates) of centred points ``pts`` (n, d)."""
    d = pts.shape[1]
    use = slice(d - 2, d) if (d == 3 and align == "xy") else slice(0, d)
    sub = pts[:, use]
    if len(sub) < 2:
        vecs = np.eye(sub.shape[1])[:, ::-1]
    else:
        evals, vecs = np.linalg.eigh(np.cov(sub.T))
        vecs = vecs[:, np.argsort(evals)[::-1]]
    axes = np.zeros((d, d))
    k = sub.shape[1]
    for i in range(k):
        e = np.zeros(d)
        e[use] = vecs[:, i]
        if _skew(pts @ e) < 0:
            e = -e
        axes[i] = e
    if k < d:  # align="xy": the third frame axis is the image's +z
        axes[2] = [1.0, 0.0, 0.0]
    return axes


def cell_frames(cells: np.ndarray, nuclei: np.ndarray | None, spacing: Sequence[float] | float | None = None, *,
                centre: str = "nucleus", align: str = "xy") -> dict[int, CellFrame | None]:
    """The frame of every cell of a label image; None for a cell without nucleus (``centre="nucleus"``).

    Parameters
    ----------
    cells, nuclei
        Integer instance labels ``(Y, X)`` or ``(Z, Y, X)`` of one shape (0 = background).
    spacing
        Voxel size in um per axis (or one value); None: 1 per voxel.
    centre
        ``"nucleus"`` (frame origin at the nucleus centroid) or ``"cell"`` (at the cell centroid;
        ``nuclei`` may then be None and ``rho = r``).
    align
        3D only: ``"xy"`` (turn about z) or ``"full"`` (three principal axes).
    """
    cells = np.asarray(cells)
    if centre not in ("nucleus", "cell") or align not in ("xy", "full"):
        raise CytogenError(f"centre must be 'nucleus' or 'cell' and align 'xy' or 'full', got {centre!r}, {align!r}")
    if cells.ndim not in (2, 3):
        raise CytogenError(f"cell labels must be 2D or 3D, got shape {cells.shape}")
    if nuclei is not None and np.shape(nuclei) != cells.shape:
        raise CytogenError(f"cell labels {cells.shape} and nucleus labels {np.shape(nuclei)} differ in shape")
    if centre == "nucleus" and nuclei is None:
        raise CytogenError("centre='nucleus' needs nucleus labels")
    sp = _spacing(spacing, cells.ndim)
    lab = _int_labels(cells)
    out: dict[int, CellFrame | None] = {}
    lat = range(cells.ndim - 2, cells.ndim)  # the lateral (Y, X) image borders
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        label = i + 1
        box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(sl, cells.shape))
        cell = lab[box] == label
        border = any(sl[a].start == 0 or sl[a].stop == cells.shape[a] for a in lat)
        offset = np.array([s.start for s in box])
        nuc = None
        if nuclei is not None:
            inside = np.asarray(nuclei)[box][cell]
            inside = inside[inside > 0]
            if len(inside):
                vals, counts = np.unique(inside, return_counts=True)
                nuc = (np.asarray(nuclei)[box] == vals[np.argmax(counts)]) & cell
        if centre == "nucleus" and nuc is None:
            out[label] = None
            continue
        pts = (np.argwhere(cell) + offset) * sp
        origin = ((np.argwhere(nuc) + offset) * sp).mean(0) if centre == "nucleus" else pts.mean(0)
        axes = _principal_axes(pts - pts.mean(0), align)
        out[label] = CellFrame(label, origin, axes, cell, nuc if centre == "nucleus" else None, offset, border)
    return out


def object_centroids(objects: np.ndarray, spacing: Sequence[float] | float | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centroids (um, (z,) y, x) of the objects of an instance label image."""
    lab = _int_labels(objects)
    sp = _spacing(spacing, lab.ndim)
    ids, cents = [], []
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        idx = np.argwhere(lab[sl] == i + 1)
        ids.append(i + 1)
        cents.append((idx.mean(0) + [s.start for s in sl]) * sp)
    return np.asarray(ids, np.int64), np.asarray(cents, float).reshape(-1, lab.ndim)


def _lookup(mask: np.ndarray, offset: np.ndarray, sp: np.ndarray, pos_um: np.ndarray) -> np.ndarray:
    """Mask value at the nearest voxel of each position (False outside the crop)."""
    idx = np.rint(pos_um / sp).astype(np.int64) - offset
    ok = np.all((idx >= 0) & (idx < mask.shape), axis=-1)
    out = np.zeros(idx.shape[:-1], bool)
    out[ok] = mask[tuple(idx[ok].T)]
    return out


def _first_false(inside: np.ndarray) -> np.ndarray:
    """Index of the first False sample of each row (the row length when there is none)."""
    miss = ~inside
    return np.where(miss.any(1), miss.argmax(1), inside.shape[1])


def _rays(frame: CellFrame, p: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance, membrane crossing and nucleus crossing (um) of the rays through points ``p``."""
    step = _STEP * sp.min()
    v = p - frame.centre_um
    dist = np.linalg.norm(v, axis=1)
    u = np.divide(v, dist[:, None], out=np.zeros_like(v), where=dist[:, None] > 0)
    u[dist == 0] = frame.axes[0]  # an object at the origin: crossings along the major axis
    t_max = float(np.linalg.norm(np.array(frame.cell.shape) * sp)) + step
    n = int(np.ceil(t_max / step)) + 2
    t = np.arange(n) * step
    mem, nuc = np.empty(len(p)), np.zeros(len(p))
    for a in range(0, len(p), _CHUNK):
        b = slice(a, a + _CHUNK)
        ray = (dist[b, None] + t[None, :])[..., None] * u[b, None, :] + frame.centre_um
        j = _first_false(_lookup(frame.cell, frame.offset, sp, ray))
        mem[b] = dist[b] + np.maximum(j * step - step / 2, step / 2)
        if frame.nucleus is not None:
            ray0 = t[None, :, None] * u[b, None, :] + frame.centre_um
            k = _first_false(_lookup(frame.nucleus, frame.offset, sp, ray0))
            nuc[b] = np.maximum(k * step - step / 2, 0.0)
    return dist, mem, nuc


def object_positions(objects: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None,
                     spacing: Sequence[float] | float | None = None, *, exclude_border: bool = False,
                     centre: str = "nucleus", align: str = "xy", frames: dict | None = None) -> Positions:
    """Frame coordinates (module docstring) of every object of one image that lies in a cell.

    Parameters
    ----------
    objects, cells, nuclei
        Instance labels of one shape, ``(Y, X)`` or ``(Z, Y, X)``; ``nuclei`` may be None with
        ``centre="cell"``.
    spacing
        Voxel size in um per axis (or one value); None: 1 per voxel (coordinates in voxels).
    exclude_border
        Drop the cells touching the lateral (Y, X) image border and their objects (the paper's
        "partial cells"); the z ends of a stack are not borders.
    centre, align
        See :func:`cell_frames`.
    frames
        Frames from :func:`cell_frames` (computed here when None).

    Returns
    -------
    Positions
        ``counts``: ``n_objects_in_image``, ``n_objects`` (kept), ``dropped_outside_cells``,
        ``dropped_border_cells``, ``dropped_no_nucleus``, ``n_cells`` (with a frame, kept),
        ``n_cells_border``, ``n_cells_no_nucleus``.
    """
    objects = np.asarray(objects)
    if objects.shape != np.shape(cells):
        raise CytogenError(f"object labels {objects.shape} and cell labels {np.shape(cells)} differ in shape")
    sp = _spacing(spacing, objects.ndim)
    frames = cell_frames(cells, nuclei, sp, centre=centre, align=align) if frames is None else frames
    ids, cents = object_centroids(objects, sp)
    host = np.zeros(len(ids), np.int64)
    if len(ids):
        vox = np.clip(np.rint(cents / sp).astype(np.int64), 0, np.array(objects.shape) - 1)
        host = np.asarray(cells)[tuple(vox.T)].astype(np.int64)
    n_border = sum(1 for f in frames.values() if f is not None and f.touches_border)
    counts = {"n_objects_in_image": len(ids), "dropped_outside_cells": int((host == 0).sum()),
              "dropped_border_cells": 0, "dropped_no_nucleus": 0,
              "n_cells": sum(1 for f in frames.values() if f is not None and not (exclude_border and f.touches_border)),
              "n_cells_border": n_border, "n_cells_no_nucleus": sum(1 for f in frames.values() if f is None)}
    d = objects.ndim
    cols: dict[str, list] = {k: [] for k in ("object", "cell", "centroid_um", "distance_um", "membrane_um",
                                             "nucleus_um", "in_nucleus", "direction")}
    for c in np.unique(host[host > 0]):
        f = frames.get(int(c))
        sel = host == c
        if f is None:
            counts["dropped_no_nucleus"] += int(sel.sum())
            continue
        if exclude_border and f.touches_border:
            counts["dropped_border_cells"] += int(sel.sum())
            continue
        p = cents[sel]
        dist, mem, nuc = _rays(f, p, sp)
        v = (p - f.centre_um) @ f.axes.T
        cols["object"].append(ids[sel])
        cols["cell"].append(np.full(len(p), c))
        cols["centroid_um"].append(p)
        cols["distance_um"].append(dist)
        cols["membrane_um"].append(mem)
        cols["nucleus_um"].append(nuc)
        cols["in_nucleus"].append(np.zeros(len(p), bool) if f.nucleus is None else _lookup(f.nucleus, f.offset, sp, p))
        cols["direction"].append(np.divide(v, dist[:, None], out=np.zeros_like(v), where=dist[:, None] > 0))
    a = {k: (np.concatenate(v) if v else np.zeros((0, d) if k in ("centroid_um", "direction") else 0))
         for k, v in cols.items()}
    counts["n_objects"] = len(a["object"])
    dist, mem, nuc = a["distance_um"], a["membrane_um"], a["nucleus_um"]
    r = dist / np.where(mem > 0, mem, 1.0)
    inner = dist < nuc
    rho = np.where(nuc > 0, np.where(inner, 0.5 * dist / np.where(nuc > 0, nuc, 1.0),
                                     0.5 + 0.5 * (dist - nuc) / np.where(mem > nuc, mem - nuc, 1.0)), r)
    if centre == "cell":
        rho = r
    r_nuc = np.where(nuc > 0, dist / np.where(nuc > 0, nuc, 1.0), np.inf)
    u = a["direction"]
    theta = np.arctan2(u[:, 1], u[:, 0]) if len(u) else np.zeros(0)
    phi = np.arcsin(np.clip(u[:, 2], -1, 1)) if d == 3 and len(u) else np.zeros(len(u))
    return Positions(a["object"].astype(np.int64), a["cell"].astype(np.int64), a["centroid_um"], dist, mem, nuc,
                     np.clip(r, 0, 1), np.clip(rho, 0, 1), r_nuc, a["in_nucleus"].astype(bool), u, theta, phi,
                     counts)


def concat_positions(tables: Sequence[Positions], names: Sequence[str]) -> Positions:
    """One table of several images' positions; ``file`` holds each row's image name, ``counts`` the sums."""
    if len(tables) != len(names):
        raise ValueError("one name per table")
    if not tables:
        raise CytogenError("no images to pool")
    keys = ("object", "cell", "centroid_um", "distance_um", "membrane_um", "nucleus_um", "r", "rho", "r_nucleus",
            "in_nucleus", "direction", "theta", "phi")
    cat = {k: np.concatenate([getattr(t, k) for t in tables]) for k in keys}
    counts = {k: int(sum(t.counts.get(k, 0) for t in tables)) for k in tables[0].counts}
    files = np.concatenate([np.full(len(t), n, dtype=object) for t, n in zip(tables, names)])
    return Positions(**cat, counts=counts, file=files)


def unit_coordinates(pos: Positions, radius: str = "shell") -> np.ndarray:
    """Cartesian points in the unit disc / ball: ``rho`` (``radius="shell"``) or ``r``
    (``"fraction"``, the paper's) times the frame direction; shape ``(n, ndim)``."""
    if radius not in ("shell", "fraction"):
        raise CytogenError(f"radius must be 'shell' or 'fraction', got {radius!r}")
    rad = pos.rho if radius == "shell" else pos.r
    return pos.direction * rad[:, None]
