"""`cytogen evaluate objects` on planted nuclei with known offsets."""

import csv
import json

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.io.images import Image, write_image
from cytogen.evaluate.pipeline import ObjectSettings
from cytogen.evaluate.summary import compute_object_metrics
from cytogen.workflows.evaluate_objects import collect_pairs

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
    res = compute_object_metrics(collect_pairs(pred_dir, truth_dir), ObjectSettings(radii=[4.0, 1.0]))
    s = res.summary
    assert s["unit"] == "um" and s["n_true"] == 36 and s["n_pred"] == 35
    # matching cut-off = largest radius (4 um): the 10 px (5 um) and 20 px (10 um) shifts stay unmatched
    assert s["n_matched"] == int(np.sum(shifts_um <= 4.0))
    np.testing.assert_allclose(np.sort(res.dist_matched), np.sort(shifts_um[shifts_um <= 4.0]), atol=1e-6)
    w4, w1 = s["within"]
    assert (w4["k"], w4["n"]) == (int(np.sum(shifts_um <= 4.0)), 35)
    assert w1["k"] == int(np.sum(shifts_um <= 1.0))
    from scipy.stats import binomtest
    ci = binomtest(w4["k"], 35).proportion_ci(0.95, method="exact")
    assert (w4["cp_low"], w4["cp_high"]) == pytest.approx((ci.low, ci.high))
    # chance in a 80x80 um field for r = 4 um is about pi*16/6400 (less for nuclei near edges)
    assert 0 < w4["chance_image_per_nucleus"] <= np.pi * 16 / 6400 * 1.02
    assert w4["log10_p_image_per_nucleus"] < -20
    assert s["nuclear_radius"] == pytest.approx(4.0, rel=0.05)
    # the honest null: per field the union of discs of the real nuclei, counted pixel by pixel
    # (brute force), given to each predicted nucleus of that field; n = the predicted nuclei
    yy, xx = np.mgrid[:160, :160]
    per_pred = []
    for f in res.fields:
        c = f.objects_true.centroid_px
        near = np.min([((yy - cy) * PX) ** 2 + ((xx - cx) * PX) ** 2 for cy, cx in c], axis=0) <= 4.0**2
        per_pred += [near.mean()] * len(f.objects_pred)
    assert len(per_pred) == 35
    assert w4["chance_image_union"] == pytest.approx(np.mean(per_pred), rel=1e-12)
    assert w4["chance_image_union"] > 8 * w4["chance_image_per_nucleus"]  # 9 nuclei per field
    from cytogen.evaluate.stats import binom_log10_sf
    assert w4["log10_p_image_union"] == pytest.approx(binom_log10_sf(w4["k"], 35, np.mean(per_pred)))
    assert w4["log10_p_image_union"] > w4["log10_p_image_per_nucleus"]
    assert "ANY real centroid" in s["null_model"]["image_union"] and "binomial" in s["null_model"]["test"]
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
                                 ObjectSettings(pixel_size_um=1.0))
    s = res.summary
    assert s["n_true"] == s["n_pred"] == s["n_matched"] > 200
    assert all(w["fraction"] == 1.0 for w in s["within"])
    assert s["instance_scores"][0]["f1"] == 1.0


