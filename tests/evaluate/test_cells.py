"""Known-answer tests of the whole-cell scores (cytogen.evaluate.cells)."""

from __future__ import annotations

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.cells import DEFAULT_THRESHOLDS, cell_scores, match_cells, pool_cell_scores


def _boxes(shape, boxes) -> np.ndarray:
    """Label image with label k+1 on box k = (y0, y1, x0, x1)."""
    lab = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        lab[y0:y1, x0:x1] = k + 1
    return lab


TRUTH = _boxes((40, 60), [(2, 12, 2, 12), (2, 12, 20, 30), (20, 30, 2, 22), (20, 30, 30, 50)])


def test_identical_labels_are_perfect():
    s = cell_scores(TRUTH, TRUTH)
    assert (s["n_true"], s["n_pred"], s["n_matched"]) == (4, 4, 4)
    assert s["miou_matched"] == s["miou_all_true"] == s["miou_matched50"] == 1.0
    for t in DEFAULT_THRESHOLDS:
        k = f"{int(round(t * 100)):02d}"
        assert s[f"ap{k}"] == s[f"f1_{k}"] == s[f"pq{k}"] == s[f"precision{k}"] == s[f"recall{k}"] == 1.0
    assert len(s["scores"]) == 10 and [r["threshold"] for r in s["scores"]] == list(DEFAULT_THRESHOLDS)


def test_known_shift_gives_the_computed_iou():
    # every 10 x 10 / 10 x 20 box shifted by 2 px in x: IoU = 8/12 for width 10, 18/22 for width 20
    pred = np.zeros_like(TRUTH)
    pred[:, 2:] = TRUTH[:, :-2]
    s = cell_scores(TRUTH, pred)
    ious = sorted(s["matched_iou"])
    np.testing.assert_allclose(ious, sorted([8 / 12, 8 / 12, 18 / 22, 18 / 22]))
    expected = (2 * 8 / 12 + 2 * 18 / 22) / 4
    assert s["miou_matched"] == pytest.approx(expected) and s["miou_all_true"] == pytest.approx(expected)
    # 8/12 = 0.667: matched up to threshold 0.65, not at 0.7; 18/22 = 0.818 up to 0.8
    assert s["ap65"] == 1.0 and s["ap70"] == pytest.approx(2 / (2 + 2 + 2))
    assert s["ap80"] == pytest.approx(2 / 6) and s["ap85"] == 0.0
    assert s["pq50"] == pytest.approx(expected)


def test_foreground_only_separates_mask_errors_from_division_errors():
    # a perfect mask wrongly divided: the two upper boxes as one cell
    merged = TRUTH.copy()
    merged[TRUTH == 2] = 1
    s = cell_scores(TRUTH, merged)
    assert s["miou_foreground_only"] == 1.0 and s["miou_matched"] < 1.0
    # the right division of a mask grown by one pixel column on the right of every box:
    # IoU = 100/110 for the 10-wide boxes and 200/210 for the 20-wide ones
    grown = TRUTH.copy()
    grown[:, 1:][(TRUTH[:, :-1] > 0) & (TRUTH[:, 1:] == 0)] = TRUTH[:, :-1][(TRUTH[:, :-1] > 0) & (TRUTH[:, 1:] == 0)]
    s = cell_scores(TRUTH, grown)
    expected = (2 * 100 / 110 + 2 * 200 / 210) / 4
    assert s["miou_foreground_only"] == pytest.approx(expected) == s["miou_matched"]
    # pooled: the IoU sums and counts add over fields
    p = pool_cell_scores([cell_scores(TRUTH, merged), cell_scores(TRUTH, grown)])
    assert p["miou_foreground_only"] == pytest.approx((4 + 4 * expected) / 8)
    empty = np.zeros_like(TRUTH)
    assert cell_scores(empty, empty)["miou_foreground_only"] == 1.0
    assert cell_scores(empty, TRUTH)["miou_foreground_only"] == 0.0


def test_split_cell_gives_one_false_positive_and_merge_one_false_negative():
    # split: true cell 3 (10 x 20) cut into two 10 x 10 halves -> one half matched (IoU 0.5)
    split = TRUTH.copy()
    split[20:30, 12:22] = 9
    s = cell_scores(TRUTH, split)
    assert (s["n_true"], s["n_pred"], s["n_matched"]) == (4, 5, 4)
    r50 = s["scores"][0]
    assert (r50["tp"], r50["fp"], r50["fn"]) == (4, 1, 0)
    assert s["miou_matched"] == pytest.approx((3 + 0.5) / 4) and s["ap50"] == pytest.approx(4 / 5)
    r55 = s["scores"][1]  # the half no longer counts at 0.55: the whole true cell is missed too
    assert (r55["tp"], r55["fp"], r55["fn"]) == (3, 2, 1)
    # merge: true cells 1 and 2 (with the 8 px gap) predicted as one 10 x 28 object
    merged = TRUTH.copy()
    merged[2:12, 2:30] = 1
    m = cell_scores(TRUTH, merged)
    assert (m["n_true"], m["n_pred"], m["n_matched"]) == (4, 3, 3)
    iou = 100 / 280
    assert m["miou_matched"] == pytest.approx((2 + iou) / 3)
    assert m["miou_all_true"] == pytest.approx((2 + iou) / 4)  # the unmatched true cell counts 0
    r50 = m["scores"][0]
    assert (r50["tp"], r50["fp"], r50["fn"]) == (2, 1, 2) and m["ap50"] == pytest.approx(2 / 5)


