"""Random layouts of real nucleus shapes with exact instance masks (2D and 3D).

A :class:`ShapeLibrary` holds binary nucleus footprints cut from instance label images (or
sampled from a trained shape model), with their pixel size (objects cut by the image edge are
left out, so every shape is whole) and the index of the image each came from.
:func:`random_layout` places shapes at random positions, rotations (about the optical axis in
3D) and flips on a canvas of any size until a density (nuclei per 100 x 100 um) or an area
fraction is reached; positions are uniform, or partly drawn around random cluster centres
(``clustered``). A new shape may overlap the shapes already placed by at most ``max_overlap`` of
its area (0: touching, never overlapping); where it does, it lies behind them. Every label's
pixels are therefore exactly its placed footprint minus the footprints placed before it
(:func:`placed_footprint` rebuilds one), and shapes reaching over the canvas edge are cut there,
as in real fields. Rotations interpolate the footprint linearly (threshold 0.5), so outlines stay
as smooth as the annotated ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import rescale

from cytogen.data.masks import check_label_image
from cytogen.errors import CytogenError

__all__ = ["Placement", "ShapeLibrary", "placed_footprint", "random_layout"]


@dataclass
class ShapeLibrary:
    """Binary footprints (``bool`` crops, one per nucleus, all 2D or all 3D ``(Z, Y, X)``), their
    lateral pixel size in um (or None), the z step of 3D shapes (or None), and per shape the index
    of the label image it came from."""

    shapes: list[np.ndarray]
    pixel_size_um: float | None = None
    sources: list[int] | None = None
    z_step_um: float | None = None

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = [0] * len(self.shapes)
        if len(self.sources) != len(self.shapes):
            raise CytogenError(f"{len(self.sources)} source indices for {len(self.shapes)} shapes")
        dims = {s.ndim for s in self.shapes}
        if len(dims) > 1 or not dims <= {2, 3}:
            raise CytogenError(f"shapes must be all 2D or all 3D; got dimensions {sorted(dims)}")

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def ndim(self) -> int:
        return self.shapes[0].ndim if self.shapes else 2

    @classmethod
    def from_labels(cls, labels: list[np.ndarray], pixel_size_um: float | None = None, *,
                    min_area_px: int = 10, name: str = "labels", z_step_um: float | None = None) -> ShapeLibrary:
        """Cut every object that touches no image edge (and has ``min_area_px`` pixels or more)."""
        shapes, sources = [], []
        for i, lab in enumerate(labels):
            lab = check_label_image(lab, f"{name}[{i}]")
            if lab.ndim not in (2, 3):
                raise CytogenError(f"{name}[{i}]: shape libraries are 2D or 3D; got a {lab.ndim}D label image")
            for k, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None:
                    continue
                if any(s.start == 0 or s.stop == n for s, n in zip(sl, lab.shape)):
                    continue  # cut by the image edge: not a whole nucleus
                mask = lab[sl] == k
                if mask.sum() >= min_area_px:
                    shapes.append(np.pad(mask, 1))
                    sources.append(i)
        if not shapes:
            raise CytogenError(f"{name}: no whole objects of {min_area_px} px or more; give label images of nuclei")
        return cls(shapes, None if pixel_size_um is None else float(pixel_size_um), sources, z_step_um)

    def rescaled(self, factor: float) -> ShapeLibrary:
        """Every shape scaled laterally by ``factor`` (the pixel size stays): bigger or smaller nuclei."""
        if factor <= 0:
            raise CytogenError(f"scale factor is {factor}; it must be > 0")
        if math.isclose(factor, 1.0):
            return ShapeLibrary(list(self.shapes), self.pixel_size_um, list(self.sources), self.z_step_um)
        f = (1.0, factor, factor) if self.ndim == 3 else factor
        kept = [(np.pad(r, 1), src) for s, src in zip(self.shapes, self.sources)
                if (r := rescale(s.astype(np.float32), f, order=1, anti_aliasing=False) > 0.5).any()]
        if not kept:
            raise CytogenError(f"scaling by {factor} leaves no shape of at least one pixel")
        return ShapeLibrary([k[0] for k in kept], self.pixel_size_um, [k[1] for k in kept], self.z_step_um)

    def at_pixel_size(self, pixel_size_um: float | None) -> ShapeLibrary:
        """The shapes resampled to another lateral pixel size (the same when either is unknown)."""
        if pixel_size_um is None or self.pixel_size_um is None or math.isclose(pixel_size_um, self.pixel_size_um):
            px = self.pixel_size_um if pixel_size_um is None else float(pixel_size_um)
            return ShapeLibrary(list(self.shapes), px, list(self.sources), self.z_step_um)
        out = self.rescaled(self.pixel_size_um / float(pixel_size_um))
        out.pixel_size_um = float(pixel_size_um)
        return out

    def areas(self) -> np.ndarray:
        """Pixels (voxels in 3D) per shape."""
        return np.array([int(s.sum()) for s in self.shapes])


@dataclass
class Placement:
    """Where one shape went: library index, rotation (degrees, in the Y-X plane), flip (of X),
    first corner (may be < 0), its label, and its visible pixels."""

    shape: int
    angle: float
    flip: bool
    corner: tuple[int, ...]
    label: int = 0
    pixels: int = field(default=0)  # visible pixels after occlusion and the canvas edge


def _transformed(shape: np.ndarray, angle: float, flip: bool) -> np.ndarray:
    s = shape[..., ::-1] if flip else shape
    d = s.ndim
    return ndi.rotate(s.astype(np.float32), angle, axes=(d - 1, d - 2), reshape=True, order=1) > 0.5


def _window(corner: tuple[int, ...], fp: tuple[int, ...], canvas: tuple[int, ...]) -> tuple[tuple, tuple] | None:
    dst, src = [], []
    for c, f, n in zip(corner, fp, canvas):
        a, b = max(0, c), min(n, c + f)
        if a >= b:
            return None
        dst.append(slice(a, b))
        src.append(slice(a - c, b - c))
    return tuple(dst), tuple(src)


def placed_footprint(library: ShapeLibrary, p: Placement, canvas: tuple[int, ...]) -> np.ndarray:
    """The full (unoccluded) footprint of placement ``p`` on a canvas, ``bool``."""
    out = np.zeros(canvas, bool)
    fp = _transformed(library.shapes[p.shape], p.angle, p.flip)
    win = _window(p.corner, fp.shape, canvas)
    if win is not None:
        out[win[0]] = fp[win[1]]
    return out


def _canvas(size: tuple[int, ...] | int, ndim: int) -> tuple[int, ...]:
    shape = (int(size),) * 2 if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != ndim or min(shape) < 1:
        want = "(Y, X)" if ndim == 2 else "(Z, Y, X)"
        raise CytogenError(f"canvas size must be {want} > 0 for {ndim}D shapes, got {size}")
    return shape


def random_layout(library: ShapeLibrary, size: tuple[int, ...] | int, *, density: float | None = None,
                  area_fraction: float | None = None, pixel_size_um: float | None = None,
                  max_overlap: float = 0.0, clustered: float = 0.0, cluster_radius_um: float = 15.0,
                  min_visible: float = 0.5, rng: np.random.Generator | None = None,
                  max_attempts: int = 50, shape_indices: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, list[Placement]]:
    """An ``int32`` instance label canvas of randomly placed library shapes.

    Parameters
    ----------
    library
        The shapes, already at the canvas pixel size (:meth:`ShapeLibrary.at_pixel_size`).
    size
        Canvas ``(Y, X)`` (or ``(Z, Y, X)`` for 3D shapes) in pixels; one int for a 2D square.
    density, area_fraction
        Stop at ``density`` nuclei per 100 x 100 um of canvas area (needs the pixel size; in 3D
        through the whole depth), or when the labelled fraction of the canvas reaches
        ``area_fraction``; give one.
    pixel_size_um
        Canvas lateral pixel size (default: the library's).
    max_overlap
        Largest fraction of a new shape's area that may lie on shapes already placed (it is
        hidden behind them there); 0 allows touching only.
    clustered
        Fraction of the shapes placed around random cluster centres (normal, sigma
        ``cluster_radius_um``, in z through the library's z step when known; one centre per 8
        shapes) instead of uniformly.
    min_visible
        A shape is kept only when this fraction of it is visible (inside the canvas, not hidden).
    max_attempts
        Placement attempts per wanted shape before the layout is returned as it is (a full canvas).
    shape_indices
        Draw only these library shapes (default: all), e.g. those of one source image.

    Returns
    -------
    labels, placements
        Labels 1..N in placement order, and each shape's :class:`Placement`.
    """
    if not len(library):
        raise CytogenError("the shape library is empty")
    shape = _canvas(size, library.ndim)
    if (density is None) == (area_fraction is None):
        raise CytogenError("give a density (nuclei per 100 x 100 um) or an area fraction, not both or neither")
    if not 0.0 <= max_overlap < 1.0:
        raise CytogenError(f"max_overlap is {max_overlap}; it must be in [0, 1)")
    if not 0.0 <= clustered <= 1.0:
        raise CytogenError(f"clustered is {clustered}; it must be in [0, 1]")
    pool = np.arange(len(library)) if shape_indices is None else np.asarray(shape_indices, np.int64)
    if pool.size == 0 or pool.min() < 0 or pool.max() >= len(library):
        raise CytogenError(f"shape_indices must be a non-empty selection of 0..{len(library) - 1}")
    px = pixel_size_um if pixel_size_um is not None else library.pixel_size_um
    yx = shape[-2] * shape[-1]
    if density is not None:
        if px is None:
            raise CytogenError("a density in nuclei per 100 x 100 um needs the pixel size; give --pixel-size-um "
                               "or use --area-fraction")
        if density <= 0:
            raise CytogenError(f"density is {density}; it must be > 0")
        wanted = max(1, round(density * yx * px * px / 1e4))
    else:
        if not 0.0 < area_fraction < 1.0:
            raise CytogenError(f"area fraction is {area_fraction}; it must be in (0, 1)")
        wanted = None
    rng = np.random.default_rng() if rng is None else rng
    sigma = np.full(len(shape), cluster_radius_um / px if px else cluster_radius_um)
    if len(shape) == 3 and px and library.z_step_um:
        sigma[0] = cluster_radius_um / library.z_step_um
    mean_area = max(1.0, float(library.areas()[pool].mean()))
    expected = wanted or int(area_fraction * math.prod(shape) / mean_area) + 1
    centres = rng.uniform(np.zeros(len(shape)), shape, (max(1, expected // 8), len(shape)))
    labels = np.zeros(shape, np.int32)
    placements: list[Placement] = []
    budget = max_attempts * expected
    while budget > 0:
        if wanted is not None and len(placements) >= wanted:
            break
        if wanted is None and (labels > 0).mean() >= area_fraction:
            break
        budget -= 1
        i = int(pool[rng.integers(len(pool))])
        angle, flip = float(rng.uniform(0, 360)), bool(rng.integers(2))
        fp = _transformed(library.shapes[i], angle, flip)
        area = int(fp.sum())
        if area == 0:
            continue
        if clustered and rng.random() < clustered:
            c = centres[rng.integers(len(centres))] + rng.normal(0, sigma)
        else:
            c = rng.uniform(np.zeros(len(shape)), shape)
        corner = tuple(int(round(ci - f / 2)) for ci, f in zip(c, fp.shape))
        p = Placement(i, angle, flip, corner)
        full = placed_footprint(library, p, shape)
        hidden = int((full & (labels > 0)).sum())
        if hidden > max_overlap * area:
            continue
        visible = full & (labels == 0)
        if visible.sum() < min_visible * area:
            continue
        p.label, p.pixels = len(placements) + 1, int(visible.sum())
        labels[visible] = p.label
        placements.append(p)
    return labels, placements
