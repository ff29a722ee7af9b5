"""`cytogen evaluate objects` on planted nuclei with known offsets."""

import csv
import json

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.io.images import Image, write_image
from cytogen.workflows.objects import ObjectSettings, collect_pairs, compute_object_metrics

PX = 0.5  # um per pixel


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1.0
    return img


@pytest.fixture()
def planted(tmp_path):
    """4 fields x 9 real nuclei (radius 8 px = 4 um); predictions shifted by known amounts."""
    rng = np.random.default_rng(0)
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    shifts_px = [0.0, 1.0, 3.0, 6.0, 10.0, 20.0, 0.0, 1.0, 3.0]  # per nucleus, along x
    expected = []
    for f in range(4):
        centres = [(30 + 45 * (i // 3) + rng.integers(-3, 4), 30 + 45 * (i % 3) + rng.integers(-3, 4))
                   for i in range(9)]
        moved = [(cy, cx + s) for (cy, cx), s in zip(centres, shifts_px)]
        keep = [i for i in range(9) if not (f == 0 and i == 8)]  # one prediction missing in field 0
        write_image(truth_dir / f"f{f}.tif", Image(_discs((160, 160), centres, 8)[None], "CYX", (PX, PX)))
        write_image(pred_dir / f"f{f}.tif",
                    Image(_discs((160, 160), [moved[i] for i in keep], 8)[None], "CYX", (PX, PX)))
        expected += [shifts_px[i] * PX for i in keep]
    return truth_dir, pred_dir, np.array(expected)


def test_known_offsets_give_exact_fractions_and_distances(planted):
    truth_dir, pred_dir, shifts_um = planted
    res = compute_object_metrics(collect_pairs(pred_dir, truth_dir), ObjectSettings(radii=[4.0, 1.0]),
                                 progress=False)
    s = res["summary"]
    assert s["unit"] == "um" and s["n_true"] == 36 and s["n_pred"] == 35
    # matching cut-off = largest radius (4 um): the 10 px (5 um) and 20 px (10 um) shifts stay unmatched
    assert s["n_matched"] == int(np.sum(shifts_um <= 4.0))
    np.testing.assert_allclose(np.sort(res["dist_matched"]), np.sort(shifts_um[shifts_um <= 4.0]), atol=1e-6)
    w4, w1 = s["within"]
    assert (w4["k"], w4["n"]) == (int(np.sum(shifts_um <= 4.0)), 35)
    assert w1["k"] == int(np.sum(shifts_um <= 1.0))
    from scipy.stats import binomtest
    ci = binomtest(w4["k"], 35).proportion_ci(0.95, method="exact")
    assert (w4["cp_low"], w4["cp_high"]) == pytest.approx((ci.low, ci.high))
    # chance in a 80x80 um field for r = 4 um is about pi*16/6400 (less for nuclei near edges)
    assert 0 < w4["chance_image"] <= np.pi * 16 / 6400 * 1.02
    assert w4["log10_p_image"] < -20
    assert s["nuclear_radius"] == pytest.approx(4.0, rel=0.05)
    # instance scores: only unshifted discs overlap perfectly
    assert s["instance_scores"][-1]["tp"] == int(np.sum(shifts_um == 0))


def test_cli_writes_tables_summary_and_report(planted, tmp_path, capsys):
    truth_dir, pred_dir, shifts_um = planted
    out = tmp_path / "eval"
    assert main(["evaluate", "objects", "--pred", str(pred_dir), "--truth", str(truth_dir), "--out", str(out),
                 "--radius-um", "4,1,nuclear", "--match", "bbox"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [w["radius"].split(" ")[0] for w in summary["within"]] == ["4", "1", "nuclear"]
    with open(out / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["kind"] == "true" for r in rows) == 36 and sum(r["kind"] == "pred" for r in rows) == 35
    assert len((out / "fields.csv").read_text().strip().splitlines()) == 5
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "Clopper-Pearson" in html
    assert isinstance(summary["markers"], dict) and summary["markers"]["n_true"] >= 30


def test_pixel_size_needed_for_um_radii(planted, tmp_path, capsys):
    truth_dir, pred_dir, _ = planted
    for p in list(truth_dir.iterdir()) + list(pred_dir.iterdir()):  # strip pixel sizes
        from cytogen.io.images import read_image
        img = read_image(p)
        write_image(p, Image(img.data, img.axes))
    assert main(["evaluate", "objects", "--pred", str(pred_dir), "--truth", str(truth_dir), "--out",
                 str(tmp_path / "e"), "--radius-um", "4"]) == 2
    assert "--pixel-size-um" in capsys.readouterr().err
    assert main(["evaluate", "objects", "--pred", str(pred_dir), "--truth", str(truth_dir), "--out",
                 str(tmp_path / "e2"), "--pixel-size-um", "0.5", "--radius-um", "4"]) == 0
    assert json.loads((tmp_path / "e2" / "summary.json").read_text())["unit"] == "um"
    assert main(["evaluate", "objects", "--pred", str(pred_dir), "--truth", str(truth_dir), "--out",
                 str(tmp_path / "e3")]) == 0
    assert json.loads((tmp_path / "e3" / "summary.json").read_text())["unit"] == "px"


def test_real_sbs_nuclei_against_themselves(shared_data, tmp_path):
    """Real Hoechst fields scored against themselves: everything found, at distance 0."""
    import shutil

    src = shared_data / "sbs_translocation"
    for d in ("truth", "pred"):
        (tmp_path / d).mkdir()
        for name in ("Channel2-73-G-01.tif", "Channel2-80-G-08.tif"):
            shutil.copy(src / name, tmp_path / d / name)
    res = compute_object_metrics(collect_pairs(tmp_path / "pred", tmp_path / "truth"),
                                 ObjectSettings(pixel_size_um=1.0), progress=False)
    s = res["summary"]
    assert s["n_true"] == s["n_pred"] == s["n_matched"] > 200
    assert all(w["fraction"] == 1.0 for w in s["within"])
    assert s["instance_scores"][0]["f1"] == 1.0
