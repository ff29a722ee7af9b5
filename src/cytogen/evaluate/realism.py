"""Are synthetic nuclei like real ones? Per-object features, two-sample tests, a Frechet distance.

Each object of a label image is measured on its image, after the image is scaled to its own 1st
and 99.8th percentiles (so that real and generated images compare in the same units):

- intensity: mean, standard deviation, median inside the object, and the contrast to a 3 px ring
  of background around it (mean inside - mean of the ring);
- texture: mean 3 x 3 local standard deviation inside, and mean |Laplacian of Gaussian|
  (sigma 1 px) inside;
- shape (from the masks): area, eccentricity, solidity (in pixels: masks -> image generators
  keep the shapes they are given, so these mainly check the layouts).

:func:`compare_features` gives, per feature, the Kolmogorov-Smirnov statistic and p-value
(two-sided, objects as independent draws: with hundreds of objects small differences are
significant, so read the statistic as the effect size) and the medians; and the Frechet distance
between Gaussians fitted to the features standardised by the real objects' mean and SD (the FID
recipe on hand-made features). Its null reference is the distance between two halves of the
real objects split by image (:func:`real_halves_frechet`): synthetic data are as real as they
get when their distance is near that.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, stats
from scipy import ndimage as ndi
from skimage.measure import regionprops

from cytogen.errors import CytogenError

__all__ = ["FEATURES", "compare_features", "frechet_distance", "object_features", "real_halves_frechet"]

FEATURES = ("intensity_mean", "intensity_sd", "intensity_median", "contrast", "texture_local_sd",
            "texture_log", "area_px", "eccentricity", "solidity")


def _scaled(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1.0, 99.8])
    return ((image - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def object_features(image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-object :data:`FEATURES` of a 2D image ``(Y, X)`` (or ``(1, Y, X)``) and its label image."""
    img = np.asarray(image, np.float32)
    lab = np.asarray(labels)
    img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
    lab = lab[0] if lab.ndim == 3 and lab.shape[0] == 1 else lab
    if img.ndim != 2 or img.shape != lab.shape:
        raise CytogenError(f"realism features need a 2D image and labels of one shape, got {img.shape} and {lab.shape}")
    x = _scaled(img)
    mean = ndi.uniform_filter(x, 3)
    local_sd = np.sqrt(np.clip(ndi.uniform_filter(x * x, 3) - mean * mean, 0, None))
    log = np.abs(ndi.gaussian_laplace(x, 1.0))
    fg = lab > 0
    out: dict[str, list[float]] = {k: [] for k in FEATURES}
    for r in regionprops(lab.astype(np.int32)):
        sl = tuple(slice(max(0, s.start - 4), s.stop + 4) for s in r.slice)
        m = lab[sl] == r.label
        ring = ndi.binary_dilation(m, iterations=3) & ~fg[sl]
        v = x[sl][m]
        out["intensity_mean"].append(float(v.mean()))
        out["intensity_sd"].append(float(v.std()))
        out["intensity_median"].append(float(np.median(v)))
        out["contrast"].append(float(v.mean() - (x[sl][ring].mean() if ring.any() else 0.0)))
        out["texture_local_sd"].append(float(local_sd[sl][m].mean()))
        out["texture_log"].append(float(log[sl][m].mean()))
        out["area_px"].append(float(r.area))
        out["eccentricity"].append(float(r.eccentricity))
        out["solidity"].append(float(r.solidity))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _matrix(feats: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(feats[k], np.float64) for k in FEATURES], axis=1)


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to the rows of ``a`` and of ``b`` (same columns).

    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` with sample covariances (``N - 1``),
    computed as the reference FID code does (Heusel et al. 2017; pytorch-fid): the matrix square
    root by :func:`scipy.linalg.sqrtm`; only where it is not finite (singular covariances: a
    constant feature, or fewer rows than columns as in FID on few images) is ``eps`` added to both
    diagonals and the root taken again; a root whose diagonal has an imaginary part above 1e-3 is
    refused, a smaller one (rounding) is dropped. With fewer rows than columns on a side (FID of
    a few dozen images on 2048 features) ``C_a C_b`` has rank < columns and its root's trace is
    computed exactly instead: the sum of the singular values of ``X_a X_b^T / sqrt((n_a - 1)(n_b - 1))``
    (centred rows; the nonzero eigenvalues of ``C_a C_b`` are their squares), in milliseconds where
    sqrtm of a singular 2048 x 2048 product takes ~10 s and needs the eps offset. The one Frechet
    implementation of cytogen: also used by :func:`cytogen.evaluate.inception.fid_from_features`.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CytogenError(f"the Frechet distance needs two 2D arrays with the same columns, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise CytogenError("the Frechet distance needs at least two objects on each side")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise CytogenError("the Frechet distance got non-finite features (NaN or inf)")
    mu_a, mu_b = a.mean(0), b.mean(0)
    diff = mu_a - mu_b
    if min(len(a), len(b)) <= a.shape[1]:  # rank-deficient product: exact trace of its root
        xa, xb = a - mu_a, b - mu_b
        tr_root = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
        return float(diff @ diff + (xa * xa).sum() / (len(a) - 1) + (xb * xb).sum() / (len(b) - 1) - 2 * tr_root)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    import warnings  # local: this function is the only user

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular: expected with fewer rows than columns
        root = linalg.sqrtm(ca @ cb)
        if not np.isfinite(root).all():
            offset = eps * np.eye(len(ca))
            root = linalg.sqrtm((ca + offset) @ (cb + offset))
    if not np.isfinite(root).all():
        raise CytogenError("the Frechet distance's matrix square root is not finite even with the eps offset")
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise CytogenError(f"the Frechet distance's matrix square root has an imaginary part of "
                               f"{np.abs(root.imag).max():.3g} (ill-conditioned covariances: use more samples)")
        root = root.real
    return float(diff @ diff + np.trace(ca) + np.trace(cb) - 2 * np.trace(root))


def _standardise(real: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = real.mean(0), real.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (real - mu) / sd, (other - mu) / sd


def compare_features(real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray]) -> dict:
    """Per-feature KS tests and medians, and the Frechet distance on standardised features.

    Returns
    -------
    dict
        ``n_real, n_synthetic, features`` (name -> ``ks, p, median_real, median_synthetic``)
        and ``frechet`` (features standardised by the real objects' mean and SD).
    """
    r, s = _matrix(real), _matrix(synthetic)
    if len(r) < 2 or len(s) < 2:
        raise CytogenError(f"need at least two real and two synthetic objects, got {len(r)} and {len(s)}")
    per = {}
    for j, k in enumerate(FEATURES):
        ks = stats.ks_2samp(r[:, j], s[:, j])
        per[k] = {"ks": float(ks.statistic), "p": float(ks.pvalue), "median_real": float(np.median(r[:, j])),
                  "median_synthetic": float(np.median(s[:, j]))}
    zr, zs = _standardise(r, s)
    return {"n_real": len(r), "n_synthetic": len(s), "features": per, "frechet": frechet_distance(zr, zs)}


def real_halves_frechet(per_image: list[dict[str, np.ndarray]], n_splits: int = 20, seed: int = 0) -> dict:
    """Null reference: Frechet distance between two halves of the real images' objects (split by
    image, ``n_splits`` random splits; standardised by the first half); median and range."""
    if len(per_image) < 2:
        raise CytogenError("the real-vs-real reference needs at least two real images")
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_splits):
        order = rng.permutation(len(per_image))
        half = len(order) // 2
        a = np.concatenate([_matrix(per_image[i]) for i in order[:half]])
        b = np.concatenate([_matrix(per_image[i]) for i in order[half:]])
        if len(a) >= 2 and len(b) >= 2:
            za, zb = _standardise(a, b)
            d.append(frechet_distance(za, zb))
    if not d:
        raise CytogenError("too few objects per image for the real-vs-real reference")
    return {"median": float(np.median(d)), "min": float(np.min(d)), "max": float(np.max(d)), "n_splits": len(d)}