def _manifest(tmp_path, truth_dir, pixel_size):
    """A manifest over the planted fields, each with a cell-like source image (nuclei grown 10 px)."""
    from scipy import ndimage

    from cytogen.io.images import read_image

    rows = ["name,source,target,split,pixel_size_um"]
    for t in sorted(truth_dir.glob("f*.tif")):
        img = read_image(t)
        cells = ndimage.binary_dilation(img.data[0] > 0, iterations=10).astype(np.float32)
        write_image(tmp_path / f"src_{t.name}", Image(cells[None], "CYX"))
        write_image(t, Image(img.data, "CYX"))  # strip the metadata: only the manifest knows the size
        rows.append(f"{t.stem},src_{t.name},{t.relative_to(tmp_path)},test,{pixel_size}")
    path = tmp_path / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_manifest_pixel_size_is_applied_and_flag_wins(planted, tmp_path):
    truth_dir, pred_dir, shifts_um = planted
    for p in pred_dir.iterdir():
        from cytogen.io.images import read_image
        img = read_image(p)
        write_image(p, Image(img.data, "CYX"))
    m = _manifest(tmp_path, truth_dir, PX)
    res = compute_object_metrics(collect_pairs(pred_dir, m, "test"), ObjectSettings(radii=[4.0]))
    s = res.summary
    assert (s["unit"], s["pixel_size_source"]) == ("um", "manifest pixel_size_um column")
    np.testing.assert_allclose(np.sort(res.dist_matched), np.sort(shifts_um[shifts_um <= 4.0]), atol=1e-6)
    assert res.field_rows[0]["pixel_size_source"] == "manifest pixel_size_um column"
    # cell-region nulls exist with a source image; union >= the per-nucleus value, both in (0, 1]
    w = s["within"][0]
    assert 0 < w["chance_region_per_nucleus"] <= w["chance_region_union"] <= 1
    assert w["log10_p_region_union"] is not None and w["log10_p_region_union"] <= 0
    # the flag wins over the manifest column: at 1 um per pixel every distance doubles
    res2 = compute_object_metrics(collect_pairs(pred_dir, m, "test"),
                                  ObjectSettings(radii=[20.0], pixel_size_um=1.0))
    assert res2.summary["pixel_size_source"] == "--pixel-size-um"
    np.testing.assert_allclose(np.sort(res2.dist_matched), np.sort(shifts_um * 2), atol=1e-6)


def test_match_bbox_best_shares_real_nuclei_and_is_reported(planted, tmp_path):
    truth_dir, pred_dir, _ = planted
    from cytogen.io.images import read_image
    img = read_image(pred_dir / "f1.tif")  # split one predicted nucleus into two halves
    data = img.data.copy()
    from scipy import ndimage
    lab, _ = ndimage.label(data[0] > 0)
    rows, cols = np.nonzero(lab == 1)
    cx = int(round(cols.mean()))
    data[0, rows.min():rows.max() + 1, cx - 1:cx + 2] = 0  # a 3 px cut through the first nucleus
    write_image(pred_dir / "f1.tif", Image(data, img.axes, img.pixel_size_um))
    best = compute_object_metrics(collect_pairs(pred_dir, truth_dir), ObjectSettings(match="bbox-best")).summary
    one = compute_object_metrics(collect_pairs(pred_dir, truth_dir), ObjectSettings(match="bbox")).summary
    assert best["n_pred"] == one["n_pred"] == 36
    assert best["n_matched"] > one["n_matched"] and best["n_true_matched"] == one["n_true_matched"]
    assert "Vasudevan" in best["match_rule"] and "one-to-one" in one["match_rule"]
    out = tmp_path / "o"
    assert main(["evaluate", "objects", "--pred", str(pred_dir), "--truth", str(truth_dir), "--out", str(out),
                 "--match", "bbox-best"]) == 0
    assert json.loads((out / "summary.json").read_text())["match"] == "bbox-best"
    assert "bbox-best" in (out / "report.html").read_text()


def test_output_folder_is_all_or_nothing(planted, tmp_path, monkeypatch):
    from cytogen.workflows import evaluate_objects as wf

    truth_dir, pred_dir, _ = planted
    out = tmp_path / "eval"

    def broken(*a, **k):
        raise RuntimeError("report writer failed")

    monkeypatch.setattr(wf, "write_report", broken)
    with pytest.raises(RuntimeError):
        wf.evaluate_objects(pred_dir, truth_dir, out, progress=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".eval")] == []
    monkeypatch.undo()
    wf.evaluate_objects(pred_dir, truth_dir, out, progress=False, settings=ObjectSettings(radii=[4.0]))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"objects.csv", "fields.csv", "summary.json", "report.html"}
    monkeypatch.setattr(wf, "write_report", broken)  # fails after the tables were written
    with pytest.raises(RuntimeError):
        wf.evaluate_objects(pred_dir, truth_dir, out, progress=False, settings=ObjectSettings(radii=[1.0]))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a folder holding other files is refused rather than replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["evaluate", "objects", "--pred", str(pred_dir), "--truth", str(truth_dir),
                 "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
