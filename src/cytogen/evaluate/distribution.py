"""Microscopy-native realism distances: patch statistics, Frechet distances with field bootstrap intervals.

No ImageNet network is involved. Two distributions are compared:

- per-object features of segmented nuclei (:func:`cytogen.evaluate.realism.object_features`:
  intensity, contrast, texture, size, shape), one matrix of rows per field;
- per-patch statistics (:func:`patch_statistics`), one matrix of rows per field.

Each is compared by the Frechet distance between Gaussians fitted to the real and the generated
rows, features standardised by the real rows' mean and SD
(:func:`cytogen.evaluate.realism.frechet_distance`, the FID recipe on hand-made features; lower is
better, 0 = same mean and covariance).

Intervals (:func:`bootstrap_frechet`) resample FIELDS, never objects or patches: the objects of one
field share its staining, focus and density, so they are not independent draws. When the two sides
are paired (prediction ``i`` is the prediction of real field ``i``) the same resampled fields are
taken on both sides (a paired bootstrap), otherwise each side is resampled on its own.

The real-vs-real baseline (:func:`real_halves`) is the distance between two halves of the real
fields split at random by field (median and 2.5-97.5 percentiles over splits). Each half holds half
the fields, and the plug-in Frechet distance is biased upwards the fewer rows it has, so the baseline
is larger than the distance two full-size real sets would have: a conservative (lenient) reference.
A generated set at or below it is as close to the real one as real data are to themselves at this
sample size; a distance well above it is a real difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from cytogen.errors import CytogenError
from cytogen.evaluate.realism import _standardise, frechet_distance

__all__ = ["PATCH_FEATURES", "PATCH_DESCRIPTIONS", "bootstrap_frechet", "patch_statistics", "real_halves",
           "standardised_frechet"]

#: Per-patch statistics, each measured on the image scaled to its own 1st-99.8th percentiles.
PATCH_DESCRIPTIONS = {
    "mean": "mean intensity (brightness, how much of the patch is nuclei)",
    "sd": "intensity standard deviation (contrast)",
    "skewness": "intensity skewness (few bright objects on a dark background -> positive)",
    "kurtosis": "intensity excess kurtosis (heavy tails: saturated spots, speckle)",
    "gradient": "mean gradient magnitude, Sobel (edge sharpness: falls with blur, rises with noise)",
    "log1": "mean |Laplacian of Gaussian| at sigma 1 px (fine texture and pixel noise)",
    "log2": "mean |Laplacian of Gaussian| at sigma 2 px (chromatin-scale texture, nucleus edges)",
    "power_above_16": "fraction of the patch's non-DC power above 1/16 cycles/px (detail finer than 16 px)",
    "power_above_4": "fraction of the patch's non-DC power above 1/4 cycles/px (finer than 4 px: noise, focus)",
    "foreground": "fraction of the patch above the image's Otsu threshold (nucleus density)",
}
PATCH_FEATURES = tuple(PATCH_DESCRIPTIONS)
#: Radial frequency cut-offs of ``power_above_16`` / ``power_above_4`` in cycles per pixel. Fractions
#: ABOVE a cut-off (not of bands between two) fall monotonically with any blur, so a stronger blur is
#: never closer; band fractions are not (a mild blur moves noise power into a middle band, a strong one
#: out of it again).
BANDS = (1 / 16, 1 / 4)
PERCENTILES = (1.0, 99.8)


def _scaled(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, PERCENTILES)
    return ((image - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float64)


def _positions(shape: tuple[int, int], patch: int, n: int | None, seed: int) -> list[tuple[int, int]]:
    ny, nx = shape[0] - patch + 1, shape[1] - patch + 1
    if n is None:
        return [(y, x) for y in range(0, ny, patch) for x in range(0, nx, patch)]
    rng = np.random.default_rng(seed)
    return list(zip(rng.integers(0, ny, n).tolist(), rng.integers(0, nx, n).tolist()))


def _band_masks(patch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.fft.fftfreq(patch)
    r = np.hypot(f[:, None], f[None, :])
    return r > 0, r > BANDS[0], r > BANDS[1]


def patch_statistics(image: np.ndarray, patch: int = 32, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows of :data:`PATCH_FEATURES`, one per patch of a 2D image.

    Parameters
    ----------
    image
        ``(Y, X)`` or ``(1, Y, X)``; scaled to its own 1st-99.8th percentiles before measuring, so
        that real and generated images compare in the same units whatever their gain.
    patch
        Patch side in pixels.
    n
        ``None`` (default): the non-overlapping grid of patches; a number: that many patches at
        random positions (``seed``).

    Returns
    -------
    numpy.ndarray
        ``(n_patches, len(PATCH_FEATURES))``. Filters (gradient, LoG) and the Otsu threshold are
        computed on the whole image, then averaged per patch (no patch-edge effects); the power
        spectrum is that of the patch after a Hann window.
    """
    img = np.asarray(image, np.float64)
    img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
    if img.ndim != 2:
        raise CytogenError(f"patch statistics need a 2D image (Y, X), got shape {img.shape}")
    if not np.isfinite(img).all():
        raise CytogenError("patch statistics: the image has NaN or infinite pixels")
    if patch < 8 or min(img.shape) < patch:
        raise CytogenError(f"patch statistics: patch {patch} px must be >= 8 and fit the image {img.shape}")
    x = _scaled(img)
    grad = np.hypot(ndi.sobel(x, 0), ndi.sobel(x, 1)) / 8.0
    log1, log2 = np.abs(ndi.gaussian_laplace(x, 1.0)), np.abs(ndi.gaussian_laplace(x, 2.0))
    fg = x > threshold_otsu(x) if x.max() > x.min() else np.zeros(x.shape, bool)
    nondc, above16, above4 = _band_masks(patch)
    hann = np.outer(np.hanning(patch), np.hanning(patch))
    rows = []
    for y0, x0 in _positions(img.shape, patch, n, seed):
        sl = (slice(y0, y0 + patch), slice(x0, x0 + patch))
        v = x[sl]
        m, s = v.mean(), v.std()
        z = (v - m) / s if s > 0 else np.zeros_like(v)
        p = np.abs(np.fft.fft2((v - m) * hann)) ** 2
        total = p[nondc].sum()
        rows.append([m, s, (z ** 3).mean(), (z ** 4).mean() - 3.0 if s > 0 else 0.0, grad[sl].mean(),
                     log1[sl].mean(), log2[sl].mean(), p[above16].sum() / total if total > 0 else 0.0,
                     p[above4].sum() / total if total > 0 else 0.0, fg[sl].mean()])
    return np.asarray(rows, np.float64)


