"""cytogen evaluate exclusivity: folder layouts, scales, truth metrics, bad input."""

import json

import numpy as np
import pytest

from cytogen.cli import main
from cytogen.errors import CytogenError
from cytogen.evaluate.exclusivity import exclusivity, pool_exclusivity
from cytogen.io.images import Image, write_image
from cytogen.workflows.evaluate_exclusivity import OUTPUTS, evaluate_exclusivity


def _fields(seed=0, n=2, shape=(24, 32)):
    rng = np.random.default_rng(seed)
    return {f"f{i}": rng.random((3, *shape)).astype(np.float32) for i in range(n)}


def _write_per_structure(root, fields, names=("dapi", "map2", "nfh")):
    dirs = []
    for s, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        for f, stack in fields.items():
            write_image(d / f"{f}.tif", Image(stack[s:s + 1], "CYX", (0.5, 0.5)))
        dirs.append(d)
    return dirs


def test_per_structure_folders_match_pooled_metric(tmp_path):
    fields = _fields()
    dirs = _write_per_structure(tmp_path / "pred", fields)
    s = evaluate_exclusivity(dirs, tmp_path / "out", scale="none")
    expected = pool_exclusivity([exclusivity(v, ["dapi", "map2", "nfh"]) for v in fields.values()])
    assert s["structures"] == ["dapi", "map2", "nfh"] and s["n_fields"] == 2
    assert s["prediction"]["overall"] == pytest.approx(expected.overall, rel=1e-6)
    assert s["prediction"]["pairwise"]["map2"]["nfh"] == pytest.approx(expected.pairwise[1, 2], rel=1e-6)
    assert all((tmp_path / "out" / o).is_file() for o in OUTPUTS)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["scale"] == "none"


def test_multichannel_folder_gives_the_same_as_folders(tmp_path):
    fields = _fields(1)
    dirs = _write_per_structure(tmp_path / "pred", fields)
    multi = tmp_path / "multi"
    multi.mkdir()
    for f, stack in fields.items():
        write_image(multi / f"{f}.tif", Image(stack, "CYX", (0.5, 0.5), ["dapi", "map2", "nfh"]))
    a = evaluate_exclusivity(dirs, tmp_path / "a")
    b = evaluate_exclusivity([multi], tmp_path / "b")
    assert b["structures"] == ["dapi", "map2", "nfh"]  # from the channel names
    assert a["scale"] == b["scale"] == "percentile"
    assert b["prediction"]["overall"] == pytest.approx(a["prediction"]["overall"], rel=1e-5)


def test_minmax_scale_is_invariant_to_a_structures_gain(tmp_path):
    fields = _fields(2)
    boosted = {f: v * np.array([1, 40, 1], np.float32)[:, None, None] for f, v in fields.items()}
    raw_a = evaluate_exclusivity(_write_per_structure(tmp_path / "p1", fields), tmp_path / "o1", scale="minmax")
    raw_b = evaluate_exclusivity(_write_per_structure(tmp_path / "p2", boosted), tmp_path / "o2", scale="minmax")
    none_b = evaluate_exclusivity(_write_per_structure(tmp_path / "p3", boosted), tmp_path / "o3", scale="none")
    assert raw_b["prediction"]["overall"] == pytest.approx(raw_a["prediction"]["overall"], rel=1e-5)
    assert none_b["prediction"]["fraction_highest"]["map2"] > 0.9  # unscaled, the bright one wins everywhere


def test_truth_gives_mse_jaccard_and_truth_exclusivity(tmp_path):
    truth = {}
    yy, xx = np.mgrid[:32, :32]
    for i in range(2):
        t = np.zeros((3, 32, 32), np.float32)
        t[0][(yy - 10) ** 2 + (xx - 10) ** 2 < 36] = 100       # disjoint regions: exclusive truth
        t[1][(yy - 22) ** 2 + (xx - 22) ** 2 < 36] = 100
        t[2][:, 28:] = 100
        truth[f"f{i}"] = t + 10
    blurry = {f: 0.5 * t + 0.5 * t.mean(axis=0, keepdims=True) for f, t in truth.items()}  # overlapping
    s = evaluate_exclusivity(_write_per_structure(tmp_path / "p", blurry), tmp_path / "o",
                             truth=_write_per_structure(tmp_path / "t", truth))
    assert s["scale"] == "truth"
    assert s["truth"]["overall"] > s["prediction"]["overall"] > 0
    for n in s["structures"]:
        assert s["mse"][n] > 0
        assert 0.5 < s["jaccard"][n] <= 1.0
    perfect = evaluate_exclusivity(_write_per_structure(tmp_path / "p2", truth), tmp_path / "o2",
                                   truth=_write_per_structure(tmp_path / "t2", truth))
    assert all(v == pytest.approx(0, abs=1e-10) for v in perfect["mse"].values())
    assert all(v == 1.0 for v in perfect["jaccard"].values())
    assert perfect["prediction"]["overall"] == pytest.approx(perfect["truth"]["overall"])


def test_3d_fields(tmp_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "multi"
    d.mkdir()
    stack = rng.random((2, 4, 16, 16)).astype(np.float32)
    write_image(d / "z.tif", Image(stack, "CZYX", (1.0, 0.5, 0.5), ["a", "b"]))
    s = evaluate_exclusivity([d], tmp_path / "o", scale="none")
    assert s["prediction"]["overall"] == pytest.approx(exclusivity(stack).overall, rel=1e-6)


def test_cli_and_bad_input(tmp_path, capsys):
    fields = _fields(5)
    dirs = _write_per_structure(tmp_path / "pred", fields)
    assert main(["evaluate", "exclusivity", "--pred", *map(str, dirs), "--out", str(tmp_path / "o")]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["structures"] == ["dapi", "map2", "nfh"] and shown["overall"] > 0
    # one folder of one-channel images: cannot be several structures
    assert main(["evaluate", "exclusivity", "--pred", str(dirs[0]), "--out", str(tmp_path / "bad1")]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err and "Traceback" not in err
    assert not (tmp_path / "bad1").exists()
    # no common field names
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "zzz.tif", Image(fields["f0"][:1], "CYX"))
    assert main(["evaluate", "exclusivity", "--pred", str(dirs[0]), str(other), "--out", str(tmp_path / "bad2")]) == 2
    assert "no field name is present in all" in capsys.readouterr().err
    with pytest.raises(CytogenError, match="needs --truth"):
        evaluate_exclusivity(dirs, tmp_path / "bad3", scale="truth")
    with pytest.raises(CytogenError, match="not a folder"):
        evaluate_exclusivity([tmp_path / "missing", dirs[0]], tmp_path / "bad4")


def test_out_folder_with_other_files_is_refused_and_kept(tmp_path):
    dirs = _write_per_structure(tmp_path / "pred", _fields(6))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CytogenError, match="holds other files"):
        evaluate_exclusivity(dirs, out)
    assert (out / "notes.txt").read_text() == "keep me"
    evaluate_exclusivity(dirs, tmp_path / "again")
    evaluate_exclusivity(dirs, tmp_path / "again")  # a previous evaluation is replaced
