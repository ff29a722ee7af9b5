"""Random layouts of real nucleus shapes with exact instance masks (2D).

A :class:`ShapeLibrary` holds binary nucleus footprints cut from instance label images, with
their pixel size (objects cut by the image edge are left out, so every shape is whole).
:func:`random_layout` places shapes at random positions, rotations and flips on a canvas of
any size until a density (nuclei per 100 x 100 um) or an area fraction is reached; positions
are uniform, or partly drawn around random cluster centres (``clustered``). A new shape may
overlap the shapes already placed by at most ``max_overlap`` of its area (0: touching, never
overlapping); where it does, it lies behind them. Every label's pixels are therefore exactly its
placed footprint minus the footprints placed before it (:func:`placed_footprint` rebuilds one),
and shapes reaching over the canvas edge are cut there, as in real fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import rescale, rotate

from cytogen.data.masks import check_label_image
from cytogen.errors import CytogenError

__all__ = ["Placement", "ShapeLibrary", "placed_footprint", "random_layout"]


@dataclass
class ShapeLibrary:
    """Binary footprints (``bool`` crops, one per nucleus) and their pixel size in um (or None)."""

    shapes: list[np.ndarray]
    pixel_size_um: float | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    @classmethod
    def from_labels(cls, labels: list[np.ndarray], pixel_size_um: float | None = None, *,
                    min_area_px: int = 10, name: str = "labels") -> ShapeLibrary:
        """Cut every object that does not touch the image edge (and has ``min_area_px`` pixels or more)."""
        shapes = []
        for i, lab in enumerate(labels):
            lab = check_label_image(lab, f"{name}[{i}]")
            if lab.ndim != 2:
                raise CytogenError(f"{name}[{i}]: shape libraries are 2D; got a {lab.ndim}D label image")
            for k, sl in enumerate(ndi.find_objects(lab), start=1):
                if sl is None:
                    continue
                if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == lab.shape[0] or sl[1].stop == lab.shape[1]:
                    continue  # cut by the image edge: not a whole nucleus
                mask = lab[sl] == k
                if mask.sum() >= min_area_px:
                    shapes.append(np.pad(mask, 1))
        if not shapes:
            raise CytogenError(f"{name}: no whole objects of {min_area_px} px or more; give label images of nuclei")
        return cls(shapes, None if pixel_size_um is None else float(pixel_size_um))

    def at_pixel_size(self, pixel_size_um: float | None) -> ShapeLibrary:
        """The shapes resampled to another pixel size (the same when either is unknown)."""
        if pixel_size_um is None or self.pixel_size_um is None or math.isclose(pixel_size_um, self.pixel_size_um):
            return ShapeLibrary(list(self.shapes), self.pixel_size_um if pixel_size_um is None else pixel_size_um)
        f = self.pixel_size_um / float(pixel_size_um)
        out = [rescale(s.astype(np.float32), f, order=1, anti_aliasing=False) > 0.5 for s in self.shapes]
        return ShapeLibrary([np.pad(s, 1) for s in out if s.any()], float(pixel_size_um))

    def areas(self) -> np.ndarray:
        return np.array([int(s.sum()) for s in self.shapes])


@dataclass
class Placement:
    """Where one shape went: library index, rotation (degrees), flip, top-left corner (may be < 0)."""

    shape: int
    angle: float
    flip: bool
    corner: tuple[int, int]
    label: int = 0
    pixels: int = field(default=0)  # visible pixels after occlusion and the canvas edge


def _transformed(shape: np.ndarray, angle: float, flip: bool) -> np.ndarray:
    s = shape[:, ::-1] if flip else shape
    return rotate(s.astype(np.float32), angle, resize=True, order=0, preserve_range=True) > 0.5


def placed_footprint(library: ShapeLibrary, p: Placement, canvas: tuple[int, int]) -> np.ndarray:
    """The full (unoccluded) footprint of placement ``p`` on a canvas, ``bool``."""
    out = np.zeros(canvas, bool)
    fp = _transformed(library.shapes[p.shape], p.angle, p.flip)
    y0, x0 = p.corner
    ys, xs = slice(max(0, y0), min(canvas[0], y0 + fp.shape[0])), slice(max(0, x0), min(canvas[1], x0 + fp.shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = fp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return out


def random_layout(library: ShapeLibrary, size: tuple[int, int] | int, *, density: float | None = None,
                  area_fraction: float | None = None, pixel_size_um: float | None = None,
                  max_overlap: float = 0.0, clustered: float = 0.0, cluster_radius_um: float = 15.0,
                  min_visible: float = 0.5, rng: np.random.Generator | None = None,
                  max_attempts: int = 50) -> tuple[np.ndarray, list[Placement]]:
    """A ``uint16``/``int32`` instance label canvas of randomly placed library shapes.

    Parameters
    ----------
    library
        The shapes, already at the canvas pixel size (:meth:`ShapeLibrary.at_pixel_size`).
    size
        Canvas ``(Y, X)`` in pixels (or one int for a square).
    density, area_fraction
        Stop at ``density`` nuclei per 100 x 100 um (needs the pixel size), or when the labelled
        fraction of the canvas reaches ``area_fraction``; give one.
    pixel_size_um
        Canvas pixel size (default: the library's).
    max_overlap
        Largest fraction of a new shape's area that may lie on shapes already placed (it is
        hidden behind them there); 0 allows touching only.
    clustered
        Fraction of the shapes placed around random cluster centres (normal, sigma
        ``cluster_radius_um``; one centre per 8 shapes) instead of uniformly.
    min_visible
        A shape is kept only when this fraction of it is visible (inside the canvas, not hidden).
    max_attempts
        Placement attempts per wanted shape before the layout is returned as it is (a full canvas).

    Returns
    -------
    labels, placements
        Labels 1..N in placement order, and each shape's :class:`Placement`.
    """
    shape = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 2 or min(shape) < 1:
        raise CytogenError(f"canvas size must be (Y, X) > 0, got {size}")
    if (density is None) == (area_fraction is None):
        raise CytogenError("give a density (nuclei per 100 x 100 um) or an area fraction, not both or neither")
    if not 0.0 <= max_overlap < 1.0:
        raise CytogenError(f"max_overlap is {max_overlap}; it must be in [0, 1)")
    if not 0.0 <= clustered <= 1.0:
        raise CytogenError(f"clustered is {clustered}; it must be in [0, 1]")
    if not len(library):
        raise CytogenError("the shape library is empty")
    px = pixel_size_um if pixel_size_um is not None else library.pixel_size_um
    if density is not None:
        if px is None:
            raise CytogenError("a density in nuclei per 100 x 100 um needs the pixel size; give --pixel-size-um "
                               "or use --area-fraction")
        if density <= 0:
            raise CytogenError(f"density is {density}; it must be > 0")
        wanted = max(1, round(density * shape[0] * shape[1] * px * px / 1e4))
    else:
        if not 0.0 < area_fraction < 1.0:
            raise CytogenError(f"area fraction is {area_fraction}; it must be in (0, 1)")
        wanted = None
    rng = np.random.default_rng() if rng is None else rng
    sigma_px = cluster_radius_um / px if px else cluster_radius_um
    expected = wanted or int(area_fraction * shape[0] * shape[1] / max(1.0, float(library.areas().mean()))) + 1
    centres = rng.uniform((0, 0), shape, (max(1, expected // 8), 2))
    labels = np.zeros(shape, np.int32)
    placements: list[Placement] = []
    budget = max_attempts * expected
    while budget > 0:
        if wanted is not None and len(placements) >= wanted:
            break
        if wanted is None and (labels > 0).mean() >= area_fraction:
            break
        budget -= 1
        i = int(rng.integers(len(library)))
        angle, flip = float(rng.uniform(0, 360)), bool(rng.integers(2))
        fp = _transformed(library.shapes[i], angle, flip)
        if clustered and rng.random() < clustered:
            c = centres[rng.integers(len(centres))] + rng.normal(0, sigma_px, 2)
        else:
            c = rng.uniform((0, 0), shape)
        corner = (int(round(c[0] - fp.shape[0] / 2)), int(round(c[1] - fp.shape[1] / 2)))
        p = Placement(i, angle, flip, corner)
        full = placed_footprint(library, p, shape)
        area = int(fp.sum())
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