def test_hungarian_maximises_total_iou_over_any_overlap():
    # A = [0, 10), B = [10, 20); pred 7 = [4, 16) overlaps both by IoU 6/16, pred 8 = [16, 40)
    # only B by 4/30: the maximal total pairs A-7 and B-8 (B-7 would leave A unmatched)
    truth = np.zeros((1, 60), np.int32)
    truth[0, 0:10], truth[0, 10:20] = 1, 2
    pred = np.zeros_like(truth)
    pred[0, 4:16] = 7    # overlaps A by 6 (IoU 6/16) and B by 6 (6/16)
    pred[0, 16:40] = 8   # overlaps B by 4 (IoU 4/30)
    ids_t, ids_p, iou = match_cells(truth, pred)
    pairs = dict(zip(ids_t.tolist(), ids_p.tolist()))
    assert pairs == {1: 7, 2: 8}
    np.testing.assert_allclose(sorted(iou), sorted([6 / 16, 4 / 30]))
    s = cell_scores(truth, pred)
    assert s["n_matched"] == 2 and s["miou_matched"] == pytest.approx((6 / 16 + 4 / 30) / 2)


def test_relabelling_and_dtype_invariance():
    rng = np.random.default_rng(0)
    pred = np.zeros_like(TRUTH)
    pred[:, 1:] = TRUTH[:, :-1]
    pred[20:30, 12:22] = 9
    ref = cell_scores(TRUTH, pred)
    perm_t = np.concatenate([[0], rng.permutation(np.arange(100, 100 + TRUTH.max()))])
    perm_p = np.concatenate([[0], rng.permutation(np.arange(1, 10)) * 1000])
    again = cell_scores(perm_t[TRUTH].astype(np.uint16), perm_p[pred].astype(np.int64))
    for k in ("n_true", "n_pred", "n_matched", "miou_matched", "miou_all_true", "ap50", "ap75", "pq50"):
        assert again[k] == pytest.approx(ref[k])
    np.testing.assert_allclose(sorted(again["matched_iou"]), sorted(ref["matched_iou"]))


def test_empty_images():
    empty = np.zeros_like(TRUTH)
    both = cell_scores(empty, empty)
    assert both["n_true"] == both["n_pred"] == 0 and both["miou_matched"] == both["ap50"] == 1.0
    missed = cell_scores(TRUTH, empty)
    assert missed["n_matched"] == 0 and missed["miou_matched"] == missed["miou_all_true"] == 0.0
    assert missed["ap50"] == 0.0 and missed["recall50"] == 0.0
    extra = cell_scores(empty, TRUTH)
    assert extra["ap50"] == 0.0 and extra["n_pred"] == 4 and extra["miou_all_true"] == 0.0


def test_pooling_adds_counts_and_sums_over_fields():
    shifted = np.zeros_like(TRUTH)
    shifted[:, 2:] = TRUTH[:, :-2]
    merged = TRUTH.copy()
    merged[2:12, 2:30] = 1
    fields = [cell_scores(TRUTH, TRUTH), cell_scores(TRUTH, shifted), cell_scores(TRUTH, merged)]
    p = pool_cell_scores(fields)
    assert (p["n_fields"], p["n_true"], p["n_pred"], p["n_matched"]) == (3, 12, 11, 11)
    total = sum(f["matched_iou"].sum() for f in fields)
    assert p["miou_matched"] == pytest.approx(total / 11) and p["miou_all_true"] == pytest.approx(total / 12)
    tp = sum(f["scores"][0]["tp"] for f in fields)
    fp = sum(f["scores"][0]["fp"] for f in fields)
    fn = sum(f["scores"][0]["fn"] for f in fields)
    assert p["ap50"] == pytest.approx(tp / (tp + fp + fn)) and p["ap"][0] == p["ap50"]
    assert len(p["ap"]) == len(p["thresholds"]) == 10
    lo, hi = p["miou_matched_ci95"]
    assert min(f["miou_matched"] for f in fields) <= lo <= p["miou_matched"] <= hi <= 1.0
    assert p["miou_matched_ci95"] == pool_cell_scores(fields)["miou_matched_ci95"]  # seeded
    assert pool_cell_scores(fields[:1])["miou_matched_ci95"] is None
    assert p["map"] == pytest.approx(np.mean(p["ap"]))  # mean AP over 0.5:0.95
    lo, hi = p["map_ci95"]
    worst = min(pool_cell_scores([f])["map"] for f in fields)
    assert worst <= lo <= p["map"] <= hi <= 1.0
    same = pool_cell_scores([fields[0], fields[0]])  # identical fields: no spread
    assert same["map_ci95"] == [pytest.approx(same["map"])] * 2 and same["map"] == 1.0
    with pytest.raises(CytogenError, match="no fields"):
        pool_cell_scores([])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(CytogenError, match="differ in shape"):
        cell_scores(TRUTH, TRUTH[:, :-1])
    with pytest.raises(CytogenError, match="integer label images"):
        cell_scores(TRUTH, TRUTH.astype(np.float32) + 0.5)
    with pytest.raises(CytogenError, match="thresholds"):
        cell_scores(TRUTH, TRUTH, thresholds=(0.0,))


def test_pooling_only_empty_fields_is_refused():
    # per field, nothing against nothing scores 1.0; a whole set of them must not report a perfect AP
    empty = np.zeros_like(TRUTH)
    with pytest.raises(CytogenError, match="nothing to score"):
        pool_cell_scores([cell_scores(empty, empty), cell_scores(empty, empty)])
    p = pool_cell_scores([cell_scores(empty, empty), cell_scores(TRUTH, TRUTH)])
    assert p["ap50"] == 1.0 and p["n_true"] == p["n_pred"] > 0
