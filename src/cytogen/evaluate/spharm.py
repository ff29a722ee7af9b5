"""3D object shape by spherical harmonics (SPHARM) of the radial function, with pyshtools.

Method (one object, a boolean mask with its voxel size ``spacing`` in um, ``(z, y, x)``):

1. The mask is padded by 2 voxels and read as a float image; its surface is the 0.5 level set,
   both for marching cubes (:func:`skimage.measure.marching_cubes`, anisotropic ``spacing``: the
   *original surface*, in um) and for the radial function below (trilinear interpolation of the
   mask: on voxel edges this is the same linear interpolation marching cubes uses).
2. Directions are the nodes of a Driscoll-Healy grid of degree ``L = max(lmax, 31)`` (``n x 2n``,
   ``n = 2 (L + 1)``; at least 64 x 128 rays, so that a low ``lmax`` is the projection of a
   well-sampled ``r`` and not an aliased one), latitude from the z axis, longitude from x towards
   y. From the object's centroid (mean voxel position) a ray is marched in each direction in
   steps of half the smallest voxel size; ``r(theta, phi)`` is the distance, in um, of the
   **farthest** crossing of the 0.5 level (linearly interpolated between the two samples around
   it). A ray that leaves the object,
   passes through points farther than ``tol`` (default: the largest voxel side) from it and
   enters it again, or a centroid outside the object, marks the object as **not star-shaped**: its
   radial function then describes the outer envelope seen from the centroid, not the surface.
   (Re-entries closer than ``tol`` are the voxel staircase seen by grazing rays, not concavities;
   ``concave_fraction`` is the fraction of rays with a real re-entry.)
3. ``r`` is expanded with :func:`pyshtools.expand.SHExpandDH` (4-pi normalised real harmonics, no
   Condon-Shortley phase; ``lmax_calc = lmax``).
4. Reconstruction check: ``r`` is synthesised from the coefficients on a grid of degree
   ``2 L + 1`` (four times as many points as the analysis grid) and the Hausdorff distance (um)
   between those surface points and the marching-cubes vertices is the larger of the two directed
   distances (:class:`scipy.spatial.cKDTree`). Both point sets are discrete, so it includes up to
   half the spacing of the denser one.

Descriptors: without alignment the **rotation-invariant amplitude spectrum** ``sqrt(P_l)``, ``P_l =
sum_m C_lm^2 + S_lm^2`` (4-pi normalisation: ``P_l`` is degree ``l``'s share of the mean of ``r^2``
over the sphere; ``sqrt(P_0)`` = mean radius in um), ``lmax + 1`` values. With ``align=True`` the
rays are cast in the object's principal-axis frame (longest axis along x, shortest along z, signs
chosen so each axis has a positive third moment: mirror images may map to one frame) and the
descriptor is the coefficients themselves, ``C_lm`` (m = 0..l) and ``S_lm`` (m = 1..l), ``(lmax+1)^2``
values, comparable between objects because they share that frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cytogen.errors import CytogenError

__all__ = ["SHShape", "dh_directions", "principal_frame", "radial_profile", "reentering_rays", "sh_evaluate",
           "sh_shape"]

PAD = 2


def _pyshtools():
    try:
        import pyshtools
    except ImportError:  # pragma: no cover - the shapes extra is installed in the tests
        raise CytogenError('3D shape descriptors need pyshtools: pip install "cytogen[shapes]"') from None
    return pyshtools


@dataclass
class SHShape:
    """Spherical-harmonic description of one 3D object.

    Attributes
    ----------
    coefficients
        ``(2, lmax+1, lmax+1)`` pyshtools ``cilm`` of ``r`` (um) in the frame ``rotation``.
    rotation
        ``(3, 3)``; row ``i`` is axis ``i`` (z', y', x') of the frame, in the image's ``(z, y, x)``.
    centroid_um
        Centroid in um, ``(z, y, x)``, in the coordinates of the image the mask was cut from.
    descriptor
        The amplitude spectrum (``align=False``) or the flattened coefficients (``align=True``).
    hausdorff_um
        Hausdorff distance between the marching-cubes surface and the reconstruction.
    star_shaped
        False when a ray re-enters the object (see the module docstring) or the centroid is outside.
    concave_fraction
        Fraction of the rays that re-enter the object.
    """

    coefficients: np.ndarray
    rotation: np.ndarray
    centroid_um: np.ndarray
    descriptor: np.ndarray
    hausdorff_um: float
    star_shaped: bool
    concave_fraction: float = 0.0


def dh_directions(lmax: int, rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latitudes and longitudes (degrees) of a Driscoll-Healy grid (``sampling=2``) and the unit
    vectors ``(n, 2n, 3)`` of its nodes in image ``(z, y, x)`` order (rotated back by ``rotation``)."""
    n = 2 * (int(lmax) + 1)
    lat = 90.0 - 180.0 * np.arange(n) / n
    lon = 360.0 * np.arange(2 * n) / (2 * n)
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    u = np.stack([np.sin(la), np.cos(la) * np.sin(lo), np.cos(la) * np.cos(lo)], axis=-1)
    if rotation is not None:
        u = u @ np.asarray(rotation)  # u_image = R^T u_frame, row-wise
    return lat, lon, u


def radial_profile(maskf: np.ndarray, centre_vox: np.ndarray, directions: np.ndarray,
                   spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Ray-march a float mask (2D or 3D) from ``centre_vox`` along unit ``directions`` (``(n, ndim)``, um).

    Returns
    -------
    r : ndarray
        Distance (um) of the farthest 0.5-level crossing per direction (0 where none).
    exits : ndarray
        Number of inside-to-outside crossings per direction (more than 1: not star-shaped).
    centre_inside : bool
        Whether the centre lies inside the 0.5 level set.
    """
    sp = np.asarray(spacing, np.float64)
    step = 0.5 * float(sp.min())
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in maskf.shape], indexing="ij")).reshape(len(sp), -1).T
    reach = float(np.linalg.norm((corners - centre_vox) * sp, axis=1).max()) + step
    t = np.arange(0.0, reach + step, step)
    d = np.asarray(directions, np.float64).reshape(-1, len(sp))
    r = np.zeros(len(d))
    exits = np.zeros(len(d), np.int64)
    chunk = max(1, int(2_000_000 // len(t)))
    for s in range(0, len(d), chunk):
        dd = d[s:s + chunk] / sp  # voxel steps per um along each ray
        pts = centre_vox[:, None, None] + dd.T[:, :, None] * t[None, None, :]
        v = ndi.map_coordinates(maskf, pts.reshape(len(sp), -1), order=1, mode="constant", cval=0.0)
        v = v.reshape(len(dd), len(t))
        inside = v >= 0.5
        out = inside[:, :-1] & ~inside[:, 1:]
        exits[s:s + chunk] = out.sum(1)
        has = out.any(1)
        j = len(t) - 2 - np.argmax(out[:, ::-1], axis=1)  # last exit
        rows = np.arange(len(dd))
        v0, v1 = v[rows, j], v[rows, j + 1]
        frac = np.clip((v0 - 0.5) / np.where(v0 > v1, v0 - v1, 1.0), 0.0, 1.0)
        r[s:s + chunk] = np.where(has, t[j] + frac * step, 0.0)
    c_val = ndi.map_coordinates(maskf, centre_vox[:, None], order=1, mode="constant", cval=0.0)[0]
    return r, exits, bool(c_val >= 0.5)


def reentering_rays(maskf: np.ndarray, centre_vox: np.ndarray, directions: np.ndarray,
                    spacing: tuple[float, ...], tol: float | None = None) -> np.ndarray:
    """Per direction, whether the ray from ``centre_vox`` leaves the 0.5 level set, passes a point
    farther than ``tol`` um (default the largest voxel side) from the object, and enters it again."""
    sp = np.asarray(spacing, np.float64)
    tol = float(sp.max()) if tol is None else float(tol)
    d = np.asarray(directions, np.float64).reshape(-1, len(sp))
    if not len(d):
        return np.zeros(0, bool)
    dist = ndi.distance_transform_edt(maskf < 0.5, sampling=sp).astype(np.float32)
    step = 0.5 * float(sp.min())
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in maskf.shape], indexing="ij")).reshape(len(sp), -1).T
    t = np.arange(0.0, float(np.linalg.norm((corners - centre_vox) * sp, axis=1).max()) + 2 * step, step)
    out = np.zeros(len(d), bool)
    chunk = max(1, int(1_000_000 // len(t)))
    for s in range(0, len(d), chunk):
        dd = d[s:s + chunk] / sp
        pts = (centre_vox[:, None, None] + dd.T[:, :, None] * t[None, None, :]).reshape(len(sp), -1)
        v = ndi.map_coordinates(maskf, pts, order=1, mode="constant", cval=0.0).reshape(len(dd), len(t))
        far = ndi.map_coordinates(dist, pts, order=1, mode="nearest").reshape(len(dd), len(t)) > tol
        inside = v >= 0.5
        before = np.maximum.accumulate(inside, axis=1)
        after = np.maximum.accumulate(inside[:, ::-1], axis=1)[:, ::-1]
        out[s:s + chunk] = (far & ~inside & before & after).any(1)
    return out


def star_check(maskf: np.ndarray, centre_vox: np.ndarray, directions: np.ndarray, spacing: tuple[float, ...],
               exits: np.ndarray, centre_inside: bool) -> tuple[bool, float]:
    """``(star_shaped, concave_fraction)`` from a :func:`radial_profile` run: only rays with more than
    one exit are checked again with :func:`reentering_rays`."""
    d = np.asarray(directions).reshape(len(exits), -1)
    multi = np.flatnonzero(exits > 1)
    bad = reentering_rays(maskf, centre_vox, d[multi], spacing) if len(multi) else np.zeros(0, bool)
    frac = float(bad.sum()) / max(1, len(exits))
    return bool(centre_inside and not bad.any()), frac


def principal_frame(coords_um: np.ndarray) -> np.ndarray:
    """Rows: the principal axes of points ``(n, ndim)`` (um), shortest first, longest last (so the
    longest lies along x), each signed so the points' third moment along it is >= 0."""
    x = coords_um - coords_um.mean(0)
    w, v = np.linalg.eigh(np.cov(x, rowvar=False) if len(x) > 1 else np.eye(x.shape[1]))
    axes = v.T  # ascending eigenvalues: shortest first
    for i, a in enumerate(axes):
        proj = x @ a
        m3 = float((proj ** 3).mean())
        sd3 = float(proj.std()) ** 3
        if abs(m3) > 1e-6 * max(sd3, 1e-12):
            sign = 1.0 if m3 > 0 else -1.0
        else:  # symmetric along this axis: a deterministic convention
            sign = 1.0 if a[np.argmax(np.abs(a))] > 0 else -1.0
        axes[i] = sign * a
    return axes


def sh_evaluate(coefficients: np.ndarray, directions_frame: np.ndarray) -> np.ndarray:
    """``r`` (um) of an expansion at unit directions given in its own frame (``(n, 3)``, z', y', x')."""
    shtools = _pyshtools()
    d = np.asarray(directions_frame, np.float64).reshape(-1, 3)
    lat = np.degrees(np.arcsin(np.clip(d[:, 0], -1, 1)))
    lon = np.degrees(np.arctan2(d[:, 1], d[:, 2]))
    return np.asarray(shtools.expand.MakeGridPoint(coefficients, lat, lon, norm=1, csphase=1), np.float64)


def _flatten(cilm: np.ndarray) -> np.ndarray:
    lmax = cilm.shape[1] - 1
    parts = []
    for l_ in range(lmax + 1):
        parts.append(cilm[0, l_, : l_ + 1])
        parts.append(cilm[1, l_, 1 : l_ + 1])
    return np.concatenate(parts)


def sh_shape(mask: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), lmax: int = 31,
             align: bool = False, offset_um: np.ndarray | None = None) -> SHShape:
    """Spherical-harmonic shape of one 3D object (see the module docstring for the method).

    Parameters
    ----------
    mask
        Boolean ``(Z, Y, X)`` mask of one object (a crop is fine).
    spacing
        Voxel size in um, ``(z, y, x)``.
    lmax
        Highest degree of the expansion (31 as in Sun et al. 2022).
    align
        Cast rays in the principal-axis frame and describe by the coefficients (else by the
        rotation-invariant amplitude spectrum).
    offset_um
        Position (um) of the mask's first voxel in the image, added to the centroid.

    Returns
    -------
    SHShape
    """
    shtools = _pyshtools()
    from skimage.measure import marching_cubes

    m = np.asarray(mask, bool)
    if m.ndim != 3 or not m.any():
        raise CytogenError(f"sh_shape needs a non-empty 3D mask, got shape {m.shape}")
    if int(lmax) < 1:
        raise CytogenError(f"the spherical-harmonic degree must be >= 1, got {lmax}")
    sp = np.asarray(spacing, np.float64)
    maskf = np.pad(m, PAD).astype(np.float32)
    coords = np.argwhere(maskf > 0).astype(np.float64)
    centre = coords.mean(0)
    rot = principal_frame(coords * sp) if align else np.eye(3)
    _, _, u = dh_directions(max(int(lmax), 31), rot)
    r, exits, inside = radial_profile(maskf, centre, u.reshape(-1, 3), tuple(sp))
    star, frac = star_check(maskf, centre, u.reshape(-1, 3), tuple(sp), exits, inside)
    grid = r.reshape(u.shape[:2])
    cilm = shtools.expand.SHExpandDH(grid, norm=1, sampling=2, csphase=1, lmax_calc=int(lmax))
    if align:
        desc = _flatten(cilm)
    else:
        power = shtools.spectralanalysis.spectrum(cilm, normalization="4pi", unit="per_l")
        desc = np.sqrt(np.clip(power, 0, None))
    # reconstruction on a denser grid versus the marching-cubes surface
    l_rec = 2 * max(int(lmax), 31) + 1
    r_rec = shtools.expand.MakeGridDH(cilm, lmax=l_rec, norm=1, sampling=2, csphase=1)
    _, _, u_rec = dh_directions(l_rec, rot)
    pts = centre * sp + r_rec.reshape(-1, 1) * u_rec.reshape(-1, 3)
    verts = marching_cubes(maskf, level=0.5, spacing=tuple(sp))[0]
    d1 = cKDTree(pts).query(verts)[0].max()
    d2 = cKDTree(verts).query(pts)[0].max()
    off = np.zeros(3) if offset_um is None else np.asarray(offset_um, np.float64)
    return SHShape(coefficients=cilm, rotation=rot, centroid_um=(centre - PAD) * sp + off,
                   descriptor=desc.astype(np.float64), hausdorff_um=float(max(d1, d2)),
                   star_shaped=star, concave_fraction=frac)
