"""Intensity normalisation whose parameters travel with the trained model.

``percentile`` (default) maps the ``low``/``high`` percentiles of each channel to 0 and 1, as
CSBDeep/CARE do; ``zscore`` subtracts the mean and divides by the standard deviation, as
pytorch_fnet does; ``none`` leaves values as they are.

``scope="field"`` computes the statistics of every image when it is normalised (robust to
brightness changes between fields); ``scope="dataset"`` uses statistics fitted once on the
training fields. Either way, :meth:`Normalizer.fit` stores dataset statistics, which
:meth:`Normalizer.denormalize` uses to bring predictions back to intensity units.

For images too large to load (streamed prediction), :meth:`Normalizer.stats_for_lazy` computes
field statistics from a bounded subsample (:func:`spread_sample`: a regular lattice of at most
about 4 million pixels per channel, read strip by strip), so the percentiles of a streamed
image are estimates from that subsample rather than exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cytogen.errors import CytogenError

_EPS = 1e-6
#: Pixels per channel that :meth:`Normalizer.stats_for_lazy` samples by default.
LAZY_SAMPLE_PIXELS = 4_000_000


def _channel_stats(x: np.ndarray, method: str, percentiles: tuple[float, float],
                   max_samples: int = 2_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (offset, scale) of an array ``(C, ...)``."""
    c = x.shape[0]
    flat = x.reshape(c, -1)
    if flat.shape[1] > max_samples:
        idx = np.random.default_rng(seed).choice(flat.shape[1], max_samples, replace=False)
        flat = flat[:, idx]
    flat = flat.astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise CytogenError("image contains NaN or Inf pixels; clean or mask them before training "
                           "or prediction")
    if method == "percentile":
        lo, hi = np.percentile(flat, percentiles, axis=1)
        offset, scale = lo, hi - lo
    elif method == "zscore":
        offset, scale = flat.mean(axis=1), flat.std(axis=1)
    elif method == "none":
        offset, scale = np.zeros(c), np.ones(c)
    else:
        raise CytogenError(f"unknown normalisation {method!r}; use percentile, zscore or none")
    # A constant channel has no spread: keep the offset, use unit scale instead of dividing by 0.
    scale = np.where(scale > _EPS * np.maximum(1.0, np.abs(offset)), scale, 1.0)
    return offset, scale


