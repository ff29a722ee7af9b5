import csv
from pathlib import Path

import numpy as np
import pytest

from cytogen.errors import CytogenError
from cytogen.evaluate.instances import (
    aggregate_scores, instance_scores, iou_table, jaccard_binary, match_instances,
)
from cytogen.evaluate.objects import segment_nuclei

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# IoUs by hand: true 1 ~ pred 7 = 4/4 = 1; true 2 ~ pred 5 = 4/8 = 0.5; true 3 ~ pred 4 = 1/3
TRUE = np.array([[1, 1, 0, 2, 2, 0],
                 [1, 1, 0, 2, 2, 0],
                 [0, 0, 0, 0, 0, 0],
                 [3, 3, 0, 0, 0, 0]])
PRED = np.array([[7, 7, 0, 5, 5, 5],
                 [7, 7, 0, 5, 5, 5],
                 [0, 0, 0, 5, 5, 0],
                 [0, 4, 4, 0, 0, 0]])


def test_iou_table_hand_example():
    ids_t, ids_p, iou = iou_table(TRUE, PRED)
    assert list(ids_t) == [1, 2, 3] and list(ids_p) == [4, 5, 7]
    np.testing.assert_allclose(iou, [[0, 0, 1], [0, 0.5, 0], [1 / 3, 0, 0]])


def test_instance_scores_hand_computed():
    s = {r["threshold"]: r for r in instance_scores(TRUE, PRED, thresholds=(0.3, 0.5, 0.75))}
    # 0.3: all three pairs match; matched IoU sum = 1 + 1/2 + 1/3 = 11/6
    a = s[0.3]
    assert (a["tp"], a["fp"], a["fn"]) == (3, 0, 0)
    assert a["precision"] == a["recall"] == a["f1"] == a["ap"] == a["rq"] == 1.0
    assert a["mean_matched_iou"] == pytest.approx(11 / 18) and a["sq"] == pytest.approx(11 / 18)
    assert a["pq"] == pytest.approx(11 / 18)
    # 0.5: the perfect match and the IoU-0.5 pair; pred 4 is a FP, true 3 a FN
    b = s[0.5]
    assert (b["tp"], b["fp"], b["fn"]) == (2, 1, 1)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == pytest.approx(2 / 3)
    assert b["f1"] == pytest.approx(2 / 3) and b["ap"] == pytest.approx(0.5)
    assert b["mean_matched_iou"] == pytest.approx(0.75) and b["pq"] == pytest.approx(1.5 / 3)
    assert b["sq"] == pytest.approx(0.75) and b["rq"] == pytest.approx(2 / 3)
    # 0.75: only the perfect match
    c = s[0.75]
    assert (c["tp"], c["fp"], c["fn"]) == (1, 2, 2)
    assert c["f1"] == pytest.approx(1 / 3) and c["ap"] == pytest.approx(0.2)
    assert c["pq"] == pytest.approx(1 / 3) and c["mean_matched_iou"] == 1.0


def test_default_thresholds_and_3d():
    rows = instance_scores(TRUE[None].repeat(3, 0), PRED[None].repeat(3, 0))
    assert [r["threshold"] for r in rows] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert [r["tp"] for r in rows] == [2] + [1] * 9


def test_conflicts_resolved_optimally():
    # two predictions each with IoU exactly 0.5 to one true object: only one may match
    r = instance_scores(np.array([[1, 1]]), np.array([[1, 2]]), thresholds=(0.5,))[0]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    # greedy (best pair first) would give 1 match; the optimum pairs crosswise (0.4 + 0.42)
    rows, cols = match_instances(np.array([[0.45, 0.40], [0.42, 0.0]]), 0.3)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    rows, cols = match_instances(np.array([[0.45, 0.40], [0.42, 0.0]]), 0.43)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0)]


def brute_iou(t, p):
    ids_t = [i for i in np.unique(t) if i]
    ids_p = [j for j in np.unique(p) if j]
    out = np.zeros((len(ids_t), len(ids_p)))
    for a, i in enumerate(ids_t):
        for b, j in enumerate(ids_p):
            out[a, b] = ((t == i) & (p == j)).sum() / ((t == i) | (p == j)).sum()
    return ids_t, ids_p, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_table_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = rng.choice([0, 0, 3, 8, 9, 40], size=(12, 15))
    p = rng.choice([0, 1, 2, 5, 6, 7, 300], size=(12, 15)).astype(np.uint16)
    ids_t, ids_p, iou = iou_table(t, p)
    bt, bp, biou = brute_iou(t, p)
    assert list(ids_t) == bt and list(ids_p) == bp
    np.testing.assert_allclose(iou, biou)