def standardised_frechet(real: np.ndarray, other: np.ndarray) -> float:
    """Frechet distance with both sets standardised by the real rows' mean and SD (lower is better)."""
    zr, zo = _standardise(np.asarray(real, np.float64), np.asarray(other, np.float64))
    return frechet_distance(zr, zo)


def _stack(per_image: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    return np.concatenate([per_image[i] for i in idx]) if len(idx) else np.zeros((0, 0))


def _check(per_image: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    mats = [np.asarray(m, np.float64).reshape(len(m), -1) if len(m) else np.zeros((0, 0)) for m in per_image]
    if not mats:
        raise CytogenError(f"{what}: no fields")
    return mats


def bootstrap_frechet(real_per_image: Sequence[np.ndarray], fake_per_image: Sequence[np.ndarray], *,
                      n_boot: int = 200, seed: int = 0, paired: bool | None = None,
                      level: float = 0.95) -> dict:
    """Standardised Frechet distance between pooled rows, with a bootstrap interval over FIELDS.

    Parameters
    ----------
    real_per_image, fake_per_image
        One ``(n_rows_i, n_features)`` matrix per field (objects or patches of that field).
    n_boot
        Bootstrap resamples. Each draws fields with replacement (as many as each side has), pools
        their rows and recomputes the distance (standardised by the resampled real rows). Resamples
        with fewer than two rows on a side are skipped and counted.
    paired
        Resample the same field indices on both sides (prediction ``i`` belongs to real field
        ``i``). Default: paired when both sides have the same number of fields.
    level
        Coverage of the percentile interval.

    Returns
    -------
    dict
        ``distance`` (all fields), ``ci_low``/``ci_high`` (percentile interval), ``n_boot`` (used),
        ``n_boot_skipped``, ``n_real_fields``, ``n_fake_fields``, ``n_real_rows``, ``n_fake_rows``,
        ``bootstrap`` (what was resampled).
    """
    real, fake = _check(real_per_image, "real"), _check(fake_per_image, "generated")
    paired = len(real) == len(fake) if paired is None else paired
    if paired and len(real) != len(fake):
        raise CytogenError(f"a paired bootstrap needs as many generated as real fields, got {len(fake)} and "
                           f"{len(real)}")
    if n_boot < 1 or not 0 < level < 1:
        raise CytogenError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    a, b = _stack(real, np.arange(len(real))), _stack(fake, np.arange(len(fake)))
    if len(a) < 2 or len(b) < 2:
        raise CytogenError(f"the Frechet distance needs at least two rows on each side, got {len(a)} real and "
                           f"{len(b)} generated (objects or patches)")
    point = standardised_frechet(a, b)
    rng = np.random.default_rng(seed)
    boot, skipped = [], 0
    for _ in range(n_boot):
        ir = rng.integers(0, len(real), len(real))
        ifk = ir if paired else rng.integers(0, len(fake), len(fake))
        ra, fb = _stack(real, ir), _stack(fake, ifk)
        if len(ra) < 2 or len(fb) < 2:
            skipped += 1
            continue
        boot.append(standardised_frechet(ra, fb))
    q = (1 - level) / 2
    lo, hi = (np.quantile(boot, [q, 1 - q]) if boot else (np.nan, np.nan))
    return {"distance": point, "ci_low": float(lo), "ci_high": float(hi), "level": level, "n_boot": len(boot),
            "n_boot_skipped": skipped, "n_real_fields": len(real), "n_fake_fields": len(fake),
            "n_real_rows": len(a), "n_fake_rows": len(b),
            "bootstrap": ("paired percentile bootstrap over fields (the same resampled fields on both sides)"
                          if paired else "percentile bootstrap over fields, each side resampled on its own")}


def real_halves(real_per_image: Sequence[np.ndarray], *, n_splits: int = 50, seed: int = 0,
                distance=standardised_frechet, min_fields: int = 4) -> dict:
    """Real-vs-real baseline: ``distance`` between two random halves of the real fields.

    Each split permutes the fields and compares the first half (the reference, used for the
    standardisation) with the second; median and 2.5-97.5 percentiles over the splits. Halves hold
    half the fields, so the baseline is larger than two full-size real sets would give: a
    conservative reference (see the module docstring).

    Returns
    -------
    dict
        ``median, ci_low, ci_high, n_splits, n_fields, fields_per_half``, ``meaning``; or, with fewer
        than ``min_fields`` fields, ``median = None`` and a ``note`` saying why (no failure).
    """
    mats = _check(real_per_image, "real")
    meaning = ("distance between two random halves of the real fields (split by field); halves hold half the "
               "fields, so this is a conservative (lenient) reference")
    if len(mats) < min_fields:
        return {"median": None, "ci_low": None, "ci_high": None, "n_splits": 0, "n_fields": len(mats),
                "meaning": meaning, "note": f"{len(mats)} real field(s): the real-vs-real baseline needs at least "
                                            f"{min_fields}; give more fields"}
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_splits):
        order = rng.permutation(len(mats))
        half = len(order) // 2
        a, b = _stack(mats, order[:half]), _stack(mats, order[half:2 * half])
        if len(a) >= 2 and len(b) >= 2:
            d.append(float(distance(a, b)))
    if not d:
        return {"median": None, "ci_low": None, "ci_high": None, "n_splits": 0, "n_fields": len(mats),
                "meaning": meaning, "note": "too few rows per field for the real-vs-real baseline"}
    lo, hi = np.quantile(d, [0.025, 0.975])
    return {"median": float(np.median(d)), "ci_low": float(lo), "ci_high": float(hi), "n_splits": len(d),
            "n_fields": len(mats), "fields_per_half": len(mats) // 2, "meaning": meaning}
