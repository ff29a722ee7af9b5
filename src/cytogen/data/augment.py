"""Geometric augmentation by flips and 90-degree rotations.

Rotations act in the YX plane; flips may act on every spatial axis (Z included in 3D). The
same transform is applied to source, target and mask so pairs stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dihedral:
    """A flip/rot90 transform of the spatial axes of a ``(C, [Z,] Y, X)`` array.

    Attributes
    ----------
    k
        Number of 90-degree rotations in the YX plane (0-3).
    flips
        Spatial axes (0-based, counting from the first spatial axis) flipped after rotating.
    """

    k: int = 0
    flips: tuple[int, ...] = ()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform ``x`` (channels first)."""
        y = np.rot90(x, self.k, axes=(-2, -1))
        for ax in self.flips:
            y = np.flip(y, axis=1 + ax)
        return np.ascontiguousarray(y)


def random_dihedral(rng: np.random.Generator, n_spatial: int, *, square: bool = True) -> Dihedral:
    """Draw a random transform; odd rotations only when the YX plane is square."""
    k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
    flips = tuple(ax for ax in range(n_spatial) if rng.random() < 0.5)
    return Dihedral(k, flips)