def test_empty_conventions_and_errors():
    z = np.zeros((4, 4), int)
    one = z.copy()
    one[1:3, 1:3] = 1
    both = instance_scores(z, z, thresholds=(0.5,))[0]
    assert both["f1"] == both["precision"] == both["recall"] == both["pq"] == 1.0
    miss = instance_scores(one, z, thresholds=(0.5,))[0]
    assert (miss["tp"], miss["fn"], miss["fp"]) == (0, 1, 0) and miss["f1"] == 0 and miss["precision"] == 0
    spurious = instance_scores(z, one, thresholds=(0.5,))[0]
    assert spurious["fp"] == 1 and spurious["f1"] == 0 and spurious["recall"] == 0
    with pytest.raises(CytogenError, match="shape"):
        iou_table(z, np.zeros((4, 5), int))
    with pytest.raises(CytogenError, match="integer"):
        instance_scores(z.astype(float), z)
    with pytest.raises(CytogenError, match="thresholds"):
        instance_scores(z, z, thresholds=(0.0,))


def test_aggregate_pools_counts():
    a = instance_scores(TRUE, PRED, thresholds=(0.5, 0.75))
    b = instance_scores(TRUE, TRUE, thresholds=(0.5, 0.75))  # 3 perfect matches
    pooled = aggregate_scores([a, b])
    p5 = pooled[0]
    assert (p5["tp"], p5["fp"], p5["fn"], p5["n_fields"]) == (5, 1, 1, 2)
    assert p5["f1"] == pytest.approx(10 / 12) and p5["ap"] == pytest.approx(5 / 7)
    assert p5["mean_matched_iou"] == pytest.approx(4.5 / 5) and p5["pq"] == pytest.approx(4.5 / 6)
    p75 = pooled[1]
    assert (p75["tp"], p75["fp"], p75["fn"]) == (4, 2, 2) and p75["precision"] == pytest.approx(4 / 6)
    with pytest.raises(CytogenError, match="same thresholds"):
        aggregate_scores([a, instance_scores(TRUE, PRED, thresholds=(0.5, 0.9))])
    with pytest.raises(CytogenError):
        aggregate_scores([])


def test_jaccard_binary():
    assert jaccard_binary(np.array([[1, 1, 0, 0]]), np.array([[0, 2, 2, 0]])) == pytest.approx(1 / 3)
    assert jaccard_binary(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert jaccard_binary(np.ones((2, 2)), np.zeros((2, 2))) == 0.0
    with pytest.raises(CytogenError, match="shape"):
        jaccard_binary(np.zeros(3), np.zeros(4))


# ------------------------------------------------------------------------------ real data
def _need(folder: str) -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data not available")
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"../shared/data/{folder} not available")
    return path


def test_dsb2018_fluorescence_segmentation_agrees_with_labels():
    from cytogen.io.images import read_image

    root = _need("dsb2018_nuclei")
    with open(root / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["modality_guess"] == "fluorescence_gray" and r["shape"] == "(256, 256)"]
    assert len(rows) >= 5
    per_field = {"otsu": [], "li": []}
    for r in rows:
        img = read_image(root / "images" / f"{r['id']}.png").data[0]
        lab = read_image(root / "labels" / f"{r['id']}.tif").data[0]
        for method, scores in per_field.items():
            scores.append(instance_scores(lab, segment_nuclei(img, threshold=method), thresholds=(0.5, 0.75)))
    otsu, li = aggregate_scores(per_field["otsu"]), aggregate_scores(per_field["li"])
    # measured on the 13 fields (256 x 256): otsu F1@0.5 = 0.772, li F1@0.5 = 0.831
    assert otsu[0]["f1"] > 0.72 and li[0]["f1"] > 0.78
    assert otsu[1]["f1"] < otsu[0]["f1"]


def test_cells3d_nuclei_segmentation_3d():
    from cytogen.io.images import read_image

    root = _need("cells3d_nuclei")
    img = read_image(root / "nuclei.tif").data[0]
    lab = read_image(root / "nuclei_label.tif").data[0]
    assert img.ndim == 3
    ps = (0.29, 0.26, 0.26)  # cells3d voxel size (scikit-image docs); not stored in the file
    seg = segment_nuclei(img, pixel_size_um=ps, min_separation_um=5.0, min_area_um2=20.0)
    s = instance_scores(lab, seg, thresholds=(0.5,))[0]
    # measured: 24 objects for 20 labelled nuclei, tp 19, F1@0.5 = 0.864
    assert s["f1"] > 0.8 and s["tp"] >= 17
