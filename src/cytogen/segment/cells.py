"""Classical nucleus and cell segmentation of fluorescence fields, 2D and 3D (pure functions).

Used by ``cytogen cells extract`` when a field comes without instance masks:

- :func:`segment_nuclei`: Gaussian smoothing, Otsu threshold, holes filled, touching nuclei split
  by a watershed of the distance transform (one seed per distance maximum at least
  ``min_distance`` apart), small objects dropped;
- :func:`segment_cells`: the foreground of a membrane image (Otsu of the smoothed image) or of a
  cytoplasm image (Otsu of its log intensity), united with the nuclei,
  split by a watershed seeded by the nuclei, so cell ``i``
  contains nucleus ``i``;
- :func:`match_nuclei`: relabel a nucleus mask so that each cell's nucleus carries the cell's label
  (the nucleus overlapping the cell most, clipped to the cell).

Sizes are in um when the pixel size is known, else in pixels (see the defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

__all__ = ["NUCLEI_METHOD", "CELLS_METHOD", "match_nuclei", "segment_cells", "segment_nuclei"]

NUCLEI_METHOD = ("derived from the DNA image: Gaussian smoothing (sigma {sigma}), Otsu threshold, holes "
                 "filled, touching nuclei split by a distance-transform watershed (seeds >= {dist} apart), "
                 "objects under {min_size} dropped")
CELLS_METHOD = ("derived: watershed of the {source} image (smoothed, sigma {sigma}) over its Otsu foreground (Otsu of the log "
                "intensity for a cytoplasm image) united with the nuclei, seeded by the nuclei (cell i contains nucleus i)")


def _spacing(pixel_size_um, ndim: int) -> tuple[float, ...] | None:
    if pixel_size_um is None:
        return None
    p = np.atleast_1d(np.asarray(pixel_size_um, dtype=float))
    return tuple(float(v) for v in (np.repeat(p, ndim) if p.size == 1 else p))


def _sigma_px(sigma_um: float, sigma_px: float, spacing) -> tuple[float, ...] | float:
    return sigma_px if spacing is None else tuple(sigma_um / s for s in spacing)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    out = ndi.binary_fill_holes(mask)
    if mask.ndim == 3:  # holes open at the top/bottom of a stack: fill slice by slice too
        out |= np.stack([ndi.binary_fill_holes(s) for s in mask])
    return out


def _otsu(img: np.ndarray) -> np.ndarray:
    if float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, dtype=bool)
    return img > threshold_otsu(img)


def _otsu_log(img: np.ndarray) -> np.ndarray:
    """Otsu threshold of the log intensity: a cytoplasmic stain spans orders of magnitude (dim
    cytoplasm beside a bright nucleus when a reporter translocates), and Otsu on the linear scale
    then keeps little more than the bright part. The offset (0.5 % of the 99.5th percentile above
    the minimum) makes it independent of the image's units."""
    s = img - float(img.min())
    top = float(np.percentile(s, 99.5))
    if top <= 0:
        return np.zeros(img.shape, dtype=bool)
    return _otsu(np.log(s + 0.005 * top))


