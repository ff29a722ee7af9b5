"""``cytogen evaluate shapes``: CLI round trips (2D, 3D), pixel-size sources, detection of too-large
synthetic organelles, and bad inputs (one clear error, no traceback, no OUT left)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytogen.cli import main
from cytogen.io.images import Image, write_image

pytest.importorskip("pyshtools")
pytest.importorskip("sklearn")


def _ellipses(rng: np.random.Generator, n: int, grow: float = 0.0, size: int = 128) -> np.ndarray:
    """Non-overlapping random ellipses (semi-axes 4-8 px, +grow) on a grid of cells."""
    lab = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[0:size, 0:size]
    cells = [(y, x) for y in range(16, size - 8, 32) for x in range(16, size - 8, 32)]
    for i, (cy, cx) in enumerate(cells[:n]):
        a, b = rng.uniform(4, 8, 2) + grow
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        lab[(u / a) ** 2 + (v / b) ** 2 <= 1] = i + 1
    return lab


def _write(folder: Path, name: str, lab: np.ndarray, pixel: tuple | None = (0.5, 0.5)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if pixel is None:
        tifffile.imwrite(folder / f"{name}.tif", lab)
    else:
        axes = "CYX" if lab.ndim == 2 else "CZYX"
        write_image(folder / f"{name}.tif", Image(lab[None], axes, pixel))


def _run(*args: str) -> int:
    return main(["evaluate", "shapes", *args])


def test_cli_round_trip_2d_same_and_too_large(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(tmp_path / "real", f"r{i}", _ellipses(rng, 16))
        _write(tmp_path / "same", f"s{i}", _ellipses(rng, 16))
        _write(tmp_path / "big", f"b{i}", _ellipses(rng, 16, grow=2.0))
    common = ["--permutations", "199", "--degree", "8", "--k", "4,8,16"]
    assert _run("--real", str(tmp_path / "real"), "--pred", str(tmp_path / "same"), "--out",
                str(tmp_path / "o_same"), *common) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = json.loads((tmp_path / "o_same" / "summary.json").read_text())
    assert printed["n_objects"] == s["n_objects"] == {"real": 64, "generated": 64}
    assert s["units"] == "um" and s["pixel_size_source"] == "image metadata"
    assert s["descriptor_kind"] == "fourier_amplitude" and s["degree"] == 8 and s["real_split"] == "object"  # 4 images: too few to split by image
    assert len(s["pca"]["explained_variance_ratio"]) == 3 and s["not_star_shaped"] == {"real": 0, "generated": 0}
    assert s["hausdorff"]["real"]["max"] < 0.5  # ellipses reconstruct within a pixel
    assert [r["k"] for r in s["purity"]] == [4, 8, 16]
    assert all(r["p_permutation"] > 0.05 for r in s["purity"])
    rows = list(csv.DictReader(open(tmp_path / "o_same" / "objects.csv", newline="")))
    assert len(rows) == 128 and {"set", "image", "label", "size", "pc1", "pc3", "d0", "star_shaped"} <= set(rows[0])
    areas = [float(r["size"]) for r in rows if r["set"] == "real"]
    assert 0.25 * np.pi * 16 * 0.9 < min(areas) and max(areas) < 0.25 * np.pi * 64 * 1.1  # um^2
    for f in ("shapes_pca.png", "shapes_purity.png", "shapes_reconstructions.png", "report.html"):
        assert (tmp_path / "o_same" / f).stat().st_size > 1000
    assert _run("--real", str(tmp_path / "real"), "--pred", str(tmp_path / "big"), "--out",
                str(tmp_path / "o_big"), *common) == 0
    b = json.loads((tmp_path / "o_big" / "summary.json").read_text())
    assert all(r["p_permutation"] < 0.01 and r["p_real_vs_real"] < 0.05 for r in b["purity"])


def test_pixel_size_flag_wins_and_px_units_without_metadata(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(2):
        _write(tmp_path / "real", f"r{i}", _ellipses(rng, 9, size=96), pixel=None)
        _write(tmp_path / "pred", f"p{i}", _ellipses(rng, 9, size=96), pixel=None)
    args = ["--real", str(tmp_path / "real"), "--pred", str(tmp_path / "pred"), "--permutations", "20", "--k", "4"]
    assert _run(*args, "--out", str(tmp_path / "px")) == 0
    px = json.loads((tmp_path / "px" / "summary.json").read_text())
    assert px["units"] == "px" and "1 px" in px["pixel_size_source"]
    assert _run(*args, "--out", str(tmp_path / "um"), "--pixel-size-um", "0.5") == 0
    um = json.loads((tmp_path / "um" / "summary.json").read_text())
    assert um["units"] == "um" and um["pixel_size_source"] == "--pixel-size-um"
    h_px, h_um = px["hausdorff"]["real"]["max"], um["hausdorff"]["real"]["max"]
    assert h_um == pytest.approx(0.5 * h_px, rel=1e-6)


def test_cli_round_trip_3d(tmp_path):
    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[0:20, 0:40, 0:40]
    for side in ("real", "pred"):
        for i in range(2):
            lab = np.zeros((20, 40, 40), np.uint16)
            for j, (cy, cx) in enumerate([(10, 10), (10, 30), (30, 10), (30, 30)]):
                a, b, c = rng.uniform(3, 6, 3)
                lab[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 + ((zz - 10) / c * 2) ** 2 <= 1] = j + 1
            _write(tmp_path / side, f"{side}{i}", lab, pixel=(0.4, 0.2, 0.2))
    assert _run("--real", str(tmp_path / "real"), "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "o"),
                "--degree", "6", "--k", "2,4", "--permutations", "20", "--align") == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["ndim"] == 3 and s["descriptor_kind"] == "sh_coefficients" and s["descriptor_length"] == 49
    assert s["n_objects"] == {"real": 8, "generated": 8} and s["real_split"] == "object"
    assert s["hausdorff"]["real"]["max"] < 0.4  # one z voxel
    assert (tmp_path / "o" / "shapes_reconstructions.png").exists()


def _bad_labels(tmp_path: Path, kind: str) -> tuple[Path, str]:
    good = tmp_path / "good"
    _write(good, "g", _ellipses(np.random.default_rng(3), 4, size=96))
    bad = tmp_path / kind
    bad.mkdir()
    if kind == "empty":
        return bad, "no .tif"
    if kind == "zeros":
        _write(bad, "z", np.zeros((64, 64), np.uint16))
        return bad, "0 object(s)"
    _write(bad, "f", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    return bad, "non-integer"


@pytest.mark.parametrize("kind", ["empty", "zeros", "float"])
def test_bad_inputs_one_clear_error_no_out(tmp_path, capsys, kind):
    bad, message = _bad_labels(tmp_path, kind)
    out = tmp_path / "out"
    rc = _run("--real", str(tmp_path / "good"), "--pred", str(bad), "--out", str(out), "--permutations", "10")
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("cytogen: error:") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(bad) in err  # names the folder or file
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_synthetic_organelles_too_large_detected_same_distribution_not(tmp_path):
    """cytogen's synthetic cells: cytoplasmic organelles (nucleoli, the labels inside nuclei, left
    out) of other seeds are not told apart; the same ones grown by 1 px are."""
    from skimage.segmentation import expand_labels

    from cytogen.synth.cells import synth_field

    def organelles(seed: int) -> np.ndarray:
        f = synth_field((160, 160), organelles=True, seed=seed, pixel_size_um=0.2, noise=0.0)
        return np.where(f.nuclei > 0, 0, f.organelles)

    for s in (0, 1, 2):
        _write(tmp_path / "real", f"f{s}", organelles(s).astype(np.uint16), (0.2, 0.2))
    for s in (10, 11, 12):
        o = organelles(s).astype(np.uint16)
        _write(tmp_path / "same", f"f{s}", o, (0.2, 0.2))
        _write(tmp_path / "large", f"f{s}", expand_labels(o, 1).astype(np.uint16), (0.2, 0.2))
    common = ["--real", str(tmp_path / "real"), "--permutations", "199", "--k", "8,16", "--degree", "8"]
    assert _run(*common, "--pred", str(tmp_path / "same"), "--out", str(tmp_path / "o1")) == 0
    assert _run(*common, "--pred", str(tmp_path / "large"), "--out", str(tmp_path / "o2")) == 0
    same = json.loads((tmp_path / "o1" / "summary.json").read_text())["purity"]
    large = json.loads((tmp_path / "o2" / "summary.json").read_text())["purity"]
    assert all(r["p_permutation"] > 0.05 for r in same)
    assert all(r["p_permutation"] < 0.01 for r in large)
