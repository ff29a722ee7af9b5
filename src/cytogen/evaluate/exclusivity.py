"""Exclusivity of several predicted structures (Sun et al., Bioinformatics 2022, section 2.3).

Most pixels of a cell should hold one structure, not several. Given the predictions of ``S >= 2``
structures for one field, stacked as ``(S, [Z,] Y, X)`` on a *common intensity scale*:

- the **exclusivity map** is, at each pixel, the highest predicted value minus the second highest;
- **overall** exclusivity is its mean over all pixels;
- **per-structure** exclusivity of A is its mean over the pixels where A is the highest;
- **pairwise** (directed) exclusivity of A over B is the mean of ``value_A - value_B`` over the
  pixels where A is the highest (so it is not symmetric, and it is >= the per-structure value).

Values are in the units of the stack; the paper's are in 8-bit pixel intensities. Ties (two
structures equal at the top) count for the first structure in the stack order and give 0.

Pooled values over several fields are sums over all their pixels divided by the pixel counts (a
large field weighs more), not means of per-field means; :func:`pool_exclusivity` does that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cytogen.errors import CytogenError


def _check_stack(stack: np.ndarray, names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    stack = np.asarray(stack)
    if stack.ndim < 3:
        raise CytogenError(f"exclusivity needs a (structures, [Z,] Y, X) stack, got shape {stack.shape}")
    if stack.shape[0] < 2:
        raise CytogenError(f"exclusivity needs at least 2 structures, got {stack.shape[0]}; "
                           "give one prediction per structure")
    if not np.issubdtype(stack.dtype, np.number) or np.issubdtype(stack.dtype, np.complexfloating):
        raise CytogenError(f"exclusivity needs real numbers, got dtype {stack.dtype}")
    stack = stack.astype(np.float64, copy=False)
    if not np.isfinite(stack).all():
        raise CytogenError("exclusivity: the predictions hold NaN or infinite values; fix or mask them first")
    names = [str(n) for n in names] if names is not None else [f"s{i}" for i in range(stack.shape[0])]
    if len(names) != stack.shape[0] or len(set(names)) != len(names):
        raise CytogenError(f"exclusivity: {len(names)} names {names} for {stack.shape[0]} structures; "
                           "give one distinct name per structure")
    return stack, names


def exclusivity_map(stack: np.ndarray) -> np.ndarray:
    """Highest minus second-highest value over structures at each pixel.

    Parameters
    ----------
    stack : ndarray, shape (S, [Z,] Y, X)
        Predictions of ``S >= 2`` structures on a common scale.

    Returns
    -------
    ndarray, shape ([Z,] Y, X), float64, >= 0
    """
    stack, _ = _check_stack(stack, None)
    top2 = np.partition(stack, stack.shape[0] - 2, axis=0)[-2:]
    return top2[1] - top2[0]


@dataclass
class _Sums:
    """Sufficient statistics: pooled results are exact sums over fields."""

    n_pixels: int
    map_sum: float
    count: np.ndarray       # (S,) pixels where each structure is highest
    map_by_top: np.ndarray  # (S,) sum of the exclusivity map where each structure is highest
    pair_sum: np.ndarray    # (S, S) sum of value_A - value_B where A is highest


@dataclass
class ExclusivityResult:
    """Overall, per-structure and pairwise exclusivity of one field or a pool of fields.

    Attributes
    ----------
    names : list of str
    overall : float
        Mean of the exclusivity map over all pixels.
    per_structure : dict
        Name -> mean of the map over the pixels where that structure is highest (NaN if never).
    pairwise : ndarray, shape (S, S)
        ``pairwise[a, b]`` = mean of ``value_a - value_b`` over the pixels where ``a`` is highest;
        NaN on the diagonal and where ``a`` is never highest.
    fraction_highest : dict
        Name -> fraction of pixels where that structure is highest.
    n_pixels : int
    """

    names: list[str]
    overall: float
    per_structure: dict[str, float]
    pairwise: np.ndarray
    fraction_highest: dict[str, float]
    n_pixels: int
    _sums: _Sums = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None; pairwise as ``{A: {B: value}}``."""
        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else float(v)

        return {
            "names": list(self.names),
            "overall": num(self.overall),
            "per_structure": {k: num(v) for k, v in self.per_structure.items()},
            "pairwise": {a: {b: num(self.pairwise[i, j]) for j, b in enumerate(self.names) if i != j}
                         for i, a in enumerate(self.names)},
            "fraction_highest": {k: float(v) for k, v in self.fraction_highest.items()},
            "n_pixels": int(self.n_pixels),
        }