def segment_nuclei(dna: np.ndarray, pixel_size_um: Sequence[float] | float | None = None, *,
                   sigma_um: float = 0.5, sigma_px: float = 1.0, min_distance_um: float = 3.0,
                   min_distance_px: int = 5, min_size_um: float = 8.0, min_size_px: int = 20,
                   ) -> np.ndarray:
    """Instance labels (int32) of the nuclei of a DNA image ``(Y, X)`` or ``(Z, Y, X)``.

    Parameters
    ----------
    dna : numpy.ndarray
        The DNA (e.g. Hoechst) image.
    pixel_size_um : float or sequence, optional
        Pixel size per axis; when given the ``*_um`` settings apply (sizes in um^2 in 2D, um^3 in
        3D), else the ``*_px`` ones.
    sigma_um, sigma_px : float
        Gaussian smoothing.
    min_distance_um, min_distance_px : float
        Closest two seeds (distance-transform maxima) of the splitting watershed may be.
    min_size_um, min_size_px : float
        Smaller objects are dropped (area in 2D, volume in 3D).
    """
    img = np.asarray(dna, dtype=np.float32)
    spacing = _spacing(pixel_size_um, img.ndim)
    smooth = ndi.gaussian_filter(img, _sigma_px(sigma_um, sigma_px, spacing))
    fg = _fill_holes(_otsu(smooth))
    if spacing is None:
        min_size, min_dist = int(min_size_px), int(min_distance_px)
    else:
        min_size = max(1, int(round(min_size_um / float(np.prod(spacing)))))
        min_dist = max(1, int(round(min_distance_um / min(spacing[-2:]))))
    fg = _drop_small(ndi.label(fg)[0], min_size) > 0
    if not fg.any():
        return np.zeros(img.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(fg, sampling=spacing)
    dist = ndi.gaussian_filter(dist, 1.0)  # one maximum per blob, not one per pixel of a plateau
    comp, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_dist, labels=comp, exclude_border=False)
    markers = np.zeros(img.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (flat, tiny) still get one seed
    missing = np.setdiff1d(np.unique(comp[comp > 0]), np.unique(comp[markers > 0]))
    for i, lab in enumerate(missing, start=len(peaks) + 1):
        where = np.argwhere(comp == lab)
        markers[tuple(where[len(where) // 2])] = i
    labels = watershed(-dist, markers, mask=fg)
    labels = _drop_small(labels, min_size)
    return _relabel(labels)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with the objects of fewer than ``min_size`` pixels set to 0."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = True
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _relabel(labels: np.ndarray) -> np.ndarray:
    vals = np.unique(labels)
    vals = vals[vals > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[vals] = np.arange(1, len(vals) + 1)
    return lut[labels]


def segment_cells(image: np.ndarray, nuclei: np.ndarray, pixel_size_um=None, *, membrane: bool = False,
                  sigma_um: float = 1.0, sigma_px: float = 2.0) -> np.ndarray:
    """Cell labels (int32) from a membrane or cytoplasm image, seeded by ``nuclei``.

    Parameters
    ----------
    image : numpy.ndarray
        Membrane image (``membrane=True``: boundaries are bright ridges) or a cytoplasmic /
        whole-cell image (the target channel: boundaries are the dark valleys between cells).
    nuclei : numpy.ndarray
        Nucleus labels of the same shape; cell ``i`` grows from nucleus ``i``.
    pixel_size_um : optional
        Pixel size per axis (smoothing in um), else ``sigma_px``.
    membrane : bool
        Whether ``image`` shows membranes (the elevation is the image) or cytoplasm (its negative).
    """
    img = np.asarray(image, dtype=np.float32)
    nuclei = np.asarray(nuclei)
    if img.shape != nuclei.shape:
        raise ValueError(f"image {img.shape} and nuclei {nuclei.shape} must have the same shape")
    spacing = _spacing(pixel_size_um, img.ndim)
    smooth = ndi.gaussian_filter(img, _sigma_px(sigma_um, sigma_px, spacing))
    fg = _otsu_log(smooth) if not membrane else _fill_holes(_otsu(smooth))
    fg = _fill_holes(fg | (nuclei > 0))
    elevation = smooth if membrane else -smooth
    cells = watershed(elevation, markers=nuclei.astype(np.int32), mask=fg)
    return cells.astype(np.int32)


def match_nuclei(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Nucleus labels renumbered to the cells': for each cell, the nucleus overlapping it most,
    clipped to the cell (cells without an overlapping nucleus get none)."""
    cells = np.asarray(cells)
    nuclei = np.asarray(nuclei)
    if cells.shape != nuclei.shape:
        raise ValueError(f"cells {cells.shape} and nuclei {nuclei.shape} must have the same shape")
    out = np.zeros(cells.shape, dtype=np.int32)
    both = (cells > 0) & (nuclei > 0)
    if not both.any():
        return out
    c, n = cells[both].astype(np.int64), nuclei[both].astype(np.int64)
    pairs, counts = np.unique(np.stack([c, n]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (ci, ni), k in zip(pairs.T, counts):
        if k > best.get(int(ci), (0, 0))[1]:
            best[int(ci)] = (int(ni), int(k))
    lut_c = np.zeros(int(cells.max()) + 1, dtype=np.int64)
    for ci, (ni, _) in best.items():
        lut_c[ci] = ni
    # a pixel keeps its cell's label where its nucleus is that cell's chosen nucleus
    chosen = lut_c[cells.astype(np.int64)]
    keep = both & (chosen == nuclei) & (chosen > 0)
    out[keep] = cells[keep]
    return out
