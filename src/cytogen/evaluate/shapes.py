"""Object shape descriptors of instance label images (2D or 3D), and their PCA.

Any instance label image, whatever made it (a segmenter's output, a generator's, a hand
annotation): one row per object with its size, a fixed-length shape descriptor, the
reconstruction error of that descriptor (Hausdorff distance, um) and a star-shape flag.

- **3D**: spherical harmonics of the radial function from the centroid
  (:mod:`cytogen.evaluate.spharm`; default degree 31 as in Sun et al. 2022).
- **2D**: contour Fourier descriptors. The outer contour (:func:`skimage.measure.find_contours`
  at level 0.5 of the padded mask, in um, the longest one when there are several) is resampled
  to ``N = max(128, 8 degree)`` points equally spaced in arc length, oriented counter-clockwise
  in ``(x, y)``, and ``z = x + i y`` is transformed, ``Z_k = FFT(z)_k / N``. ``Z_0`` (position)
  is dropped. Rotation by ``theta`` multiplies every ``Z_k`` by ``exp(i theta)`` and moving the
  start point by ``tau`` (radians of arc) multiplies ``Z_k`` by ``exp(i k tau)``: without
  alignment the descriptor is ``|Z_k|`` for ``k = 1..degree, -1..-degree`` (``2 degree`` values),
  invariant to both; with ``align=True`` both phases are fixed so that ``Z_1`` and ``Z_-1`` are
  real and positive (the major axis of the first-harmonic ellipse along x; of the two solutions
  the one with a positive real part of the largest even harmonic) and the descriptor is the real
  and imaginary parts (``4 degree - 2`` values). Degree default 16. The Hausdorff distance
  compares the contour with the truncated series resynthesised at ``4 N`` points.

**Size is kept**: descriptors are in um, not divided by the object's size, so a generator that
makes objects too large is detectable (``sqrt(P_0)`` in 3D and ``|Z_1|`` in 2D are radii). With
``normalize_scale=True`` every value is divided by that size term, which is kept as the first
column. The star-shape flag is computed by ray casting from the centroid in both cases
(:func:`cytogen.evaluate.spharm.radial_profile` and :func:`~cytogen.evaluate.spharm.star_check`;
2D: ``N`` rays). Before description, each object's cavities are filled and only its largest
connected piece is kept (both optional; the table records the pieces and the fraction kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cytogen.errors import CytogenError
from cytogen.evaluate.spharm import PAD, radial_profile, sh_shape, star_check

__all__ = ["MIN_SIZE", "FourierShape", "ObjectShapes", "ShapePCA", "fourier_shape", "object_descriptors",
           "shape_pca"]

#: Smallest object kept by default, in pixels (2D: 3 x 3) or voxels (3D: 3 x 3 x 3).
MIN_SIZE = {2: 9, 3: 27}
DEFAULT_DEGREE = {2: 16, 3: 31}


@dataclass
class FourierShape:
    """Contour Fourier description of one 2D object (``coefficients[k]`` = ``Z_k`` for ``k`` in
    ``-degree..degree`` at index ``k + degree``, image frame, um; ``centroid_um`` = ``(y, x)``)."""

    coefficients: np.ndarray
    centroid_um: np.ndarray
    descriptor: np.ndarray
    hausdorff_um: float
    star_shaped: bool
    concave_fraction: float = 0.0


def _contour(maskf: np.ndarray, sp: np.ndarray) -> np.ndarray:
    from skimage.measure import find_contours

    cs = find_contours(maskf, 0.5)
    c = max(cs, key=len) * sp  # (row, col) in um
    xy = np.stack([c[:, 1], c[:, 0]], 1)
    if np.allclose(xy[0], xy[-1]):
        xy = xy[:-1]
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return xy if area >= 0 else xy[::-1]


def _resample(xy: np.ndarray, n: int) -> np.ndarray:
    closed = np.vstack([xy, xy[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    u = np.linspace(0.0, s[-1], n, endpoint=False)
    return np.interp(u, s, closed[:, 0]) + 1j * np.interp(u, s, closed[:, 1])


def _normalise_phase(z: np.ndarray, degree: int) -> np.ndarray:
    """Rotate and shift the start so ``Z_1`` and ``Z_-1`` are real and >= 0 (``z`` indexed k + degree)."""
    k = np.arange(-degree, degree + 1)
    p1, pm1 = np.angle(z[degree + 1]), np.angle(z[degree - 1])
    theta, tau = -(p1 + pm1) / 2.0, -(p1 - pm1) / 2.0
    out = z * np.exp(1j * (theta + k * tau))
    even = (k % 2 == 0) & (k != 0)
    if even.any():
        j = np.flatnonzero(even)[np.argmax(np.abs(out[even]))]
        if out[j].real < 0:  # the other solution (theta + pi, tau + pi)
            out = out * (-1.0) ** (k + 1)
    return out


def fourier_shape(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0), degree: int = 16,
                  align: bool = False, offset_um: np.ndarray | None = None) -> FourierShape:
    """Contour Fourier description of one 2D object (method in the module docstring)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2 or not m.any():
        raise CytogenError(f"fourier_shape needs a non-empty 2D mask, got shape {m.shape}")
    if int(degree) < 1:
        raise CytogenError(f"the Fourier degree must be >= 1, got {degree}")
    degree = int(degree)
    sp = np.asarray(spacing, np.float64)
    maskf = np.pad(m, PAD).astype(np.float32)
    xy = _contour(maskf, sp)
    n = max(128, 8 * degree)
    big = np.fft.fft(_resample(xy, n)) / n
    k = np.arange(-degree, degree + 1)
    z = big[k % n]
    z_desc = z.copy()
    z_desc[degree] = 0.0
    if align:
        zn = _normalise_phase(z_desc, degree)
        keep = np.delete(zn, [degree - 1, degree, degree + 1])
        desc = np.concatenate([[zn[degree + 1].real, zn[degree - 1].real], keep.real, keep.imag])
    else:
        desc = np.abs(np.delete(z_desc, degree))
        desc = np.concatenate([desc[degree:], desc[:degree][::-1]])  # k = 1..d, -1..-d
    spec = np.zeros(4 * n, complex)
    spec[k % (4 * n)] = z
    rec = np.fft.ifft(spec) * (4 * n)
    rec_xy = np.stack([rec.real, rec.imag], 1)
    hd = max(cKDTree(rec_xy).query(xy)[0].max(), cKDTree(xy).query(rec_xy)[0].max())
    coords = np.argwhere(maskf > 0).astype(np.float64)
    centre = coords.mean(0)
    ang = 2 * np.pi * np.arange(n) / n
    dirs = np.stack([np.sin(ang), np.cos(ang)], 1)
    _, exits, inside = radial_profile(maskf, centre, dirs, tuple(sp))
    star, frac = star_check(maskf, centre, dirs, tuple(sp), exits, inside)
    off = np.zeros(2) if offset_um is None else np.asarray(offset_um, np.float64)
    return FourierShape(coefficients=z, centroid_um=(centre - PAD) * sp + off, descriptor=desc,
                        hausdorff_um=float(hd), star_shaped=star, concave_fraction=frac)


