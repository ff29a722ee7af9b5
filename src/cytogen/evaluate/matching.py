"""Matching of true and predicted objects (numpy/scipy only).

:func:`match_centroids` pairs centroids one-to-one by an optimal assignment within a distance;
:func:`match_bboxes` pairs bounding boxes one-to-one by maximal total overlap ratio (IoU);
:func:`match_bboxes_best` is the rule of Vasudevan et al.: each predicted box is paired
with the real box it overlaps most, so several predictions may share one real nucleus. The
one-to-one matchings find candidate pairs with a KD-tree, split the candidate bipartite graph
into connected components and solve each component exactly: components with a single true or a
single predicted object (nearly all of them) are solved vectorised, the rest with
``scipy.optimize.linear_sum_assignment`` (or, for very large components, the sparse
``scipy.sparse.csgraph.min_weight_full_bipartite_matching``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from cytogen.errors import CytogenError

# components with more cells than this (true x predicted) use the sparse solver
DENSE_LIMIT = 1_000_000


@dataclass(frozen=True)
class Matching:
    """A matching between ``n_true`` true and ``n_pred`` predicted objects.

    One-to-one, except from :func:`match_bboxes_best`, where a true index may repeat (every
    predicted index appears at most once in all matchings).

    Attributes
    ----------
    idx_true, idx_pred : ndarray of int
        Indices of the matched pairs into the true and predicted inputs (sorted by ``idx_true``).
    distance : ndarray of float
        Per pair: the centroid distance (:func:`match_centroids`, input units) or ``1 - IoU``
        (:func:`match_bboxes`).
    n_true, n_pred : int
        Number of true and predicted objects.
    """

    idx_true: np.ndarray
    idx_pred: np.ndarray
    distance: np.ndarray
    n_true: int
    n_pred: int

    @property
    def n_matched(self) -> int:
        """Number of matched pairs (= matched predicted objects)."""
        return int(len(self.idx_true))

    @property
    def n_true_matched(self) -> int:
        """Number of distinct true objects with at least one partner."""
        return int(len(np.unique(self.idx_true)))

    @property
    def recall(self) -> float:
        """``n_true_matched / n_true`` (NaN without true objects)."""
        return self.n_true_matched / self.n_true if self.n_true else float("nan")

    @property
    def precision(self) -> float:
        """``n_matched / n_pred`` (NaN without predicted objects)."""
        return self.n_matched / self.n_pred if self.n_pred else float("nan")

    @property
    def unmatched_true(self) -> np.ndarray:
        """Indices of true objects without a partner."""
        return np.setdiff1d(np.arange(self.n_true), self.idx_true)

    @property
    def unmatched_pred(self) -> np.ndarray:
        """Indices of predicted objects without a partner."""
        return np.setdiff1d(np.arange(self.n_pred), self.idx_pred)


def _as_rows(x: np.ndarray, name: str, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, a.shape[-1] if a.ndim == 2 else 0)
    if a.ndim != 2:
        raise CytogenError(f"{name} must be a 2D array of shape (N, {what}), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise CytogenError(f"{name} contains NaN/Inf; drop those objects before matching")
    return a


def _empty(n_true: int, n_pred: int) -> Matching:
    z = np.zeros(0, dtype=np.int64)
    return Matching(z, z.copy(), np.zeros(0), n_true, n_pred)


def _solve_general(i: np.ndarray, j: np.ndarray, w: np.ndarray, a: int, b: int) -> np.ndarray:
    """Optimal edges (positions into ``i``) of one component with local indices ``< a``, ``< b``."""
    if a * b <= DENSE_LIMIT:
        cost = np.zeros((a, b))
        cost[i, j] = w
        edge = np.full((a, b), -1, dtype=np.int64)
        edge[i, j] = np.arange(len(i))
        r, c = linear_sum_assignment(cost)
        sel = edge[r, c]
        return sel[sel >= 0]
    # augmented square graph: real edges, "unmatched" edges i->dummy_i and dummy_j->j, and the
    # transposed dummy_j->dummy_i edges; all weights shifted by K > 0 (a perfect matching has a+b
    # edges, so the shift changes every total alike)
    k = 1.0 + float(np.abs(w).max())
    ai, bj = np.arange(a), np.arange(b)
    rows = np.concatenate([i, ai, a + bj, a + j])
    cols = np.concatenate([j, b + ai, bj, b + i])
    data = np.concatenate([w + k, np.full(a + b + len(i), k)])
    graph = csr_matrix((data, (rows, cols)), shape=(a + b, a + b))
    r, c = min_weight_full_bipartite_matching(graph)
    real = (r < a) & (c < b)
    lookup = {(int(x), int(y)): e for e, (x, y) in enumerate(zip(i, j))}
    return np.array([lookup[(int(x), int(y))] for x, y in zip(r[real], c[real])], dtype=np.int64)


def _local_rank(nodes: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    """Rank of each node among the distinct nodes of its component (one entry per edge)."""
    key = comp * n + nodes
    uniq = np.unique(key)
    return np.searchsorted(uniq, key) - np.searchsorted(uniq, comp * n)


def _assign(i: np.ndarray, j: np.ndarray, w: np.ndarray, n_true: int, n_pred: int) -> np.ndarray:
    """Edges of the matching that minimises ``sum(w)`` over all partial matchings (``w < 0``).

    Returns positions into the edge arrays.
    """
    if len(i) == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i)), (i, n_true + j)), shape=(n_true + n_pred,) * 2)
    _, lab = connected_components(graph, directed=False)
    lab = lab.astype(np.int64)
    ce = lab[i]
    nt = np.bincount(lab[:n_true], minlength=lab.max() + 1)
    npr = np.bincount(lab[n_true:], minlength=lab.max() + 1)
    order = np.lexsort((w, ce))  # edges grouped by component, cheapest first
    ce_s = ce[order]
    first = np.r_[True, ce_s[1:] != ce_s[:-1]]
    star = (nt[ce_s] == 1) | (npr[ce_s] == 1)
    chosen = [order[first & star]]  # one true or one prediction: the cheapest edge is optimal
    general = order[~star]
    if len(general):
        gc = ce[general]
        li = _local_rank(i[general], gc, n_true)
        lj = _local_rank(j[general], gc, n_pred)
        bounds = np.flatnonzero(np.r_[True, gc[1:] != gc[:-1], True])
        for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            c = gc[s]
            sel = _solve_general(li[s:e], lj[s:e], w[general[s:e]], int(nt[c]), int(npr[c]))
            chosen.append(general[s:e][sel])
    return np.concatenate(chosen)


def _result(i: np.ndarray, j: np.ndarray, dist: np.ndarray, sel: np.ndarray, n_true: int, n_pred: int) -> Matching:
    sel = sel[np.argsort(i[sel], kind="stable")]
    return Matching(i[sel].astype(np.int64), j[sel].astype(np.int64), dist[sel].astype(np.float64), n_true, n_pred)


def match_centroids(true_pts: np.ndarray, pred_pts: np.ndarray, max_distance: float) -> Matching:
    """Optimal one-to-one matching of centroids closer than ``max_distance``.

    Minimises ``sum(distance of matched pairs) + max_distance * (number of unmatched objects)``,
    so any pair within ``max_distance`` beats leaving both objects unmatched. Solved exactly per
    connected component of the candidate graph (pairs with ``distance <= max_distance``).

    Parameters
    ----------
    true_pts, pred_pts : ndarray, shape (N, d) and (M, d)
        Centroids in physical units (um; scale anisotropic pixel coordinates first), 2D or 3D.
    max_distance : float
        Largest distance of a matched pair, same units.

    Returns
    -------
    Matching
        Pairs with their Euclidean distances.
    """
    t = _as_rows(true_pts, "true_pts", "d")
    p = _as_rows(pred_pts, "pred_pts", "d")
    if not (np.isfinite(max_distance) and max_distance > 0):
        raise CytogenError(f"max_distance must be a positive finite number, got {max_distance}")
    if len(t) == 0 or len(p) == 0:
        return _empty(len(t), len(p))
    if t.shape[1] != p.shape[1]:
        raise CytogenError(f"true points are {t.shape[1]}D but predicted points are {p.shape[1]}D")
    pairs = cKDTree(t).sparse_distance_matrix(cKDTree(p), max_distance, output_type="ndarray")
    i, j, dist = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    sel = _assign(i, j, dist - 2.0 * max_distance, len(t), len(p))
    return _result(i, j, dist, sel, len(t), len(p))


def _boxes(x: np.ndarray, name: str) -> np.ndarray:
    b = _as_rows(x, name, "2*d")
    if b.shape[1] % 2 or (len(b) and b.shape[1] == 0):
        raise CytogenError(f"{name} must have 2*d columns [min_0..min_(d-1), max_0..max_(d-1)], got {b.shape[1]}")
    d = b.shape[1] // 2
    if np.any(b[:, d:] < b[:, :d]):
        raise CytogenError(f"{name} has boxes with max < min; use the (min..., max...) order of regionprops bbox")
    return b


def _box_candidates(tb: np.ndarray, pb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (true, pred) pairs that may intersect: KD-tree over centres, boxes grouped by size."""
    d = tb.shape[1] // 2
    groups = []
    for b in (tb, pb):
        centre = (b[:, :d] + b[:, d:]) / 2
        half = np.linalg.norm(b[:, d:] - b[:, :d], axis=1) / 2
        groups.append((centre, half))
    base = max(float(min(groups[0][1].max(), groups[1][1].max())) * 1e-6, 1e-12)
    levels = []
    for centre, half in groups:  # size classes within a factor 2 keep the search radius tight
        lvl = np.floor(np.log2(np.maximum(half, base) / base)).astype(np.int64)
        members = [np.flatnonzero(lvl == v) for v in np.unique(lvl)]
        levels.append([(idx, cKDTree(centre[idx]), float(half[idx].max())) for idx in members])
    ii, jj = [], []
    for ti, ttree, tr in levels[0]:
        for pj, ptree, pr in levels[1]:
            pairs = ttree.sparse_distance_matrix(ptree, tr + pr, output_type="ndarray")
            ii.append(ti[pairs["i"]])
            jj.append(pj[pairs["j"]])
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes ``a`` and ``b`` (same shape ``(N, 2*d)``); 0 where both are empty."""
    d = a.shape[1] // 2
    inter = np.prod(np.clip(np.minimum(a[:, d:], b[:, d:]) - np.maximum(a[:, :d], b[:, :d]), 0, None), axis=1)
    union = np.prod(a[:, d:] - a[:, :d], axis=1) + np.prod(b[:, d:] - b[:, :d], axis=1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _box_pairs(true_boxes: np.ndarray, pred_boxes: np.ndarray, min_overlap: float):
    """Checked boxes and all overlapping candidate pairs ``(i, j, iou)`` with ``iou > min_overlap``."""
    t, p = _boxes(true_boxes, "true_boxes"), _boxes(pred_boxes, "pred_boxes")
    if not 0.0 <= min_overlap < 1.0:
        raise CytogenError(f"min_overlap must lie in [0, 1), got {min_overlap}")
    if len(t) == 0 or len(p) == 0:
        return t, p, None
    if t.shape[1] != p.shape[1]:
        raise CytogenError(f"true boxes are {t.shape[1] // 2}D but predicted boxes are {p.shape[1] // 2}D")
    i, j = _box_candidates(t, p)
    iou = box_iou(t[i], p[j])
    keep = (iou > min_overlap) & (iou > 0)
    return t, p, (i[keep], j[keep], iou[keep])


def match_bboxes(true_boxes: np.ndarray, pred_boxes: np.ndarray, min_overlap: float = 0.0) -> Matching:
    """Pair bounding boxes one-to-one by maximal total overlap.

    The overlap ratio is the box IoU (MATLAB ``bboxOverlapRatio(..., 'Union')``). Among pairs
    with ``IoU > min_overlap`` the matching maximising the total IoU is found exactly.

    Parameters
    ----------
    true_boxes, pred_boxes : ndarray, shape (N, 2*d) and (M, 2*d)
        Boxes ``[min_0, ..., min_(d-1), max_0, ..., max_(d-1)]`` with exclusive max, as
        ``skimage.measure.regionprops(...).bbox``; 2D or 3D.
    min_overlap : float
        Pairs must overlap by more than this IoU (0 = any positive overlap).

    Returns
    -------
    Matching
        Pairs; ``distance`` holds ``1 - IoU`` (compute centroid distances of the pairs yourself).
    """
    t, p, cand = _box_pairs(true_boxes, pred_boxes, min_overlap)
    if cand is None:
        return _empty(len(t), len(p))
    i, j, iou = cand
    sel = _assign(i, j, -iou, len(t), len(p))
    return _result(i, j, 1.0 - iou, sel, len(t), len(p))


def match_bboxes_best(true_boxes: np.ndarray, pred_boxes: np.ndarray, min_overlap: float = 0.0) -> Matching:
    """The rule of Vasudevan et al.: each predicted box paired with its best-overlap real box.

    Every predicted box whose IoU with some real box exceeds ``min_overlap`` is paired with the
    real box of largest IoU (MATLAB ``bboxOverlapRatio``, then the maximum per generated nucleus);
    this is not one-to-one: several predictions may share one real nucleus. Ties go to the real
    box with the smaller index.

    Parameters
    ----------
    true_boxes, pred_boxes : ndarray, shape (N, 2*d) and (M, 2*d)
        Boxes as for :func:`match_bboxes`.
    min_overlap : float
        Pairs must overlap by more than this IoU (0 = any positive overlap).

    Returns
    -------
    Matching
        Pairs (``idx_true`` may repeat); ``distance`` holds ``1 - IoU``.
    """
    t, p, cand = _box_pairs(true_boxes, pred_boxes, min_overlap)
    if cand is None:
        return _empty(len(t), len(p))
    i, j, iou = cand
    order = np.lexsort((i, -iou, j))  # per prediction: largest IoU first, then smaller true index
    first = np.r_[True, j[order][1:] != j[order][:-1]] if len(order) else np.zeros(0, bool)
    sel = order[first]
    return _result(i, j, 1.0 - iou, sel, len(t), len(p))
