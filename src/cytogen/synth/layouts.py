"""Random layouts of adherent cells with exact instance masks (2D footprints, 3D extrusion).

A layout is built in three steps:

1. :func:`sample_cells` places elongated cell shapes (a tapered, slightly bent ellipse with a smooth
   Fourier perturbation of its boundary) and one elliptic nucleus per cell, either next to an
   already placed cell (so that the two overlap and end up sharing a boundary) or at a random spot.
   Placement guarantees that no other cell reaches a nucleus or its safety margin.
2. :func:`partition` turns the overlapping shapes into instance labels: a pixel covered by several
   shapes goes to the cell whose normalised radius is smallest there (a Voronoi-like split), so
   overlapping cells touch along a shared boundary while isolated cells stay separate.
3. :func:`extrude_3d` lifts the 2D footprints to flattened dome-shaped cells standing on a glass
   plane, with flattened ellipsoidal nuclei inside.

All sizes are drawn in micrometres and converted to pixels with the pixel size, so a field imaged
at another resolution shows cells of the same physical size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

Box = tuple[slice, ...]


@dataclass
class CellGeom:
    """Geometry of one cell footprint in pixel units (2D, in-plane).

    The cell frame has ``u`` along the long axis (angle ``theta`` from +x towards +y) and ``v``
    across it; the shape is bent by ``v -> v - bend * u**2 / a``. ``d`` is the normalised radius
    over ``box`` (< 1 inside the shape). ``nuc_uv`` is the nucleus centre in the bent cell frame.
    """

    label: int
    center: tuple[float, float]
    theta: float
    a: float
    b: float
    bend: float
    box: Box
    d: np.ndarray
    nuc_center: tuple[float, float]
    nuc_uv: tuple[float, float]
    nuc_axes: tuple[float, float]
    nuc_box: Box = field(default_factory=tuple)
    nuc_rho: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


@dataclass
class Layout:
    """Instance masks plus the per-cell geometry needed to render the stains."""

    cells: np.ndarray  # int32, (Y, X) or (Z, Y, X)
    nuclei: np.ndarray  # int32, same shape
    geoms: list[CellGeom]
    nuc_boxes: list[Box]  # N-D box of each nucleus (same order as geoms)
    nuc_rhos: list[np.ndarray]  # N-D normalised nucleus radius over its box (< 1 inside)
    glass_z: int | None = None  # index of the glass plane in 3D


def _box(center: tuple[float, float], radius: float, shape: tuple[int, int]) -> Box | None:
    lo = [max(0, int(np.floor(c - radius))) for c in center]
    hi = [min(n, int(np.ceil(c + radius)) + 1) for c, n in zip(center, shape)]
    if any(h <= lo_ for lo_, h in zip(lo, hi)):
        return None
    return tuple(slice(lo_, h) for lo_, h in zip(lo, hi))


def _frame(box: Box, center, theta: float) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] - np.float32(center[0])
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :] - np.float32(center[1])
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    return xs * c + ys * s, ys * c - xs * s


def _radius(u, v, a, b, p_u, harm) -> np.ndarray:
    """Normalised radius of a tapered ellipse with a Fourier-perturbed boundary (< 1 inside)."""
    ru, rv = u / np.float32(a), v / np.float32(b)
    r = np.sqrt(np.abs(ru) ** np.float32(p_u) + rv * rv)
    if harm:
        phi = np.arctan2(rv, ru)
        mod = np.ones_like(r)
        for k, amp, ph in harm:
            mod += np.float32(amp) * np.cos(k * phi + np.float32(ph))
        r = r / mod
    return r.astype(np.float32, copy=False)


def _harmonics(rng: np.random.Generator, scale: float) -> list[tuple[int, float, float]]:
    return [(k, scale * rng.uniform(0, 1) / k**0.5, rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]


def _extent(a: float, b: float, angle: float) -> float:
    """Radius of an ellipse with semi-axes a, b in direction ``angle`` from its long axis."""
    return 1.0 / np.hypot(np.cos(angle) / a, np.sin(angle) / b)


def _cell_field(params: dict, shape: tuple[int, int]):
    radius = params["a"] * 1.25 + abs(params["bend"]) * params["a"] + 2
    box = _box(params["center"], radius, shape)
    if box is None:
        return None
    u, v = _frame(box, params["center"], params["theta"])
    v = v - np.float32(params["bend"] / params["a"]) * u * u
    d = _radius(u, v, params["a"], params["b"], params["p_u"], params["harm"])
    return box, u, v, d


def _nucleus_rho(center, theta, na, nb, harm, box: Box) -> np.ndarray:
    u, v = _frame(box, center, theta)
    return _radius(u, v, na, nb, 2.0, harm)


def sample_cells(
    shape: tuple[int, int],
    n_cells: int,
    rng: np.random.Generator,
    pixel_size_um: float,
    touch_prob: float = 0.55,
) -> list[CellGeom]:
    """Place up to ``n_cells`` non-colliding cells with their nuclei in a 2D field.

    Parameters
    ----------
    shape
        Field size ``(Y, X)`` in pixels.
    n_cells
        Number of cells wanted; fewer are returned when the field is too crowded.
    rng
        Random generator (the only source of randomness).
    pixel_size_um
        In-plane pixel size, used to convert the physical sizes drawn below into pixels.
    touch_prob
        Probability of placing a cell against an existing one (they then share a boundary).
    """
    um = 1.0 / pixel_size_um
    margin = max(2.0, 1.0 * um)  # cytoplasm kept around each nucleus (px)
    cell_occ = np.zeros(shape, bool)
    nuc_occ = np.zeros(shape, bool)
    geoms: list[CellGeom] = []
    for _ in range(40 * n_cells + 20):
        if len(geoms) >= n_cells:
            break
        na = rng.uniform(4.0, 7.0) * um
        nb = na * rng.uniform(0.55, 0.85)
        a = max(rng.uniform(11.0, 22.5) * um, na + margin + 5 * um)
        b = max(a * rng.uniform(0.25, 0.5), (nb + margin) / 0.85)
        if geoms and rng.random() < touch_prob:
            nb_cell = geoms[rng.integers(len(geoms))]
            theta = nb_cell.theta + rng.normal(0, 0.35)
            psi = rng.uniform(0, 2 * np.pi)
            dist = (_extent(nb_cell.a, nb_cell.b, psi - nb_cell.theta) + _extent(a, b, psi - theta))
            dist *= rng.uniform(0.72, 0.95)
            center = (nb_cell.center[0] + dist * np.sin(psi), nb_cell.center[1] + dist * np.cos(psi))
        else:
            theta = rng.uniform(0, np.pi)
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        params = dict(center=center, theta=theta, a=a, b=b, p_u=rng.uniform(1.3, 2.0),
                      bend=rng.uniform(-0.15, 0.15), harm=_harmonics(rng, 0.1))
        cf = _cell_field(params, shape)
        if cf is None:
            continue
        box, _, _, d = cf
        inside = d < 1
        area = int(inside.sum())
        if area < 0.3 * np.pi * a * b or (inside & nuc_occ[box]).any():
            continue
        if (inside & cell_occ[box]).sum() > 0.3 * area:
            continue
        nuc = _place_nucleus(params, na, nb, margin, shape, rng)
        if nuc is None or (nuc["guard"] & cell_occ[nuc["gbox"]]).any():
            continue
        label = len(geoms) + 1
        cell_occ[box] |= inside
        nuc_occ[nuc["gbox"]] |= nuc["guard"]
        geoms.append(CellGeom(label, center, theta, a, b, params["bend"], box, d, nuc["center"],
                              nuc["uv"], (na * nuc["scale"], nb * nuc["scale"]),
                              nuc["box"], nuc["rho"]))
    return geoms


def _place_nucleus(params: dict, na: float, nb: float, margin: float, shape, rng):
    """Put a nucleus (plus margin) inside the cell shape, usually off-centre; None if it fails."""
    a, b, theta, cy, cx = params["a"], params["b"], params["theta"], *params["center"]
    harm = _harmonics(rng, 0.05)
    sign = rng.choice([-1.0, 1.0])
    u_off = sign * a * rng.uniform(0.05, 0.4)
    v_off = b * rng.uniform(-0.15, 0.15)
    ntheta = theta + rng.normal(0, 0.12)
    for attempt in range(6):
        scale = 1.0 if attempt < 4 else 0.85
        shrink = 0.6**attempt if attempt < 4 else 0.0
        uo, vo = u_off * shrink, v_off * shrink
        vo_b = vo + params["bend"] / a * uo * uo
        c, s = np.cos(theta), np.sin(theta)
        center = (cy + uo * s + vo_b * c, cx + uo * c - vo_b * s)
        sa, sb = na * scale, nb * scale
        rg = (sa + margin + 1.5) * 1.15 + 1
        if not (rg <= center[0] <= shape[0] - 1 - rg and rg <= center[1] <= shape[1] - 1 - rg):
            continue
        gbox = _box(center, rg, shape)
        guard = _nucleus_rho(center, ntheta, sa + margin + 1.5, sb + margin + 1.5, harm, gbox) < 1
        keep = _nucleus_rho(center, ntheta, sa + margin, sb + margin, harm, gbox) < 1
        u, v = _frame(gbox, params["center"], theta)
        v = v - np.float32(params["bend"] / a) * u * u
        d = _radius(u, v, a, b, params["p_u"], params["harm"])
        if not (d[keep] < 1).all():
            continue
        nbox = _box(center, sa * 1.15 + 1, shape)
        rho = _nucleus_rho(center, ntheta, sa, sb, harm, nbox)
        return dict(center=center, uv=(uo, vo), scale=scale, gbox=gbox, guard=guard,
                    box=nbox, rho=rho)
    return None


def partition(shape: tuple[int, int], geoms: list[CellGeom]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise overlapping cell shapes into touching instance labels and the nuclei labels."""
    cells = np.zeros(shape, np.int32)
    score = np.full(shape, np.inf, np.float32)
    for g in geoms:
        sc, lab = score[g.box], cells[g.box]
        win = (g.d < 1) & (g.d < sc)
        sc[win] = g.d[win]
        lab[win] = g.label
    nuclei = np.zeros(shape, np.int32)
    for g in geoms:
        own = cells[g.box] == g.label
        comp, n = ndi.label(own)
        if n > 1:  # keep the piece holding the nucleus, drop slivers cut off by neighbours
            cy = int(round(g.nuc_center[0])) - g.box[0].start
            cx = int(round(g.nuc_center[1])) - g.box[1].start
            cells[g.box][own & (comp != comp[cy, cx])] = 0
        nuclei[g.nuc_box][g.nuc_rho < 1] = g.label
    return cells, nuclei