@dataclass
class ObjectShapes:
    """One row per object of a label image (see :func:`object_descriptors`).

    Attributes
    ----------
    label, size, centroid_um, descriptors, hausdorff_um, star_shaped
        Per object: label id; area (um^2) or volume (um^3); centroid ``(y, x)`` / ``(z, y, x)`` um;
        ``(n, d)`` descriptor matrix; reconstruction error; star-shape flag.
    kind
        ``"sh_amplitude"``, ``"sh_coefficients"``, ``"fourier_amplitude"`` or ``"fourier_coefficients"``.
    degree, ndim, spacing
        Expansion degree, 2 or 3, voxel size used (um).
    shapes
        The per-object :class:`~cytogen.evaluate.spharm.SHShape` / :class:`FourierShape` (for
        reconstructions).
    skipped
        Objects left out: ``{"border": n, "small": n}``.
    n_components, kept_fraction
        Connected pieces of each object's label and the fraction of its pixels described.
    concave_fraction
        Fraction of the centroid's rays that re-enter the object (0 for star-shaped objects).
    """

    label: np.ndarray
    size: np.ndarray
    centroid_um: np.ndarray
    descriptors: np.ndarray
    hausdorff_um: np.ndarray
    star_shaped: np.ndarray
    kind: str
    degree: int
    ndim: int
    spacing: tuple[float, ...]
    shapes: list = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    n_components: np.ndarray | None = None
    kept_fraction: np.ndarray | None = None
    concave_fraction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def rows(self) -> list[dict]:
        """Plain rows for a CSV: label, size, centroid, hausdorff_um, star_shaped, d0..d{D-1}."""
        axes = "zyx"[-self.ndim:]
        out = []
        for i in range(len(self)):
            r = {"label": int(self.label[i]), "size": float(self.size[i])}
            r.update({f"centroid_{a}_um": float(c) for a, c in zip(axes, self.centroid_um[i])})
            r.update({"hausdorff_um": float(self.hausdorff_um[i]), "star_shaped": bool(self.star_shaped[i])})
            if self.n_components is not None:
                r.update(n_components=int(self.n_components[i]), kept_fraction=float(self.kept_fraction[i]),
                         concave_fraction=float(self.concave_fraction[i]))
            r.update({f"d{j}": float(v) for j, v in enumerate(self.descriptors[i])})
            out.append(r)
        return out


