"""kNN-purity divergence between two sets of objects (Sun et al. 2022, Eq 2) and its p values.

Pool ``m`` generated objects (label 1) and ``n`` real objects (label 0) in a descriptor space
(e.g. the first 3 shape PCs). For each pooled object ``i``, ``p_i`` is the fraction of its ``k``
nearest neighbours (Euclidean, itself excluded; ties at the k-th distance shared equally, see
:func:`neighbour_weights`) that are generated, and ``q = m / (m + n)``:

    score = 1/(m+n) sum_i [ p_i log(p_i / q) + (1 - p_i) log((1 - p_i) / (1 - q)) ]

the mean KL divergence of Bernoulli(p_i) from Bernoulli(q), natural log (nats), 0 log 0 = 0.
It is ~0 when the two sets mix (up to the binomial noise of ``p_i`` at that ``k``: small ``k``
give larger scores even for one distribution) and grows when they separate.

Two p values per ``k`` (:func:`purity_test`):

- ``p_permutation``: the set labels are shuffled over the pooled objects (same ``m`` and ``n``,
  the neighbour graph fixed) ``n_permutations`` times; ``p = (1 + #{score_perm >= score}) /
  (1 + n_permutations)``. The exact test of "real and generated are exchangeable".
- ``p_real_vs_real`` (the paper's null): the **real** objects alone are split at random into a
  pseudo-generated part with the test's fraction ``q`` (``round(q n)`` objects, or whole images
  when image ids are given: images are shuffled and taken until the part holds about ``q n``
  objects) and a pseudo-real rest; the score of each split is computed the same way, and ``p =
  (1 + #{score_split >= score}) / (1 + n_splits)``: how often two sets of real objects diverge at
  least as much as real and generated do. Split by image it also carries image-to-image
  variation; with ``n`` instead of ``m + n`` objects its null is computed on fewer objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.special import xlogy

from cytogen.errors import CytogenError

__all__ = ["knn_purity_score", "neighbour_weights", "purity_scores", "purity_test"]


def neighbour_weights(x: np.ndarray, k: int) -> sparse.csr_matrix:
    """``(N, N)`` sparse weights of each row's ``k`` nearest other rows (itself excluded).

    Row ``i`` holds ``1 / k`` for each object strictly closer than the ``k``-th neighbour
    distance ``d_k``, and shares the remaining ``(k - c) / k`` equally among all objects *at*
    ``d_k`` (ties, within 1e-9 relative): the expected ``p_i`` over every tie-breaking order.
    Small objects repeat their pixel shapes exactly, so their descriptors tie often; breaking
    ties by row order (real rows first) or once at random would make all tied objects share one
    arbitrary neighbour set and the score a lottery. Rows sum to 1; ``p = W @ y``.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k <= n - 1:
        raise CytogenError(f"k = {k} nearest neighbours need at least k + 1 = {k + 1} objects, got {n}")
    tree = cKDTree(x)
    d_k = tree.query(x, k=k + 1)[0].reshape(n, k + 1)[:, k]  # k-th distance once itself is left out
    tol = 1e-9 * np.maximum(d_k, 1e-12)
    balls = tree.query_ball_point(x, d_k + tol)
    rows, cols, vals = [], [], []
    for i, ball in enumerate(balls):
        j = np.asarray([b for b in ball if b != i], np.int64)
        d = np.linalg.norm(x[j] - x[i], axis=1)
        closer = d < d_k[i] - tol[i]
        n_closer, n_tie = int(closer.sum()), int((~closer).sum())
        w = np.where(closer, 1.0 / k, (k - n_closer) / (k * max(n_tie, 1)))
        rows.append(np.full(len(j), i))
        cols.append(j)
        vals.append(w)
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def purity_scores(weights: sparse.csr_matrix, y: np.ndarray) -> np.ndarray | float:
    """Eq 2 for labels ``y`` (``(N,)`` of 0/1, or ``(P, N)`` for ``P`` labelings) on fixed neighbours."""
    y = np.asarray(y, np.float64)
    if y.ndim == 1:
        return float(_scores(weights, y[None])[0])
    step = max(1, int(4_000_000 // max(1, y.shape[1])))  # (P, N) dense products, in chunks
    return np.concatenate([_scores(weights, y[s:s + step]) for s in range(0, len(y), step)])


def _scores(weights: sparse.csr_matrix, y: np.ndarray) -> np.ndarray:
    q = y.mean(1, keepdims=True)
    p = np.clip(np.asarray(weights @ y.T).T, 0.0, 1.0)
    kl = xlogy(p, p / q) + xlogy(1 - p, (1 - p) / (1 - q))
    return kl.mean(1)


def knn_purity_score(x_real: np.ndarray, x_gen: np.ndarray, k: int) -> float:
    """Sun et al. 2022 Eq 2 (module docstring): mean KL(Bernoulli(p_i) || Bernoulli(q)), nats."""
    xr, xg = _two(x_real, x_gen)
    y = np.r_[np.zeros(len(xr)), np.ones(len(xg))]
    return purity_scores(neighbour_weights(np.vstack([xr, xg]), int(k)), y)


def _two(x_real, x_gen) -> tuple[np.ndarray, np.ndarray]:
    xr, xg = np.atleast_2d(np.asarray(x_real, np.float64)), np.atleast_2d(np.asarray(x_gen, np.float64))
    if xr.shape[1] != xg.shape[1]:
        raise CytogenError(f"real and generated descriptors differ in width: {xr.shape} vs {xg.shape}")
    if len(xr) < 1 or len(xg) < 1:
        raise CytogenError(f"kNN purity needs objects on both sides, got {len(xr)} real and {len(xg)} generated")
    if not (np.all(np.isfinite(xr)) and np.all(np.isfinite(xg))):
        raise CytogenError("descriptors hold NaN or infinite values")
    return xr, xg


def _band(v: np.ndarray) -> dict[str, float]:
    return {"q05": float(np.quantile(v, 0.05)), "median": float(np.median(v)), "q95": float(np.quantile(v, 0.95))}


def _real_splits(n: int, m_frac: float, n_splits: int, rng: np.random.Generator,
                 image_ids: Sequence | None) -> np.ndarray:
    """``(n_splits, n)`` 0/1 labels of the real objects: 1 = pseudo-generated part."""
    want = int(round(m_frac * n))
    out = np.zeros((n_splits, n))
    if image_ids is None:
        for s in range(n_splits):
            out[s, rng.permutation(n)[:want]] = 1
        return out
    ids = np.asarray(image_ids)
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    for s in range(n_splits):
        order = rng.permutation(len(uniq))
        take, total = [], 0
        for g in order[:-1]:  # never every image
            if total >= want:
                break
            take.append(g)
            total += counts[g]
        out[s] = np.isin(inv, take)
    return out


def purity_test(x_real: np.ndarray, x_gen: np.ndarray, ks: Sequence[int] = (4, 8, 16, 32), *,
                n_permutations: int = 999, n_real_splits: int | None = None, seed: int = 0,
                real_image_ids: Sequence | None = None) -> list[dict]:
    """Eq 2 score per ``k`` with a label-permutation p value and the real-vs-real p value.

    Parameters
    ----------
    x_real, x_gen
        ``(n, d)`` and ``(m, d)`` descriptors (e.g. shape PCs from :func:`~cytogen.evaluate.shapes.shape_pca`).
    ks
        Neighbour counts; a ``k`` that needs more objects than there are gets ``None`` values
        and a ``note``.
    n_permutations
        Label shuffles for ``p_permutation``.
    n_real_splits
        Random real-vs-real splits (default ``n_permutations``).
    seed
        Seed of the shuffles and splits.
    real_image_ids
        Per real object, the image it comes from: split real objects by image.

    Returns
    -------
    list of dict
        Per ``k``: ``k, score, p_permutation, p_real_vs_real, null_permutation`` and
        ``null_real_vs_real`` (5 %, 50 %, 95 % quantiles of the null scores), ``n_real, n_generated``.
    """
    xr, xg = _two(x_real, x_gen)
    n, m = len(xr), len(xg)
    if n_permutations < 1:
        raise CytogenError(f"n_permutations must be >= 1, got {n_permutations}")
    if real_image_ids is not None and len(real_image_ids) != n:
        raise CytogenError(f"{len(real_image_ids)} image ids for {n} real objects")
    n_splits = int(n_permutations if n_real_splits is None else n_real_splits)
    rng = np.random.default_rng(seed)
    pooled = np.vstack([xr, xg])
    y = np.r_[np.zeros(n), np.ones(m)]
    perms = np.stack([rng.permutation(y) for _ in range(n_permutations)])
    splits = _real_splits(n, m / (m + n), n_splits, rng, real_image_ids)
    ok_split = (splits.sum(1) > 0) & (splits.sum(1) < n)
    n_distinct = int(len(np.unique(splits[ok_split], axis=0))) if ok_split.any() else 0
    out = []
    for k in ks:
        k = int(k)
        row: dict = {"k": k, "n_real": n, "n_generated": m}
        if not 1 <= k <= n + m - 1:
            row.update(score=None, p_permutation=None, p_real_vs_real=None,
                       note=f"k = {k} needs more than {n + m} objects")
            out.append(row)
            continue
        nb = neighbour_weights(pooled, k)
        score = float(purity_scores(nb, y))
        null = np.atleast_1d(purity_scores(nb, perms))
        row.update(score=score, p_permutation=float((1 + np.sum(null >= score - 1e-12)) / (1 + len(null))),
                   null_permutation=_band(null))
        if k <= n - 1 and ok_split.any():
            rvr = np.atleast_1d(purity_scores(neighbour_weights(xr, k), splits[ok_split]))
            row.update(p_real_vs_real=float((1 + np.sum(rvr >= score - 1e-12)) / (1 + len(rvr))),
                       null_real_vs_real=_band(rvr), n_distinct_real_splits=n_distinct)
        else:
            row.update(p_real_vs_real=None, note=f"real-vs-real null needs more than k = {k} real objects "
                                                 f"(and a split into two non-empty parts), got {n}")
        out.append(row)
    return out