def spread_sample(x: Any, max_pixels: int = 4_000_000, read_pixels: int = 1 << 20) -> np.ndarray:
    """Pixel values from a regular lattice spread over a (possibly lazy) ``(C, ...)`` image.

    Strides are raised one axis at a time (always the axis with the most samples left) until
    at most ``max_pixels`` pixels per channel remain; the lattice is read along the first
    spatial axis in blocks of about ``read_pixels`` pixels per channel, so only strided slices
    of the image are ever in memory.

    Parameters
    ----------
    x : array-like
        ``(C, *spatial)`` numpy, memmap, zarr or :class:`~cytogen.io.lazy.AxesView` array
        supporting strided basic slicing.
    max_pixels : int
        Upper bound on the pixels sampled per channel.
    read_pixels : int
        Pixels per channel read at a time.

    Returns
    -------
    numpy.ndarray
        ``(C, n)`` sample in the image's dtype, ``n <= max_pixels``.
    """
    shape = tuple(int(s) for s in x.shape[1:])
    strides = [1] * len(shape)
    counts = list(shape)
    while math.prod(counts) > max_pixels:
        a = int(np.argmax(counts))
        strides[a] += 1
        counts[a] = math.ceil((shape[a] - strides[a] // 2) / strides[a])
    rest = tuple(slice(s // 2, None, s) for s in strides[1:])
    rows = range(strides[0] // 2, shape[0], strides[0])
    per_read = max(1, read_pixels // max(1, math.prod(counts[1:])))
    parts = []
    for i in range(0, len(rows), per_read):
        sel = rows[i:i + per_read]
        block = np.asarray(x[(slice(None), slice(sel.start, sel.stop, sel.step), *rest)])
        parts.append(block.reshape(block.shape[0], -1))
    return np.concatenate(parts, axis=1)


@dataclass
class Normalizer:
    """Per-channel affine normalisation ``(x - offset) / scale``.

    Parameters
    ----------
    method
        ``percentile``, ``zscore`` or ``none``.
    percentiles
        ``(low, high)`` for ``percentile``.
    scope
        ``field`` or ``dataset`` (see module docstring).
    offset, scale
        Fitted dataset statistics, one per channel (set by :meth:`fit`).
    """

    method: str = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    scope: str = "field"
    offset: list[float] | None = field(default=None)
    scale: list[float] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "zscore", "none"):
            raise CytogenError(f"unknown normalisation {self.method!r}; use percentile, zscore or none")
        if self.scope not in ("field", "dataset"):
            raise CytogenError(f"unknown normalisation scope {self.scope!r}; use field or dataset")
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))

    @property
    def n_channels(self) -> int | None:
        """Number of channels fitted, or None before :meth:`fit`."""
        return None if self.offset is None else len(self.offset)

    def fit(self, images: list[np.ndarray]) -> "Normalizer":
        """Fit dataset statistics on a list of ``(C, ...)`` arrays (pooled, subsampled)."""
        if not images:
            raise CytogenError("no images to fit the normalisation on")
        c = images[0].shape[0]
        per = max(1, 2_000_000 // len(images))
        samples = []
        rng = np.random.default_rng(0)
        for img in images:
            if img.shape[0] != c:
                raise CytogenError(f"channel counts differ between fields ({img.shape[0]} vs {c})")
            flat = img.reshape(c, -1)
            if flat.shape[1] > per:
                flat = flat[:, rng.choice(flat.shape[1], per, replace=False)]
            samples.append(flat)
        offset, scale = _channel_stats(np.concatenate(samples, axis=1), self.method, self.percentiles)
        self.offset, self.scale = offset.tolist(), scale.tolist()
        return self

    def stats_for(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) that :meth:`normalize` would use for ``x``."""
        if self.scope == "field" or self.offset is None:
            return _channel_stats(x, self.method, self.percentiles)
        if len(self.offset) != x.shape[0]:
            raise CytogenError(
                f"image has {x.shape[0]} channel(s) but the normalisation was fitted on "
                f"{len(self.offset)}; give the same channels as in training"
            )
        return np.asarray(self.offset), np.asarray(self.scale)

    def stats_for_lazy(self, x: Any, max_pixels: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) for an image that is not loaded (zarr, memmap, lazy view).

        With ``scope="field"`` (or before :meth:`fit`) the statistics come from
        :func:`spread_sample` (at most ``max_pixels`` pixels per channel, default
        :data:`LAZY_SAMPLE_PIXELS`), so for large images the percentiles are estimates close
        to, not equal to, those of :meth:`stats_for` on the loaded image. With fitted dataset
        statistics the result is exactly that of :meth:`stats_for`.
        """
        if self.scope == "field" or self.offset is None:
            sample = spread_sample(x, max_pixels or LAZY_SAMPLE_PIXELS)
            return _channel_stats(sample, self.method, self.percentiles)
        return self.stats_for(x)

    def normalize(self, x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> np.ndarray:
        """Normalise ``x`` of shape ``(C, ...)``; returns float32."""
        offset, scale = stats if stats is not None else self.stats_for(x)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return ((x.astype(np.float64) - offset.reshape(shape)) / scale.reshape(shape)).astype(np.float32)

    def denormalize(self, y: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> np.ndarray:
        """Invert :meth:`normalize`; without ``stats`` the fitted dataset statistics are used."""
        if stats is None:
            if self.offset is None:
                raise CytogenError("normaliser is not fitted; call fit() first")
            stats = (np.asarray(self.offset), np.asarray(self.scale))
        offset, scale = stats
        if len(offset) != y.shape[0]:
            raise CytogenError(f"got {y.shape[0]} channel(s), normaliser has {len(offset)}")
        shape = (-1,) + (1,) * (y.ndim - 1)
        return (y.astype(np.float64) * scale.reshape(shape) + offset.reshape(shape)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters."""
        return {"method": self.method, "percentiles": list(self.percentiles), "scope": self.scope,
                "offset": self.offset, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalizer":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(method=d["method"], percentiles=tuple(d["percentiles"]), scope=d["scope"],
                       offset=d.get("offset"), scale=d.get("scale"))
        except (KeyError, TypeError) as exc:
            raise CytogenError(f"normalisation parameters are incomplete ({exc}); re-export the model") from exc