def _check_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise CytogenError(f"shape descriptors need a 2D (Y, X) or 3D (Z, Y, X) label image, got shape {lab.shape}")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise CytogenError("the label image holds non-integer values (a probability or intensity image?); "
                               "give instance labels: 0 = background, 1, 2, ... = objects")
        lab = lab.astype(np.int64)
    elif lab.dtype.kind not in "iub":
        raise CytogenError(f"label image of dtype {lab.dtype} is not integer; give instance labels")
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise CytogenError("the label image holds negative values; instance labels are 0 (background), 1, 2, ...")
    return lab


def object_descriptors(labels: np.ndarray, pixel_size_um: float | tuple[float, ...] | None = None, *,
                       degree: int | None = None, align: bool = False, exclude_border: bool = False,
                       min_size: int | None = None, normalize_scale: bool = False, largest_component: bool = True,
                       fill_holes: bool = True) -> ObjectShapes:
    """Shape descriptors of every object of an instance label image (module docstring: methods).

    Parameters
    ----------
    labels
        ``(Y, X)`` or ``(Z, Y, X)`` integer labels, 0 = background.
    pixel_size_um
        Pixel/voxel size in um (one value for all axes or one per axis); None = 1 (units px).
    degree
        Expansion degree (default 31 in 3D, 16 in 2D).
    align
        3D: principal-axis frame and coefficients; 2D: phase-normalised coefficients. Otherwise
        rotation-invariant amplitudes (the default: no frame ambiguity to worry about).
    exclude_border
        Leave out objects touching the image border (partial objects).
    min_size
        Leave out objects with fewer pixels/voxels (default :data:`MIN_SIZE`: 9 in 2D, 27 in 3D).
    normalize_scale
        Divide descriptors by the object's size term (kept as the first column).
    largest_component
        Describe only the largest connected piece of an object (8-/26-connected; SPHARM needs one
        piece): ``n_components`` and ``kept_fraction`` say how much was left out.
    fill_holes
        Fill enclosed cavities first (they are not part of the outer shape; left in, every ray
        through one would mark the object as not star-shaped).

    Returns
    -------
    ObjectShapes
    """
    lab = _check_labels(labels)
    nd = lab.ndim
    sp = np.ones(nd) if pixel_size_um is None else np.broadcast_to(np.asarray(pixel_size_um, np.float64), (nd,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise CytogenError(f"pixel size must be positive, got {pixel_size_um!r}")
    degree = DEFAULT_DEGREE[nd] if degree is None else int(degree)
    min_size = MIN_SIZE[nd] if min_size is None else int(min_size)
    kind = ("sh_" if nd == 3 else "fourier_") + ("coefficients" if align else "amplitude")
    rows: list[tuple] = []
    skipped = {"border": 0, "small": 0}
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        lid = i + 1
        if exclude_border and any(s.start == 0 or s.stop == n for s, n in zip(sl, lab.shape)):
            skipped["border"] += 1
            continue
        m = lab[sl] == lid
        total = int(m.sum())
        n_comp = 1
        if largest_component:
            cc, n_comp = ndi.label(m, structure=np.ones((3,) * nd, bool))
            if n_comp > 1:
                m = cc == np.argmax(np.bincount(cc.ravel())[1:]) + 1
        if fill_holes:
            m = ndi.binary_fill_holes(m)
        count = int(m.sum())
        if count < min_size:
            skipped["small"] += 1
            continue
        off = np.array([s.start for s in sl], np.float64) * sp
        if nd == 3:
            s = sh_shape(m, tuple(sp), degree, align, off)
        else:
            s = fourier_shape(m, tuple(sp), degree, align, off)
        rows.append((lid, count * float(np.prod(sp)), s, n_comp, int((m & (lab[sl] == lid)).sum()) / total))
    d = len(rows[0][2].descriptor) if rows else 0
    desc = np.array([r[2].descriptor for r in rows], np.float64).reshape(len(rows), d)
    if normalize_scale and len(rows):
        size = desc[:, :1].copy()
        desc = np.hstack([size, desc[:, 1:] / np.where(size > 0, size, 1.0)])
    return ObjectShapes(
        label=np.array([r[0] for r in rows], np.int64), size=np.array([r[1] for r in rows], np.float64),
        centroid_um=np.array([r[2].centroid_um for r in rows], np.float64).reshape(len(rows), nd),
        descriptors=desc, hausdorff_um=np.array([r[2].hausdorff_um for r in rows], np.float64),
        star_shaped=np.array([r[2].star_shaped for r in rows], bool), kind=kind, degree=degree, ndim=nd,
        spacing=tuple(float(v) for v in sp), shapes=[r[2] for r in rows], skipped=skipped,
        n_components=np.array([r[3] for r in rows], np.int64), kept_fraction=np.array([r[4] for r in rows]),
        concave_fraction=np.array([r[2].concave_fraction for r in rows], np.float64))


@dataclass
class ShapePCA:
    """Standardisation and PCA fitted on pooled descriptor sets (see :func:`shape_pca`).

    ``scores[i]`` are set ``i``'s coordinates; :meth:`transform` projects new descriptors."""

    scores: list[np.ndarray]
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """PCA coordinates of descriptors ``(n, d)``."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.components.T


def shape_pca(*sets: np.ndarray, n_components: int = 3) -> ShapePCA:
    """Standardise (pooled mean and SD per column; constant columns are only centred) and fit a
    PCA (scikit-learn, ``n_components`` or fewer when the data have fewer rows/columns) on the
    **pooled** rows of all ``sets`` (e.g. real and generated descriptors together, as in Sun et
    al. 2022), and project each set."""
    try:
        from sklearn.decomposition import PCA
    except ImportError:  # pragma: no cover
        raise CytogenError('shape PCA needs scikit-learn: pip install "cytogen[shapes]"') from None
    if not sets:
        raise CytogenError("shape_pca needs at least one descriptor set")
    mats = [np.asarray(s, np.float64) for s in sets]
    widths = {m.shape[1] for m in mats if m.ndim == 2}
    if len(widths) != 1 or any(m.ndim != 2 for m in mats):
        raise CytogenError(f"descriptor sets must be 2D with one width, got shapes {[m.shape for m in mats]}")
    pooled = np.vstack(mats)
    if len(pooled) < 2:
        raise CytogenError(f"PCA needs at least 2 objects, got {len(pooled)}")
    mean, sd = pooled.mean(0), pooled.std(0)
    scale = np.where(sd > 1e-12 * max(1.0, float(np.abs(pooled).max())), sd, 1.0)
    nc = int(min(n_components, pooled.shape[0], pooled.shape[1]))
    pca = PCA(n_components=nc, svd_solver="full").fit((pooled - mean) / scale)
    res = ShapePCA(scores=[], explained_variance_ratio=pca.explained_variance_ratio_.copy(), mean=mean,
                   scale=scale, components=pca.components_.copy())
    res.scores = [res.transform(m) for m in mats]
    return res
