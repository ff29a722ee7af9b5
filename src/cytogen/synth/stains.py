"""Noise-free stain images (actin, membrane, nucleus, organelles) rendered from a :class:`Layout`.

Every function takes the layout, a random generator and the voxel size in micrometres
(``(y, x)`` or ``(z, y, x)``) and returns a float32 image over the layout's spatial shape, roughly
in ``[0, 1]``. Optical blur and camera noise are added later (:mod:`cytogen.synth.cells`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from cytogen.synth.layouts import CellGeom, Layout


def boundaries(labels: np.ndarray, glass_z: int | None = None) -> np.ndarray:
    """Inner boundary pixels of every label; in 3D optionally ignoring the contact with the glass."""
    if glass_z is not None and glass_z > 0:
        labels = labels.copy()
        labels[:glass_z] = labels[glass_z]
    return find_boundaries(labels, mode="inner") & (labels > 0)


def _bbox(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """Bounding box of the True pixels of ``mask``, grown by ``pad`` (whole array if empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        box.append(slice(max(0, hit[0] - pad), min(mask.shape[ax], hit[-1] + pad + 1)))
    return tuple(box)


def _edt(background: np.ndarray, within: np.ndarray, vox) -> np.ndarray:
    """Distance (um) to the nearest False pixel of ``background``, exact inside ``within``.

    Computed on the bounding box of ``within`` only (far cheaper in 3D stacks); all False pixels
    that matter must lie in that box. Outside it the distance is set to infinity.
    """
    box = _bbox(within)
    out = np.full(background.shape, np.inf, np.float32)
    out[box] = ndi.distance_transform_edt(background[box], sampling=vox)
    return out


def place_blobs(allowed: np.ndarray, owner: np.ndarray, counts: dict[int, int],
                radius_um: tuple[float, float], vox: tuple[float, ...],
                rng: np.random.Generator, first_id: int = 1) -> np.ndarray:
    """Place non-touching ellipsoidal blobs inside ``allowed``, each within one owner label.

    ``counts`` maps an owner label (cell or nucleus id) to the number of blobs wanted there; the
    regions of ``allowed`` that belong to different owners must not touch each other. A blob of
    radius ``R`` (um) is centred only where ``allowed`` extends more than ``R`` around it, and two
    blobs keep centres more than ``R_i + R_j + 2 * max(vox)`` apart, so they never touch (8- or
    26-connectivity). Returns an int32 label image with ids ``first_id, first_id + 1, ...``.
    """
    ndim = allowed.ndim
    labels = np.zeros(allowed.shape, np.int32)
    if not allowed.any():
        return labels
    vox_a = np.asarray(vox, np.float64)
    # room (um) around each pixel; the field edge counts as a wall, so blobs are never cut by it
    box = _bbox(allowed)
    room = np.zeros(allowed.shape, np.float32)
    room[box] = ndi.distance_transform_edt(np.pad(allowed[box], 1), sampling=vox)[
        (slice(1, -1),) * ndim]
    room = room.ravel()
    idx = np.flatnonzero(allowed)
    own = owner.ravel()[idx]
    order = np.argsort(own, kind="stable")
    idx, own = idx[order], own[order]
    jitter, gap = 0.3 * np.linalg.norm(vox_a), 2 * vox_a.max()
    next_id = first_id
    for lab, n in counts.items():
        lo, hi = np.searchsorted(own, [lab, lab + 1])
        if hi <= lo or n <= 0:
            continue
        k = 6 * n
        pick = idx[lo:hi][rng.integers(hi - lo, size=k)]
        radii = rng.uniform(*radius_um, k)[:, None] * rng.uniform(0.75, 1.0, (k, ndim)) / vox_a
        radii = np.maximum(radii, 0.6)  # per axis, in pixels
        r_um = (radii * vox_a).max(1)
        centres = np.stack(np.unravel_index(pick, allowed.shape), 1) + rng.uniform(-0.3, 0.3, (k, ndim))
        kept_c: list[np.ndarray] = []
        kept_r: list[float] = []
        for i in np.flatnonzero(room[pick] > r_um + jitter):
            if len(kept_r) >= n:
                break
            c, r = centres[i], radii[i]
            if kept_r and (np.sqrt((((np.asarray(kept_c) - c) * vox_a) ** 2).sum(1))
                           <= np.asarray(kept_r) + r_um[i] + gap).any():
                continue
            kept_c.append(c)
            kept_r.append(r_um[i])
            lo_c = np.maximum(np.floor(c - r).astype(int), 0)
            hi_c = np.minimum(np.ceil(c + r).astype(int) + 1, allowed.shape)
            d2 = np.zeros(tuple(hi_c - lo_c))
            for ax in range(ndim):
                g = (np.arange(lo_c[ax], hi_c[ax]) - c[ax]) / r[ax]
                d2 = d2 + (g * g).reshape([-1 if j == ax else 1 for j in range(ndim)])
            labels[tuple(slice(a, b) for a, b in zip(lo_c, hi_c))][d2 <= 1] = next_id
            next_id += 1
    return labels


def _smooth_noise(shape, sigma, rng) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return n / np.float32(n.std() + 1e-6)


def nucleus_channel(layout: Layout, rng: np.random.Generator, vox: tuple[float, ...]):
    """DNA stain: textured fill with bright chromocentres, dimmer rim, darker nucleoli.

    Returns ``(image, nucleoli)`` where ``nucleoli`` is an int32 label image (ids from 1).
    """
    img = np.zeros(layout.nuclei.shape, np.float32)
    rho_full = np.full(layout.nuclei.shape, 2.0, np.float32)
    vox_a = np.asarray(vox, np.float32)
    for box, rho in zip(layout.nuc_boxes, layout.nuc_rhos):
        inside = rho < 1
        n_in = int(inside.sum())
        if n_in == 0:
            continue
        smooth = _smooth_noise(rho.shape, tuple(0.8 / vox_a), rng)
        spots = np.zeros(rho.shape, np.float32)
        pts = np.flatnonzero(inside)[rng.integers(0, n_in, max(1, n_in // 30))]
        spots.ravel()[pts] = rng.uniform(0.5, 1.0, pts.size)
        spots = ndi.gaussian_filter(spots, tuple(0.45 / vox_a))
        spots *= np.float32(0.45 / (spots.max() + 1e-6))
        profile = 0.6 + 0.4 * np.sqrt(np.clip(1 - rho * rho, 0, 1))
        val = rng.uniform(0.5, 1.0) * profile * (1 + 0.1 * smooth + spots)
        img[box][inside] = val[inside]
        rho_full[box][inside] = rho[inside]
    labels = [g.label for g in layout.geoms]
    counts = dict(zip(labels, rng.integers(1, 4, len(labels)).tolist()))
    nucleoli = place_blobs(rho_full < 0.8, layout.nuclei, counts, (0.5, 1.1), vox, rng)
    img[nucleoli > 0] *= np.float32(0.45)
    return img, nucleoli


def _fibre_points(g: CellGeom, rng: np.random.Generator, px: float):
    """Sample points along the stress fibres of one cell.

    Fibres are lines along the cell's (bent) long axis with a small angular jitter, of random
    length and brightness with a gentle periodic modulation, plus two bright fibres flanking the
    nucleus. Returns image coordinates ``y, x``, a weight per point and a thick/thin flag.
    """
    um = 1.0 / px
    n = max(4, int(1.9 * g.b / (rng.uniform(0.8, 1.6) * um)))
    nu, nv = g.nuc_uv
    side = g.nuc_axes[1] + rng.uniform(0.6, 1.2) * um
    v_k = np.concatenate([rng.uniform(-0.95, 0.95, n) * g.b, [nv - side, nv + side]])
    slope = np.concatenate([np.tan(rng.normal(0, np.deg2rad(3.0), n)), [0.0, 0.0]])
    u0 = np.concatenate([-g.a * rng.uniform(0.4, 1.1, n), nu - g.nuc_axes[0] * rng.uniform(1, 2.5, 2)])
    u1 = np.concatenate([g.a * rng.uniform(0.4, 1.1, n), nu + g.nuc_axes[0] * rng.uniform(1, 2.5, 2)])
    amp = np.concatenate([rng.uniform(0.3, 1.0, n) ** 1.5, rng.uniform(0.8, 1.1, 2)])
    m = v_k.size
    thick = rng.random(m) < 0.35
    lam = rng.uniform(4.0, 10.0, m) * um
    phase = rng.uniform(0, 2 * np.pi, m)
    step = 0.5
    t = np.arange(0, 2.2 * g.a + 1, step)[None, :]
    u = u0[:, None] + t
    keep = u <= u1[:, None]
    taper = np.clip(t / 3.0, 0, 1) * np.clip((u1[:, None] - u) / 3.0, 0, 1)
    w = amp[:, None] * taper * (1 + 0.3 * np.sin(2 * np.pi * u / lam[:, None] + phase[:, None]))
    v = v_k[:, None] + slope[:, None] * u + g.bend / g.a * u * u
    c, s = np.cos(g.theta), np.sin(g.theta)
    y = g.center[0] + u * s + v * c
    x = g.center[1] + u * c - v * s
    flag = np.broadcast_to(thick[:, None], u.shape)
    return y[keep], x[keep], (w * step)[keep], flag[keep]


def _fibres(layout: Layout, cells2d: np.ndarray, rng: np.random.Generator, px: float) -> np.ndarray:
    """Stress-fibre image of all cells: fibre points splatted (clipped to their own cell), blurred."""
    shape = cells2d.shape
    ys, xs, ws, fs, labs = [], [], [], [], []
    for g in layout.geoms:
        y, x, w, f = _fibre_points(g, rng, px)
        ys.append(y), xs.append(x), ws.append(w), fs.append(f), labs.append(np.full(y.size, g.label))
    if not ys:
        return np.zeros(shape, np.float32)
    y, x, w, f, lab = (np.concatenate(a) for a in (ys, xs, ws, fs, labs))
    y0, x0 = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    fy, fx = y - y0, x - x0
    out = np.zeros(shape, np.float32)
    for thick, sigma in ((False, 0.45), (True, 0.75)):
        sel = f == thick
        acc = np.zeros(shape[0] * shape[1], np.float64)
        for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = sel & (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
            flat = yy[ok] * shape[1] + xx[ok]
            ok_own = cells2d.ravel()[flat] == lab[ok]
            acc += np.bincount(flat[ok_own], (w * wt)[ok][ok_own], minlength=acc.size)
        out += ndi.gaussian_filter(acc.reshape(shape).astype(np.float32), sigma) * np.float32(
            np.sqrt(2 * np.pi) * sigma)
    return (1 - np.exp(-1.3 * out)) * (cells2d > 0)


def actin_channel(layout: Layout, rng: np.random.Generator, vox: tuple[float, ...],
                  bnd: np.ndarray) -> np.ndarray:
    """Phalloidin stain: stress fibres, cortical rim, perinuclear ring, dim nucleus, diffuse fill.

    ``bnd`` is the boolean inner-boundary image of the cells (see :func:`boundaries`).
    """
    cells, nuclei, geoms = layout.cells, layout.nuclei, layout.geoms
    px = vox[-1]
    n = len(geoms)
    gain = np.ones(n + 1, np.float32)
    diffuse = np.zeros(n + 1, np.float32)
    cortex = np.zeros(n + 1, np.float32)
    ring = np.zeros(n + 1, np.float32)
    gain[1:] = rng.uniform(0.55, 1.0, n)
    diffuse[1:] = rng.uniform(0.08, 0.18, n)
    cortex[1:] = rng.uniform(0.2, 0.4, n)
    ring[1:] = rng.uniform(0.2, 0.45, n)
    cells2d = cells if cells.ndim == 2 else cells[layout.glass_z]
    fib = _fibres(layout, cells2d, rng, px)
    thick = np.zeros(cells2d.shape, np.float32)
    for g in geoms:
        own = cells2d[g.box] == g.label
        thick[g.box] += np.clip(1 - g.d, 0, 1) * own
    inside = cells > 0
    out = np.zeros(cells.shape, np.float32)
    if cells.ndim == 2:
        out += diffuse[cells] * (0.5 + 0.5 * thick) + 0.9 * fib
    else:
        z = layout.glass_z
        nuc_foot = (nuclei > 0).any(0)
        fib = np.where(nuc_foot, fib * np.float32(0.4), fib)
        out[z] += 1.6 * fib  # basal stress fibres: the brightest actin (z blur spreads them)
        if z + 1 < cells.shape[0]:
            out[z + 1] += 0.6 * fib * (cells[z + 1] > 0)
        out += diffuse[cells]
    d_b = _edt(~bnd, inside, vox)
    out += cortex[cells] * np.exp(-(d_b * d_b) / np.float32(2 * 0.5**2))
    d_n = _edt(nuclei == 0, inside, vox)
    out += ring[cells] * np.exp(-((d_n - 0.7) ** 2) / np.float32(2 * 0.6**2))
    out *= gain[cells] * inside
    out *= 1 + 0.15 * _smooth_noise(cells.shape, tuple(3.0 / np.asarray(vox)), rng)
    dim = np.ones(n + 1, np.float32)
    dim[1:] = rng.uniform(0.05, 0.2, n)  # faint, variable actin cap over the nucleus
    nuc = nuclei > 0
    out[nuc] *= dim[nuclei[nuc]]
    return np.clip(out, 0, None)


def membrane_channel(layout: Layout, rng: np.random.Generator, bnd: np.ndarray) -> np.ndarray:
    """Membrane stain: bright thin outlines of every cell plus a faint fill."""
    n = len(layout.geoms)
    amp = np.zeros(n + 1, np.float32)
    amp[1:] = rng.uniform(0.55, 1.0, n)
    cells = layout.cells
    return amp[cells] * (bnd + np.float32(0.06) * (cells > 0))


def organelle_channel(layout: Layout, rng: np.random.Generator, vox: tuple[float, ...],
                      bnd: np.ndarray, nucleoli: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cytoplasmic organelles (5-20 per cell) plus the nucleoli, as an image and int32 labels.

    Organelles get ids ``1..K``; the nucleoli follow with ids ``K+1..``.
    """
    cells, nuclei = layout.cells, layout.nuclei
    allowed = (cells > 0) & ~bnd & (nuclei == 0)
    labels = [g.label for g in layout.geoms]
    counts = dict(zip(labels, rng.integers(5, 21, len(labels)).tolist()))
    occ = place_blobs(allowed, cells, counts, (0.4, 1.0), vox, rng)
    k = int(occ.max())
    occ = np.where(nucleoli > 0, nucleoli + k, occ).astype(np.int32)
    amps = np.zeros(occ.max() + 1, np.float32)
    amps[1 : k + 1] = rng.uniform(0.5, 1.0, k)
    amps[k + 1 :] = 0.4
    return amps[occ], occ
