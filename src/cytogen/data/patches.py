"""Random patch positions: uniform or biased towards foreground (e.g. nuclei)."""

from __future__ import annotations

import numpy as np


def foreground_coords(mask: np.ndarray, max_points: int = 20000, seed: int = 0) -> np.ndarray:
    """Flat indices of foreground voxels of a spatial ``mask`` (subsampled)."""
    idx = np.flatnonzero(mask)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return idx


def sample_corner(rng: np.random.Generator, spatial: tuple[int, ...], patch: tuple[int, ...],
                  fg_index: np.ndarray | None = None, fg_bias: float = 0.0) -> tuple[int, ...]:
    """Top-left corner of a patch lying inside ``spatial``.

    With probability ``fg_bias`` (and when ``fg_index`` is non-empty) the patch is centred,
    as far as the borders allow, on a random foreground voxel; otherwise uniformly placed.
    """
    if fg_index is not None and fg_index.size and rng.random() < fg_bias:
        centre = np.unravel_index(int(fg_index[rng.integers(fg_index.size)]), spatial)
        return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, spatial))
    return tuple(int(rng.integers(0, s - p + 1)) for p, s in zip(patch, spatial))


def crop(x: np.ndarray, corner: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """Crop spatial window of ``(C, ...)`` starting at ``corner``."""
    sl = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, patch))
    return x[sl]
