"""Nucleus markers: blob detection on a nucleus image and marker false negatives / positives.

The unsupervised marker-controlled CNN cell segmentation (Scientific Reports) locates one
marker per nucleus with a blob detector based on the difference of Gaussians (the default here)
on real and synthetic nucleus images, pairs a synthetic marker with a true one when the two lie
within 15 um, and reports the false-negative rate (missed true markers / true markers) and the
false-positive rate (unpaired synthetic markers / synthetic markers).
"""

from __future__ import annotations

import numpy as np
from skimage.feature import blob_dog, blob_log

from cytogen.errors import CytogenError
from cytogen.evaluate.matching import match_centroids
from cytogen.evaluate.objects import check_image, check_pixel_size

METHODS = ("dog", "log")


def _scale01(img: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> np.ndarray | None:
    p_lo, p_hi = np.percentile(img, [lo, hi])
    if p_hi <= p_lo:
        p_lo, p_hi = float(img.min()), float(img.max())
        if p_hi <= p_lo:
            return None
    return np.clip((img - p_lo) / (p_hi - p_lo), 0.0, 1.0)


def detect_markers(image: np.ndarray, *, pixel_size_um: tuple[float, ...] | None = None,
                   nucleus_diameter_um: float | None = None, nucleus_diameter_px: float = 10.0,
                   threshold_rel: float = 0.1, method: str = "dog", return_sigma: bool = False,
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Centres of nucleus-sized bright blobs.

    Parameters
    ----------
    image : numpy.ndarray
        Nucleus image (real or predicted), ``(Y, X)`` or ``(Z, Y, X)``.
    pixel_size_um : tuple of float, optional
        Pixel size in um per axis; needed to use ``nucleus_diameter_um``.
    nucleus_diameter_um : float, optional
        Typical nucleus diameter in um (used when the pixel size is known; anisotropic voxels
        give per-axis sigmas).
    nucleus_diameter_px : float
        Typical nucleus diameter in pixels otherwise.
    threshold_rel : float
        Minimum blob response relative to the strongest one, in (0, 1).
    method : {"dog", "log"}
        :func:`skimage.feature.blob_dog` (difference of Gaussians, the study's detector; default)
        or :func:`skimage.feature.blob_log` (Laplacian of Gaussian).
    return_sigma : bool
        Also return each blob's scale (the detector's sigma in pixels, per axis).

    Returns
    -------
    numpy.ndarray or tuple of numpy.ndarray
        ``(N, d)`` float blob centres in pixel coordinates (image axis order); ``(0, d)`` for a
        constant image. With ``return_sigma``: ``(centres, sigmas)``, ``sigmas`` ``(N, d)``
        float (a blob of sigma s has radius about s * sqrt(d)).

    Notes
    -----
    The image is scaled so that its 1st / 99.8th percentiles map to 0 / 1 (clipped). The blob
    scale is searched over sigma = d / (2 sqrt 2) +- 50 %, d being the diameter in pixels (a
    blob of sigma s has radius about s * sqrt(2)), per axis, with sigmas below 1 pixel raised
    to 1: scale-space responses at sub-pixel scales are dominated by pixel noise (this matters
    along a coarse z axis). ``threshold_rel`` is relative to the strongest response, so an image
    without nuclei still yields its brightest noise blobs.
    """
    img = check_image(image)
    ps = check_pixel_size(pixel_size_um, img.ndim)
    if method not in METHODS:
        raise CytogenError(f"unknown marker method {method!r}; use 'dog' (default) or 'log'.")
    if not 0 < threshold_rel < 1:
        raise CytogenError(f"threshold_rel must lie in (0, 1), got {threshold_rel!r}.")
    if nucleus_diameter_um is not None and ps is not None:
        if not nucleus_diameter_um > 0:
            raise CytogenError(f"nucleus_diameter_um must be > 0, got {nucleus_diameter_um!r}.")
        diameter = float(nucleus_diameter_um) / np.asarray(ps)
    else:
        if not nucleus_diameter_px > 0:
            raise CytogenError(f"nucleus_diameter_px must be > 0, got {nucleus_diameter_px!r}.")
        diameter = np.full(img.ndim, float(nucleus_diameter_px))
    sigma = diameter / (2.0 * np.sqrt(2.0))
    lo = np.maximum(0.5 * sigma, 1.0)  # sub-pixel scales only pick up pixel noise
    hi = np.maximum(1.5 * sigma, lo)
    if np.allclose(diameter, diameter[0]):
        lo, hi = float(lo[0]), float(hi[0])
    else:
        lo, hi = tuple(lo), tuple(hi)
    scaled = _scale01(img)
    if scaled is None:
        empty = np.zeros((0, img.ndim))
        return (empty, empty.copy()) if return_sigma else empty
    if method == "log":
        blobs = blob_log(scaled, min_sigma=lo, max_sigma=hi, num_sigma=5, threshold=None,
                         threshold_rel=threshold_rel, exclude_border=False)
    else:
        blobs = blob_dog(scaled, min_sigma=lo, max_sigma=hi, sigma_ratio=1.6, threshold=None,
                         threshold_rel=threshold_rel, exclude_border=False)
    blobs = np.asarray(blobs, dtype=np.float64)
    if blobs.ndim != 2 or blobs.shape[1] <= img.ndim:
        blobs = blobs.reshape(0, img.ndim + 1)
    centres = blobs[:, : img.ndim].reshape(-1, img.ndim)
    if not return_sigma:
        return centres
    # one sigma column for an isotropic search, one per axis otherwise
    sigmas = np.broadcast_to(blobs[:, img.ndim:], (len(blobs), img.ndim)).copy()
    return centres, sigmas


def _check_points(pts: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(pts, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise CytogenError(f"{name} has shape {arr.shape}; give an (N, d) array of point coordinates.")
    if not np.all(np.isfinite(arr)):
        raise CytogenError(f"{name} contains NaN or Inf coordinates.")
    return arr


def marker_errors(true_pts_um: np.ndarray, pred_pts_um: np.ndarray, max_distance: float = 15.0) -> dict:
    """False negatives / positives of predicted markers against true ones (15 um pairing).

    Parameters
    ----------
    true_pts_um, pred_pts_um : numpy.ndarray
        ``(N, d)`` and ``(M, d)`` marker positions in um (multiply pixel coordinates by the pixel
        size first; pass pixel coordinates and a pixel ``max_distance`` when it is unknown).
    max_distance : float
        Largest distance (inclusive, same unit as the points) at which two markers pair.

    Returns
    -------
    dict
        ``n_true, n_pred, tp, fn, fp, fn_rate (fn / n_true), fp_rate (fp / n_pred),
        max_distance, mean_distance`` (over matched pairs). Pairs are one-to-one, found by
        :func:`cytogen.evaluate.matching.match_centroids` (optimal assignment minimising the
        matched distances plus ``max_distance`` per unmatched marker). A rate with a zero
        denominator is 0.0 (nothing to miss / nothing spurious); mean_distance is NaN without
        matches.
    """
    t = _check_points(true_pts_um, "true_pts_um")
    p = _check_points(pred_pts_um, "pred_pts_um")
    if t.shape[1] and p.shape[1] and t.shape[1] != p.shape[1]:
        raise CytogenError(f"true markers have {t.shape[1]} coordinates, predicted {p.shape[1]}; "
                           "give both in the same dimensionality.")
    if not (np.isfinite(max_distance) and max_distance > 0):
        raise CytogenError(f"max_distance must be a positive number, got {max_distance!r}.")
    d = max(t.shape[1], p.shape[1])
    t = t.reshape(0, d) if len(t) == 0 else t
    p = p.reshape(0, d) if len(p) == 0 else p
    dist = match_centroids(t, p, float(max_distance)).distance
    n_t, n_p, tp = len(t), len(p), int(len(dist))
    fn, fp = n_t - tp, n_p - tp
    return {"n_true": n_t, "n_pred": n_p, "tp": tp, "fn": fn, "fp": fp,
            "fn_rate": fn / n_t if n_t else 0.0, "fp_rate": fp / n_p if n_p else 0.0,
            "max_distance": float(max_distance),
            "mean_distance": float(dist.mean()) if tp else float("nan")}