def _sums(stack: np.ndarray) -> _Sums:
    s = stack.shape[0]
    flat = stack.reshape(s, -1)
    top = np.argmax(flat, axis=0)  # first structure wins ties
    top_val = flat[top, np.arange(flat.shape[1])]
    emap = top_val - np.partition(flat, s - 2, axis=0)[-2]
    count = np.bincount(top, minlength=s).astype(np.int64)
    map_by_top = np.bincount(top, weights=emap, minlength=s)
    pair = np.zeros((s, s))
    for a in range(s):
        sel = top == a
        if sel.any():
            pair[a] = (flat[a, sel][None, :] - flat[:, sel]).sum(axis=1)
    return _Sums(int(flat.shape[1]), float(emap.sum()), count, map_by_top, pair)


def _result(names: list[str], sums: _Sums) -> ExclusivityResult:
    n = sums.n_pixels
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(sums.count > 0, sums.map_by_top / np.maximum(sums.count, 1), np.nan)
        pair = np.where(sums.count[:, None] > 0, sums.pair_sum / np.maximum(sums.count, 1)[:, None], np.nan)
    np.fill_diagonal(pair, np.nan)
    return ExclusivityResult(
        names=names, overall=sums.map_sum / n, per_structure=dict(zip(names, per.tolist())),
        pairwise=pair, fraction_highest=dict(zip(names, (sums.count / n).tolist())), n_pixels=n,
        _sums=sums)


def exclusivity(stack: np.ndarray, names: Sequence[str] | None = None) -> ExclusivityResult:
    """Overall, per-structure and pairwise exclusivity of one field.

    Parameters
    ----------
    stack : ndarray, shape (S, [Z,] Y, X)
        Predictions of ``S >= 2`` structures on a common scale (say which in any report).
    names : sequence of str, optional
        One name per structure (default ``s0, s1, ...``).
    """
    stack, names = _check_stack(stack, names)
    return _result(names, _sums(stack))


def pool_exclusivity(stacks: Sequence[np.ndarray] | Sequence[ExclusivityResult],
                     names: Sequence[str] | None = None) -> ExclusivityResult:
    """Exclusivity over all pixels of several fields (exact pooled sums, not a mean of means).

    Parameters
    ----------
    stacks : sequence of ndarray or of ExclusivityResult
        Per-field stacks (any spatial shapes, the same structures in the same order) or results of
        :func:`exclusivity`.
    names : sequence of str, optional
        Structure names (ignored for results, which carry theirs).
    """
    if len(stacks) == 0:
        raise CytogenError("exclusivity: no fields to pool")
    results = [s if isinstance(s, ExclusivityResult) else exclusivity(s, names) for s in stacks]
    first = results[0].names
    if any(r.names != first for r in results):
        raise CytogenError(f"exclusivity: fields have different structures: {first} vs "
                           f"{next(r.names for r in results if r.names != first)}")
    total = _Sums(
        n_pixels=sum(r._sums.n_pixels for r in results),
        map_sum=sum(r._sums.map_sum for r in results),
        count=np.sum([r._sums.count for r in results], axis=0),
        map_by_top=np.sum([r._sums.map_by_top for r in results], axis=0),
        pair_sum=np.sum([r._sums.pair_sum for r in results], axis=0))
    return _result(list(first), total)
