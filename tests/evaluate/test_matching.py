import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cytogen.errors import CytogenError
from cytogen.evaluate import matching
from cytogen.evaluate.matching import Matching, box_iou, match_bboxes, match_bboxes_best, match_centroids
from cytogen.evaluate.stats import fraction_within

LENGTHS = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.5, 4.9, 7.0, 9.0])  # planted offsets; 7 and 9 exceed max 5


def _planted(d: int, seed: int):
    """True points on a jittered grid (>= 20 apart), predictions at planted offsets, decoys, deletions."""
    rng = np.random.default_rng(seed)
    side = 8 if d == 2 else 4
    grid = np.stack(np.meshgrid(*[np.arange(side)] * d, indexing="ij"), -1).reshape(-1, d) * 30.0
    true = grid + rng.uniform(-5, 5, size=grid.shape)
    n = len(true)
    lengths = LENGTHS[rng.integers(0, len(LENGTHS), n)]
    direction = rng.normal(size=(n, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    kept = np.flatnonzero(rng.random(n) >= 0.15)  # ~15 % of the true objects are never predicted
    pred = true[kept] + lengths[kept, None] * direction[kept]
    decoys = grid[: n // 4] + 15.0  # cell centres between grid nodes: > 5 from every true point
    pred = np.concatenate([pred, decoys])
    return true, pred, kept, lengths[kept]


@pytest.mark.parametrize("d", [2, 3])
def test_planted_offsets_known_answer(d):
    true, pred, kept, lengths = _planted(d, seed=d)
    m = match_centroids(true, pred, max_distance=5.0)
    ok = lengths <= 5.0
    assert m.n_matched == ok.sum() and (m.n_true, m.n_pred) == (len(true), len(pred))
    np.testing.assert_array_equal(m.idx_true, kept[ok])
    np.testing.assert_array_equal(m.idx_pred, np.flatnonzero(ok))
    np.testing.assert_allclose(m.distance, lengths[ok], atol=1e-9)
    assert m.recall == ok.sum() / len(true) and m.precision == ok.sum() / len(pred)
    np.testing.assert_array_equal(m.unmatched_true, np.setdiff1d(np.arange(len(true)), kept[ok]))
    for radius in (0.0, 0.75, 2.5, 4.7):  # between planted lengths, away from rounding
        res = fraction_within(m.distance, radius, n_trials=m.n_true)
        assert res["k"] == np.sum(lengths <= radius)
        assert res["fraction"] == pytest.approx(np.sum(lengths <= radius) / len(true))
    # the order of the predictions changes nothing
    perm = np.random.default_rng(9).permutation(len(pred))
    mp = match_centroids(true, pred[perm], max_distance=5.0)
    np.testing.assert_array_equal(mp.idx_true, m.idx_true)
    np.testing.assert_array_equal(perm[mp.idx_pred], m.idx_pred)
    np.testing.assert_allclose(mp.distance, m.distance)


def test_optimal_where_greedy_fails():
    true = np.array([[0.0], [2.0]])
    pred = np.array([[1.1], [3.0]])
    m = match_centroids(true, pred, max_distance=2.5)
    # greedy nearest-neighbour takes (2, 1.1) at 0.9 and then cannot match anything else
    assert m.n_matched == 2
    np.testing.assert_array_equal(m.idx_true, [0, 1])
    np.testing.assert_array_equal(m.idx_pred, [0, 1])
    assert m.distance.sum() == pytest.approx(1.1 + 1.0)


def _objective(m: Matching, c: float) -> float:
    return float(m.distance.sum() + c * (m.n_true + m.n_pred - 2 * m.n_matched))


def _brute_force(true, pred, c):
    d = np.linalg.norm(true[:, None] - pred[None], axis=2)
    best = c * (len(true) + len(pred))
    for k in range(1, min(len(true), len(pred)) + 1):
        for rows in itertools.combinations(range(len(true)), k):
            for cols in itertools.permutations(range(len(pred)), k):
                dd = d[list(rows), list(cols)]
                if np.all(dd <= c):
                    best = min(best, dd.sum() + c * (len(true) + len(pred) - 2 * k))
    return best


@pytest.mark.parametrize("dense_limit", [matching.DENSE_LIMIT, 0])
def test_matches_brute_force_on_crowded_clusters(monkeypatch, dense_limit):
    monkeypatch.setattr(matching, "DENSE_LIMIT", dense_limit)  # 0 forces the sparse solver
    rng = np.random.default_rng(4)
    for _ in range(25):
        true = rng.uniform(0, 3, size=(rng.integers(1, 5), 2))
        pred = rng.uniform(0, 3, size=(rng.integers(1, 5), 2))
        m = match_centroids(true, pred, 1.5)
        assert _objective(m, 1.5) == pytest.approx(_brute_force(true, pred, 1.5))
        assert len(set(m.idx_true)) == m.n_matched == len(set(m.idx_pred))
        assert np.all(m.distance <= 1.5)


def test_large_field_equals_matching_of_separate_tiles():
    # 100,000 points: strips separated by gaps > max_distance cannot interact, so matching the whole
    # field must equal matching each strip on its own (checks the component bookkeeping at scale)
    rng = np.random.default_rng(0)
    n_strips, per = 8, 12500
    trues, preds = [], []
    for s in range(n_strips):
        t = rng.uniform(0, [700, 1800], size=(per, 2)) + [s * 800, 0]
        p = t + rng.normal(0, 1.5, size=t.shape)
        trues.append(t)
        preds.append(p[rng.permutation(per)])
    whole = match_centroids(np.concatenate(trues), np.concatenate(preds), 4.0)
    total, matched = 0.0, 0
    for t, p in zip(trues, preds):
        m = match_centroids(t, p, 4.0)
        total, matched = total + m.distance.sum(), matched + m.n_matched
    assert whole.n_matched == matched
    assert whole.distance.sum() == pytest.approx(total, rel=1e-12)


def test_empty_and_invalid_inputs():
    pts = np.zeros((3, 2))
    for t, p in [(np.zeros((0, 2)), pts), (pts, np.zeros((0, 2))), (np.array([]), np.array([]))]:
        m = match_centroids(t, p, 1.0)
        assert m.n_matched == 0 and len(m.unmatched_true) == len(t) and len(m.unmatched_pred) == len(p)
    far = match_centroids(pts, pts + 10, 1.0)
    assert far.n_matched == 0 and far.recall == 0.0
    with pytest.raises(CytogenError, match="2D but"):
        match_centroids(np.zeros((2, 2)), np.zeros((2, 3)), 1.0)
    with pytest.raises(CytogenError, match="max_distance"):
        match_centroids(pts, pts, 0.0)
    with pytest.raises(CytogenError, match="NaN"):
        match_centroids(np.array([[np.nan, 0.0]]), pts, 1.0)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [10, 0, 20, 10], [0, 0, 0, 0]], float)
    np.testing.assert_allclose(box_iou(a, b), [1.0, 50 / 150, 0.0, 0.0])
    cube = np.array([[0, 0, 0, 2, 2, 2]], float)
    assert box_iou(cube, cube + [1, 0, 0, 1, 0, 0])[0] == pytest.approx(4 / 12)


def test_match_bboxes_known_pairs():
    true = np.array([[0, 0, 10, 10], [0, 20, 10, 30], [50, 50, 60, 60], [100, 100, 110, 110]], float)
    pred = np.array([
        [0, 22, 10, 32],     # IoU 0.667 with true 1, 0 with true 0
        [0, 2, 10, 12],      # IoU 0.667 with true 0
        [0, 9, 10, 21],      # overlaps true 0 and true 1 (IoU 10/210 each): a losing rival
        [60, 60, 70, 70],    # touches true 2 at a corner only: no overlap
        [200, 200, 210, 210],
    ], float)
    m = match_bboxes(true, pred)
    np.testing.assert_array_equal(m.idx_true, [0, 1])
    np.testing.assert_array_equal(m.idx_pred, [1, 0])
    np.testing.assert_allclose(1 - m.distance, [80 / 120, 80 / 120])
    np.testing.assert_array_equal(m.unmatched_true, [2, 3])
    np.testing.assert_array_equal(m.unmatched_pred, [2, 3, 4])
    # maximal total overlap, not greedy: true 0's best box is shared with true 1
    t2 = np.array([[0, 0, 10, 10], [0, 8, 10, 18]], float)
    p2 = np.array([[0, 3, 10, 13], [0, -4, 10, 6]], float)
    iou = box_iou(np.repeat(t2, 2, 0), np.tile(p2, (2, 1))).reshape(2, 2)
    assert iou[0, 0] > iou[0, 1] and iou[0, 0] > iou[1, 0]  # greedy would take (0, 0) first
    m2 = match_bboxes(t2, p2)
    np.testing.assert_array_equal(m2.idx_pred, [1, 0])
    assert (1 - m2.distance).sum() == pytest.approx(iou[0, 1] + iou[1, 0])
    assert (1 - m2.distance).sum() > iou[0, 0]
    # a threshold drops weak pairs
    assert match_bboxes(true, pred, min_overlap=0.7).n_matched == 0


def test_match_bboxes_mixed_sizes_and_3d_equal_dense_optimum():
    rng = np.random.default_rng(2)
    for d in (2, 3):
        centre = rng.uniform(0, 150, size=(200, d))
        half = rng.choice([1.0, 4.0, 30.0], size=(200, 1))  # very different box sizes
        true = np.hstack([centre - half, centre + half])
        pred = true + rng.normal(0, 2.0, size=true.shape)
        pred[:, d:] = np.maximum(pred[:, d:], pred[:, :d] + 0.1)
        pred = pred[rng.permutation(len(pred))]
        m = match_bboxes(true, pred)
        # every overlapping pair must have been a candidate: compare with the dense global optimum
        iou = box_iou(np.repeat(true, len(pred), 0), np.tile(pred, (len(true), 1))).reshape(len(true), -1)
        r, c = linear_sum_assignment(-iou)
        assert (1 - m.distance).sum() == pytest.approx(iou[r, c].sum(), rel=1e-12)
        np.testing.assert_allclose(1 - m.distance, iou[m.idx_true, m.idx_pred])
        assert np.all(iou[m.idx_true, m.idx_pred] > 0)
        assert m.n_matched == np.count_nonzero(iou[r, c] > 0)
    with pytest.raises(CytogenError, match="max < min"):
        match_bboxes(np.array([[5.0, 5, 0, 0]]), np.array([[0.0, 0, 1, 1]]))
    with pytest.raises(CytogenError, match="2\\*d columns"):
        match_bboxes(np.zeros((2, 3)), np.zeros((2, 3)))
    assert match_bboxes(np.zeros((0, 4)), np.array([[0.0, 0, 1, 1]])).n_matched == 0


def test_match_bboxes_best_is_the_papers_many_to_one_rule():
    """Each prediction takes the real box it overlaps most; two predictions may share one."""
    true = np.array([[0, 0, 10, 10], [0, 20, 10, 30], [50, 50, 60, 60]], float)
    pred = np.array([
        [0, 1, 10, 11],      # IoU 90/110 with true 0
        [0, 3, 10, 13],      # IoU 70/130 with true 0: shares it (one-to-one would drop it)
        [0, 9, 10, 21],      # IoU 10/210 with true 0 and true 1: tie -> the smaller index, true 0
        [200, 200, 210, 210],
    ], float)
    m = match_bboxes_best(true, pred)
    np.testing.assert_array_equal(m.idx_pred[np.argsort(m.idx_pred)], [0, 1, 2])
    np.testing.assert_array_equal(m.idx_true[np.argsort(m.idx_pred)], [0, 0, 0])
    np.testing.assert_allclose(np.sort(1 - m.distance), np.sort([90 / 110, 70 / 130, 10 / 210]))
    assert (m.n_matched, m.n_true_matched, m.recall, m.precision) == (3, 1, 1 / 3, 3 / 4)
    one = match_bboxes(true, pred)  # one-to-one: true 0 with pred 0, true 1 with pred 2
    assert one.n_matched == one.n_true_matched == 2
    # against the dense argmax on random boxes (2D and 3D)
    rng = np.random.default_rng(5)
    for d in (2, 3):
        c = rng.uniform(0, 80, size=(60, d))
        t = np.hstack([c - 4, c + 4])
        q = rng.uniform(0, 80, size=(90, d))
        pb = np.hstack([q - 3, q + 3])
        iou = box_iou(np.repeat(t, len(pb), 0), np.tile(pb, (len(t), 1))).reshape(len(t), -1)
        m = match_bboxes_best(t, pb)
        hit = np.flatnonzero(iou.max(0) > 0)
        np.testing.assert_array_equal(np.sort(m.idx_pred), hit)
        order = np.argsort(m.idx_pred)
        np.testing.assert_array_equal(m.idx_true[order], iou[:, hit].argmax(0))
