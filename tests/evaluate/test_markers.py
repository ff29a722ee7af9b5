import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cytogen.errors import CytogenError
from cytogen.evaluate.markers import detect_markers, marker_errors

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def separated_centres(shape, n, min_sep, rng, margin=6.0):
    out = []
    while len(out) < n:
        c = np.array([rng.uniform(margin, s - margin) for s in shape])
        if all(np.linalg.norm(c - o) >= min_sep for o in out):
            out.append(c)
    return np.array(out)


def gaussian_blobs(shape, centres, sigma_px, rng, noise=0.02):
    grid = np.indices(shape, dtype=np.float64)
    sig = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), (len(shape),))
    img = np.zeros(shape)
    for c in centres:
        img += rng.uniform(0.6, 1.0) * np.exp(-sum((g - ci) ** 2 / (2 * s ** 2) for g, ci, s in zip(grid, c, sig)))
    return img + rng.normal(0, noise, shape)


def assert_found_all(found, centres, tol=1.5):
    assert found.shape == (len(centres), centres.shape[1])  # no spurious, none missed
    dist, idx = cKDTree(found).query(centres)
    assert dist.max() <= tol and len(set(idx.tolist())) == len(centres)


@pytest.mark.parametrize("method", ["log", "dog"])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_blobs_2d(method, seed):
    rng = np.random.default_rng(seed)
    centres = separated_centres((128, 128), 10, 20, rng)
    img = gaussian_blobs((128, 128), centres, 3.0, rng)  # diameter ~ 2 sqrt(2) sigma = 8.5 px
    assert_found_all(detect_markers(img, nucleus_diameter_px=8.5, method=method), centres)
    # the same blobs specified in um
    found = detect_markers(img, pixel_size_um=(0.5, 0.5), nucleus_diameter_um=4.25, method=method)
    assert_found_all(found, centres)


def test_default_is_difference_of_gaussians_and_finds_planted_blobs(monkeypatch):
    """The default detector is skimage's blob_dog (the marker study's DoG), never blob_log."""
    from cytogen.evaluate import markers

    calls = []
    real_dog = markers.blob_dog
    monkeypatch.setattr(markers, "blob_dog", lambda *a, **k: calls.append("dog") or real_dog(*a, **k))
    monkeypatch.setattr(markers, "blob_log", lambda *a, **k: pytest.fail("default used blob_log"))
    rng = np.random.default_rng(7)
    centres = separated_centres((128, 128), 12, 20, rng)
    img = gaussian_blobs((128, 128), centres, 3.0, rng)
    assert_found_all(markers.detect_markers(img, pixel_size_um=(0.5, 0.5), nucleus_diameter_um=4.25), centres)
    assert calls == ["dog"]


def test_planted_blobs_3d_isotropic_and_anisotropic():
    rng = np.random.default_rng(3)
    shape = (32, 64, 64)
    centres = separated_centres(shape, 6, 16, rng)
    assert_found_all(detect_markers(gaussian_blobs(shape, centres, 2.5, rng), nucleus_diameter_px=7.0), centres)
    # z voxels twice as coarse: physically round blobs are half as wide in z pixels
    img = gaussian_blobs(shape, centres, (1.25, 2.5, 2.5), rng)
    assert_found_all(detect_markers(img, pixel_size_um=(1.0, 0.5, 0.5), nucleus_diameter_um=3.5), centres)


def test_detect_constant_and_errors():
    assert detect_markers(np.zeros((32, 32))).shape == (0, 2)
    assert detect_markers(np.ones((8, 16, 16))).shape == (0, 3)
    with pytest.raises(CytogenError, match="'dog' \\(default\\) or 'log'"):
        detect_markers(np.eye(16), method="doh")
    with pytest.raises(CytogenError, match="threshold_rel"):
        detect_markers(np.eye(16), threshold_rel=1.5)


def test_marker_errors_known_fn_fp_at_15um():
    px = 0.65  # um per pixel; the test converts pixel coordinates to um
    grid = np.array([(y, x) for y in range(100, 600, 100) for x in (100, 300)], dtype=float)  # 10 true
    pred = np.concatenate([
        grid[:7] + [12.0, 16.0],           # 20 px = 13 um away: matched
        grid[7:9] + [0.0, 30.0],           # 30 px = 19.5 um away: a FN and a FP each
        [[900.0, 900.0], [50.0, 800.0]],   # far away: FP
    ])                                     # grid[9] has no prediction: FN
    e = marker_errors(grid * px, pred * px, max_distance=15.0)
    assert (e["n_true"], e["n_pred"], e["tp"], e["fn"], e["fp"]) == (10, 11, 7, 3, 4)
    assert e["fn_rate"] == pytest.approx(0.3) and e["fp_rate"] == pytest.approx(4 / 11)
    assert e["mean_distance"] == pytest.approx(13.0) and e["max_distance"] == 15.0
    # left in pixels, 15 "um" would be 15 px and miss the 20 px shifts: the conversion matters
    assert marker_errors(grid, pred, max_distance=15.0)["tp"] == 0
    assert marker_errors(grid, pred, max_distance=31.0)["tp"] == 9


def test_marker_matching_is_one_to_one_and_optimal():
    true = np.array([[0.0, 0.0], [20.0, 0.0]])
    pred = np.array([[9.0, 0.0], [-10.0, 0.0]])  # nearest-first would pair (0,0)-(9,0) and lose one
    e = marker_errors(true, pred, max_distance=15.0)
    assert (e["tp"], e["fn"], e["fp"]) == (2, 0, 0)
    e = marker_errors(np.zeros((1, 3)), np.zeros((3, 3)), max_distance=1.0)  # coincident, 3D
    assert (e["tp"], e["fp"], e["fp_rate"]) == (1, 2, pytest.approx(2 / 3))
    assert marker_errors([[0.0, 0.0]], [[0.0, 15.0]])["tp"] == 1  # inclusive limit
    empty = marker_errors(np.zeros((0, 2)), np.zeros((0, 2)))
    assert empty["tp"] == 0 and empty["fn_rate"] == 0.0 and empty["fp_rate"] == 0.0
    none_found = marker_errors(true, np.zeros((0, 2)))
    assert none_found["fn_rate"] == 1.0 and none_found["fp_rate"] == 0.0
    with pytest.raises(CytogenError, match="dimensionality"):
        marker_errors(np.zeros((2, 2)), np.zeros((2, 3)))


def test_dsb2018_markers_agree_with_labelled_nuclei():
    from cytogen.evaluate.objects import measure_objects
    from cytogen.io.images import read_image

    root = DATA / "dsb2018_nuclei"
    if not root.is_dir():
        pytest.skip("../shared/data not available")
    with open(root / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["modality_guess"] == "fluorescence_gray" and r["shape"] == "(256, 256)"]
    n_true = n_pred = tp = 0
    for r in rows:
        img = read_image(root / "images" / f"{r['id']}.png").data[0]
        cent = measure_objects(read_image(root / "labels" / f"{r['id']}.tif").data[0]).centroid_px
        e = marker_errors(cent, detect_markers(img, nucleus_diameter_px=10.0), max_distance=5.0)
        n_true, n_pred, tp = n_true + e["n_true"], n_pred + e["n_pred"], tp + e["tp"]
    # measured on the 13 fields: 367 nuclei, 406 markers, 331 within 5 px (FN 9.8 %, FP 18.5 %)
    assert 1 - tp / n_true < 0.13 and 1 - tp / n_pred < 0.23