def extrude_3d(
    cells2d: np.ndarray,
    geoms: list[CellGeom],
    depth: int,
    rng: np.random.Generator,
    z_step_um: float,
) -> tuple[np.ndarray, np.ndarray, list[Box], list[np.ndarray], int, np.ndarray]:
    """Lift 2D footprints to dome-shaped cells on a glass plane with ellipsoidal nuclei.

    Returns ``cells3d, nuclei3d, nuc_boxes, nuc_rhos, glass_z, height_map`` where ``height_map``
    is the cell thickness in slices at each footprint pixel.
    """
    uz = 1.0 / z_step_um
    glass = int(np.clip(round(rng.uniform(0.08, 0.2) * depth), 0, max(0, depth - 3)))
    room = depth - glass
    hmap = np.zeros(cells2d.shape, np.float32)
    nuclei = np.zeros((depth, *cells2d.shape), np.int32)
    zz = np.arange(depth, dtype=np.float32)[:, None, None]
    boxes, rhos = [], []
    heights = {}
    for g in geoms:
        # thin lamella at the rim rising to a dome centred on the nucleus
        h_top = min(rng.uniform(6.0, 12.0) * uz, room)
        h_lam = min(rng.uniform(1.0, 2.5) * uz, h_top)
        own = cells2d[g.box] == g.label
        u, v = _frame(g.box, g.nuc_center, g.theta)
        k = rng.uniform(1.6, 2.2)
        r2 = (u / np.float32(k * g.nuc_axes[0])) ** 2 + (v / np.float32(k * g.nuc_axes[1])) ** 2
        dome = np.sqrt(np.clip(1 - r2, 0, 1))
        rim = np.sqrt(np.clip(1 - g.d**4, 0, 1))
        prof = h_lam * rim + (h_top - h_lam) * dome
        hmap[g.box][own] = np.maximum(1.0, prof[own])
        heights[g.label] = h_top
    cells = np.where((zz >= glass) & (zz < glass + hmap[None]), cells2d[None], 0).astype(np.int32)
    for g in geoms:
        cz = min(rng.uniform(1.5, 3.0) * uz, max(0.6, (heights[g.label] - 3) / 2))
        zc = glass + 1 + cz
        z0, z1 = max(0, int(np.floor(zc - cz))), min(depth, int(np.ceil(zc + cz)) + 1)
        box = (slice(z0, z1), *g.nuc_box)
        rz = (np.arange(z0, z1, dtype=np.float32)[:, None, None] - np.float32(zc)) / np.float32(cz)
        rho = np.sqrt(g.nuc_rho[None] ** 2 + rz * rz)
        top = glass + hmap[g.nuc_box][None] - 1  # keep at least one cell voxel above the nucleus
        zl = np.arange(z0, z1)[:, None, None]
        inside = (rho < 1) & (zl >= glass + 1) & (zl < top)
        nuclei[box][inside] = g.label
        boxes.append(box)
        rhos.append(np.where(inside, rho, np.float32(2)).astype(np.float32))
    return cells, nuclei, boxes, rhos, glass, hmap


def make_layout(shape: tuple[int, ...], n_cells: int, rng: np.random.Generator,
                pixel_size_um: float, z_step_um: float) -> Layout:
    """Sample a 2D or 3D layout (``len(shape)`` 2 or 3) with ``n_cells`` cells at most."""
    plane = tuple(shape[-2:])
    geoms = sample_cells(plane, n_cells, rng, pixel_size_um)
    cells2d, nuclei2d = partition(plane, geoms)
    if len(shape) == 2:
        return Layout(cells2d, nuclei2d, geoms, [g.nuc_box for g in geoms],
                      [g.nuc_rho for g in geoms])
    cells, nuclei, boxes, rhos, glass, _ = extrude_3d(cells2d, geoms, shape[0], rng, z_step_um)
    return Layout(cells, nuclei, geoms, boxes, rhos, glass)
