"""User mistakes everywhere they enter: one clear error naming the problem, exit 2, no traceback,
inputs untouched, no partial output."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytogen.cli import main
from cytogen.io.images import Image, write_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["--set", "model.kwargs.base_channels=4", "--set", "model.kwargs.depth=2", "--set", "data.patch_size=[32,32]",
        "--set", "data.batch_size=2", "--set", "data.patches_per_epoch=4", "--set", "data.val_patches=2"]


def _field(rng, shape=(64, 64)):
    return (rng.random(shape) * 200).astype(np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A valid 2D dataset, a trained tiny model, and a 3D image."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = ["name,source,target,split"]
    for i in range(4):
        tifffile.imwrite(root / "img" / f"s{i}.tif", _field(rng))
        tifffile.imwrite(root / "img" / f"t{i}.tif", _field(rng))
        rows.append(f"f{i},img/s{i}.tif,img/t{i}.tif,{'val' if i == 3 else 'train'}")
    (root / "good.csv").write_text("\n".join(rows) + "\n")
    (root / "seg.csv").write_text("name,source,nuclei\ns0,img/s0.tif,img/t0.tif\n")
    assert main(["train", str(CONFIGS / "translate_unet2d.yaml"), "--data", str(root / "good.csv"),
                 "--out", str(root / "run"), "--max-steps", "2", *TINY]) == 0
    (root / "in").mkdir()
    tifffile.imwrite(root / "in" / "img3d.tif", rng.random((8, 32, 32)).astype(np.float32))
    (root / "fl").mkdir()
    write_image(root / "fl" / "a.tif", Image(rng.random((1, 16, 16)).astype(np.float32), "CYX"))
    return root


def _manifest(root: Path, name: str, body: str, *, extra_row: bool = False) -> str:
    """Write a manifest; ``extra_row`` appends a valid field, so a run has one to hold out for validation
    and the case fails on its own mistake, not on the missing validation field."""
    if extra_row:
        body += "img/s1.tif,img/t1.tif" + "," * (body.splitlines()[0].count(",") - 1) + "\n"
    (root / name).write_text(body)
    return str(root / name)


def _file(root: Path, name: str, data: bytes) -> str:
    (root / "in" / name).write_bytes(data)
    return str(root / "in" / name)


def _nan_tif(root: Path) -> str:
    a = np.ones((64, 64), np.float32)
    a[3, 3] = np.nan
    tifffile.imwrite(root / "in" / "nan.tif", a)
    return str(root / "in" / "nan.tif")


def _truncated(root: Path) -> str:
    tifffile.imwrite(root / "in" / "full.tif", np.ones((64, 64), np.uint16))
    data = (root / "in" / "full.tif").read_bytes()
    return _file(root, "trunc.tif", data[: len(data) // 2])


def _damaged_model(root: Path, what: str) -> str:
    dst = root / f"model_{what}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(root / "run" / "model", dst)
    meta = json.loads((dst / "model.json").read_text())
    if what == "arch":
        meta["architecture"]["name"] = "not_a_net"
    elif what == "version":
        meta["format_version"] = 99
    elif what == "weights":
        (dst / "weights.safetensors").write_bytes(b"\x00" * 100)
    elif what == "json":
        (dst / "model.json").write_text("{not json")
        return str(dst)
    (dst / "model.json").write_text(json.dumps(meta))
    return str(dst)


def _two_channel(root: Path) -> str:
    write_image(root / "in" / "two.tif", Image(np.zeros((2, 40, 40), np.float32), "CYX"))
    return str(root / "in" / "two.tif")


def _recipe(root: Path, name: str, text: str) -> str:
    (root / name).write_text(text)
    return str(root / name)


R = "{root}"
TRAIN = ["train", str(CONFIGS / "translate_unet2d.yaml"), "--data"]
CASES = {
    # manifests
    "manifest missing": (lambda r: TRAIN + [f"{r}/none.csv", "--out", f"{r}/o1"], "manifest not found"),
    "manifest no target column": (lambda r: TRAIN + [_manifest(r, "m1.csv", "source\nimg/s0.tif\n"), "--out", f"{r}/o"], "columns"),
    "manifest unknown column": (lambda r: TRAIN + [_manifest(r, "m2.csv", "source,target,x\nimg/s0.tif,img/t0.tif,1\n"), "--out", f"{r}/o"], "unknown manifest column"),
    "manifest duplicate names": (lambda r: TRAIN + [_manifest(r, "m3.csv", "name,source,target\na,img/s0.tif,img/t0.tif\na,img/s1.tif,img/t1.tif\n"), "--out", f"{r}/o"], "duplicate field name"),
    "manifest path missing": (lambda r: TRAIN + [_manifest(r, "m4.csv", "source,target\nimg/zz.tif,img/t0.tif\n"), "--out", f"{r}/o"], "does not exist"),
    "manifest bad split": (lambda r: TRAIN + [_manifest(r, "m5.csv", "source,target,split\nimg/s0.tif,img/t0.tif,training\n"), "--out", f"{r}/o"], "split"),
    "manifest pixel size zero": (lambda r: TRAIN + [_manifest(r, "m6.csv", "source,target,pixel_size_um\nimg/s0.tif,img/t0.tif,0\n"), "--out", f"{r}/o"], "positive"),
    "manifest no train rows": (lambda r: TRAIN + [_manifest(r, "m7.csv", "source,target,split\nimg/s0.tif,img/t0.tif,test\n"), "--out", f"{r}/o"], "split=train"),
    # images
    "zero-byte tiff": (lambda r: TRAIN + [_manifest(r, "m8.csv", f"source,target\n{_file(r, 'zero.tif', b'')},img/t0.tif\n", extra_row=True), "--out", f"{r}/o"], "zero.tif"),
    "truncated tiff": (lambda r: TRAIN + [_manifest(r, "m9.csv", f"source,target\n{_truncated(r)},img/t0.tif\n", extra_row=True), "--out", f"{r}/o"], "trunc.tif"),
    "garbage png": (lambda r: ["predict", f"{r}/run/model", _file(r, "bad.png", b"\x89PNG\r\n\x1a\nxxxx"), "--out", f"{r}/o"], "bad.png"),
    "unsupported suffix": (lambda r: ["predict", f"{r}/run/model", _file(r, "a.jpg", b"abc"), "--out", f"{r}/o"], "a.jpg"),
    "shape mismatch": (lambda r: TRAIN + [_manifest(r, "m10.csv", "source,target\nimg/s0.tif,in/img3d.tif\n", extra_row=True), "--out", f"{r}/o"], "same size"),
    "channel out of range": (lambda r: TRAIN + [_manifest(r, "m11.csv", "source,target\nimg/s0.tif#c=3,img/t0.tif\n", extra_row=True), "--out", f"{r}/o"], "channel"),
    "nan pixels": (lambda r: TRAIN + [_manifest(r, "m12.csv", f"source,target\n{_nan_tif(r)},img/t0.tif\n", extra_row=True), "--out", f"{r}/o"], "NaN"),
    "mask shape mismatch": (lambda r: TRAIN + [_manifest(r, "m13.csv", "source,target,mask\nimg/s0.tif,img/t0.tif,in/img3d.tif\n", extra_row=True), "--out", f"{r}/o"], "mask"),
    "patch larger than field": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o2", "--set", "data.patch_size=[128,128]"], "patch_size"),
    "3d recipe on 2d data": (lambda r: ["train", str(CONFIGS / "translate_unet3d.yaml"), "--data", f"{r}/good.csv", "--out", f"{r}/o3"], "2D"),
    # recipes
    "recipe missing": (lambda r: ["train", f"{r}/none.yaml", "--data", f"{r}/good.csv", "--out", f"{r}/o"], "recipe file not found"),
    "recipe bad yaml": (lambda r: ["train", _recipe(r, "bad.yaml", "model: [x\n"), "--data", f"{r}/good.csv", "--out", f"{r}/o"], "YAML"),
    "recipe unknown key": (lambda r: ["train", _recipe(r, "k.yaml", "trian: {}\n"), "--data", f"{r}/good.csv", "--out", f"{r}/o"], "unknown key"),
    "recipe wrong type": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o", "--set", "train.max_steps=lots"], "integer"),
    "recipe bad choice": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o", "--set", "loss.name=huber"], "choose one of"),
    "unknown architecture kwarg": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o4", "--set", "model.kwargs.wings=2", *TINY], "wings"),
    "devices not a count": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o", "--accelerator", "cpu", "--devices", "abc", *TINY], "Lightning refused"),
    "unknown strategy": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o", "--strategy", "nonsense", *TINY], "Lightning refused"),
    "no-fast with compile": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o", "--no-fast", "--compile", *TINY], "contradict"),
    "resume with nothing": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/o5", "--resume"], "nothing to resume"),
    "run folder has checkpoints": (lambda r: TRAIN + [f"{r}/good.csv", "--out", f"{r}/run"], "--resume"),
    # models and prediction
    "model folder missing": (lambda r: ["predict", f"{r}/nomodel", f"{r}/img/s0.tif", "--out", f"{r}/o"], "not a cytogen model folder"),
    "model unknown architecture": (lambda r: ["predict", _damaged_model(r, "arch"), f"{r}/img/s0.tif", "--out", f"{r}/o"], "unknown architecture"),
    "model incompatible version": (lambda r: ["predict", _damaged_model(r, "version"), f"{r}/img/s0.tif", "--out", f"{r}/o"], "format"),
    "model corrupt weights": (lambda r: ["predict", _damaged_model(r, "weights"), f"{r}/img/s0.tif", "--out", f"{r}/o"], "weights"),
    "model corrupt json": (lambda r: ["predict", _damaged_model(r, "json"), f"{r}/img/s0.tif", "--out", f"{r}/o"], "JSON"),
    "wrong channel count": (lambda r: ["predict", f"{r}/run/model", _two_channel(r), "--out", f"{r}/o6"], "2 channel"),
    "3d image into 2d model": (lambda r: ["predict", f"{r}/run/model", f"{r}/in/img3d.tif", "--out", f"{r}/o7"], "3D"),
    "out equals input folder": (lambda r: ["predict", f"{r}/run/model", f"{r}/img/s0.tif", "--out", f"{r}/img"], "input folder"),
    "out inside input folder": (lambda r: ["predict", f"{r}/run/model", f"{r}/img/s0.tif", "--out", f"{r}/img/pred"], "input folder"),
    "files and manifest both": (lambda r: ["predict", f"{r}/run/model", f"{r}/img/s0.tif", "--data", f"{r}/good.csv", "--out", f"{r}/o"], "not both"),
    # evaluation
    "eval pred folder missing": (lambda r: ["evaluate", "pixels", "--pred", f"{r}/nopred", "--truth", f"{r}/good.csv", "--out", f"{r}/e"], "not found"),
    "eval no matching names": (lambda r: ["evaluate", "pixels", "--pred", f"{r}/run", "--truth", f"{r}/good.csv", "--out", f"{r}/e"], "no prediction matches"),
    "objects um radius without pixel size": (lambda r: ["evaluate", "objects", "--pred", f"{r}/img", "--truth", f"{r}/img", "--out", f"{r}/e2", "--radius-um", "4"], "--pixel-size-um"),
    "objects negative pixel size": (lambda r: ["evaluate", "objects", "--pred", f"{r}/img", "--truth", f"{r}/img", "--out", f"{r}/e3", "--pixel-size-um", "-1"], "positive"),
    "objects labels flag on float image": (lambda r: ["evaluate", "objects", "--pred", f"{r}/fl", "--truth", f"{r}/fl", "--out", f"{r}/e4", "--labels"], "--labels"),
    "demo into non-empty folder": (lambda r: ["demo", "--out", f"{r}/img"], "not empty"),
    # data preparation
    "synthesize into non-empty folder": (lambda r: ["synthesize", "cells", "--out", f"{r}/img"], "not empty"),
    "synthesize zero fields": (lambda r: ["synthesize", "cells", "--out", f"{r}/s1", "--n-fields", "0"], "n_fields"),
    "manifest builder no match": (lambda r: ["manifest", f"{r}/img", "--source", "zz*.tif", "--target", "t*.tif", "--out", f"{r}/mm.csv"], "no file matches"),
    # the Statistical Cell
    "cells extract no fields csv": (lambda r: ["cells", "extract", "--data", f"{r}/nofields.csv", "--out", f"{r}/c"], "FIELDS.csv"),
    "cells extract a manifest, not FIELDS.csv": (lambda r: ["cells", "extract", "--data", f"{r}/good.csv", "--out", f"{r}/c"], "dna"),
    "synthesize statcell into non-empty folder": (lambda r: ["synthesize", "statcell", "--out", f"{r}/img"], "not empty"),
    "statcell embed no cells csv": (lambda r: ["statcell", "embed", "--reference", f"{r}/run/model", "--data", f"{r}/nocells.csv", "--out", f"{r}/e"], "cells extract"),
    "statcell sample translator folder": (lambda r: ["statcell", "sample", "--reference", f"{r}/run/model", "--out", f"{r}/e"], "statcell"),
    "statcell walk no cells csv": (lambda r: ["statcell", "walk", "--reference", f"{r}/run/model", "--data", f"{r}/nocells.csv", "--out", f"{r}/e"], "cells extract"),
    "statcell features no cells csv": (lambda r: ["statcell", "features", "--reference", f"{r}/run/model", "--data", f"{r}/nocells.csv", "--out", f"{r}/e"], "cells extract"),
    "statcell sweep translator recipe": (lambda r: ["statcell", "sweep", str(CONFIGS / "translate_unet2d.yaml"), "--data", f"{r}/nocells.csv", "--out", f"{r}/e"], "not a Statistical Cell"),
    "statcell coupling model missing": (lambda r: ["statcell", "coupling", "--target", f"{r}/nomodel", "--data", f"{r}/nocells.csv", "--out", f"{r}/e"], "not a cytogen model folder"),
    "evaluate exclusivity one single-channel folder": (lambda r: ["evaluate", "exclusivity", "--pred", f"{r}/fl", "--out", f"{r}/ex"], "at least 2 structures"),
    "evaluate shapes float images as labels": (lambda r: ["evaluate", "shapes", "--real", f"{r}/fl", "--pred", f"{r}/fl", "--out", f"{r}/sh"], "non-integer"),
    "evaluate positions objects folder missing": (lambda r: ["evaluate", "positions", "--real", f"{r}/noobj", "--pred", f"{r}/fl", "--cells", f"{r}/fl", "--nuclei", f"{r}/fl", "--out", f"{r}/po"], "noobj"),
    "retrain exclusivity one model only": (lambda r: ["retrain", "exclusivity", "--models", f"{r}/run/model", "--data", f"{r}/good.csv", "--out", f"{r}/rx"], "at least 2 models"),
    # unsupervised cell segmentation
    "segment cells translator as segmenter": (lambda r: ["segment", "cells", f"{r}/run/model", "--data", f"{r}/seg.csv", "--out", f"{r}/s"], "not a cell segmenter"),
    "segment cells manifest without markers": (lambda r: ["segment", "cells", "--method", "propagate", "--data", f"{r}/good.csv", "--out", f"{r}/s"], "marker"),
    "segment cells model missing": (lambda r: ["segment", "cells", "--data", f"{r}/seg.csv", "--out", f"{r}/s"], "model folder"),
    "train cellseg on a manifest without markers": (lambda r: ["train", str(CONFIGS / "cellseg_consistency2d.yaml"), "--data", f"{r}/good.csv", "--out", f"{r}/cs"], "marker"),
    "evaluate cells pred folder missing": (lambda r: ["evaluate", "cells", "--pred", f"{r}/nopred", "--truth", f"{r}/img", "--out", f"{r}/e"], "not found"),
    # masks -> images and the nucleus segmenter
    "segment nuclei translator as segmenter": (lambda r: ["segment", "nuclei", f"{r}/run/model", "--data", f"{r}/good.csv", "--out", f"{r}/s"], "not a nucleus segmenter"),
    "synthesize from-masks translator as generator": (lambda r: ["synthesize", "from-masks", "--model", f"{r}/run/model", "--shapes", f"{r}/none.tif", "--out", f"{r}/fm", "--area-fraction", "0.2"], "masks -> image model"),
    "synthesize from-masks range reversed": (lambda r: ["synthesize", "from-masks", "--model", f"{r}/run/model", "--shapes", f"{r}/none.tif", "--out", f"{r}/fm", "--area-fraction", "0.4:0.1"], "LOW:HIGH"),
    "synthesize from-masks no shapes": (lambda r: ["synthesize", "from-masks", "--model", f"{r}/run/model", "--out", f"{r}/fm", "--area-fraction", "0.2"], "--shape-model"),
    "evaluate uncertainty spread missing": (lambda r: ["evaluate", "uncertainty", "--pred", f"{r}/fl", "--truth", f"{r}/good.csv", "--out", f"{r}/e", "--split", "all"], "no prediction matches"),
    "evaluate perceptual prediction missing": (lambda r: ["evaluate", "perceptual", "--pred", f"{r}/fl", "--truth", f"{r}/good.csv", "--out", f"{r}/e", "--no-fid"], "f0"),
    "predict ensemble member missing": (lambda r: ["predict", f"{r}/run/model", f"{r}/img/s0.tif", "--out", f"{r}/p", "--ensemble", f"{r}/nomodel"], "nomodel"),
    "predict mc-dropout without dropout": (lambda r: ["predict", f"{r}/run/model", f"{r}/img/s0.tif", "--out", f"{r}/p", "--mc-dropout", "4"], "no dropout layer"),
    "evaluate realism manifest missing": (lambda r: ["evaluate", "realism", "--real", f"{r}/none.csv", "--synthetic", f"{r}/good.csv", "--out", f"{r}/e"], "not found"),
    # export to other tools
    "export bioimageio without a test field": (lambda r: ["export", f"{r}/run/model", "--format", "bioimageio", "--authors", "A B", "--out", f"{r}/pkg.zip"], "--test-input"),
    "statcell perturbation no embeddings": (lambda r: ["statcell", "perturbation", "--embeddings", f"{r}/noemb.csv", "--out", f"{r}/e", "--condition", "dose", "--control", "0"], "embeddings.csv"),
}


def _tree(folder: Path) -> dict[str, str]:
    """Every file (with its content hash) and every folder under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_clear_line(case, world, capsys):
    argv_fn, needle = CASES[case]
    argv = argv_fn(world)  # makes the case's own inputs
    before = _tree(world)
    capsys.readouterr()
    assert main(argv) == 2, case
    err = capsys.readouterr().err.strip()
    assert err.startswith("cytogen: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    after = _tree(world)
    # inputs untouched and no partial output: nothing anywhere under the test folder changed,
    # appeared (output files, temp files, empty output folders) or went missing
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not changed, f"{case}: modified {changed}"
    assert not sorted(after.keys() - before.keys()), f"{case}: partial output {sorted(after.keys() - before.keys())}"
    assert not sorted(before.keys() - after.keys()), f"{case}: removed {sorted(before.keys() - after.keys())}"


def _leaf_commands(parser) -> set[tuple[str, ...]]:
    """Every runnable command of an argparse parser, e.g. ``("evaluate", "pixels")``."""
    import argparse

    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= {(name, *rest) for rest in _leaf_commands(sub)} or {(name,)}
    return out


def test_every_cli_command_has_a_bad_input_case(world):
    """A new command (or one whose cases were dropped) fails here until it gets a bad-input case."""
    from cytogen.cli import build_parser

    leaves = _leaf_commands(build_parser())
    assert ("evaluate", "objects") in leaves and ("train",) in leaves  # the walk finds nested commands
    covered = {leaf for fn, _ in CASES.values() for leaf in leaves if tuple(fn(world)[: len(leaf)]) == leaf}
    assert covered == leaves, f"commands without a bad-input case: {sorted(leaves - covered)}"


def test_constant_images_and_empty_masks_are_handled(tmp_path):
    """Not errors: a constant field normalises without dividing by zero; an empty mask trains."""
    (tmp_path / "img").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "img" / f"s{i}.tif", np.full((48, 48), 7, np.uint8))
        tifffile.imwrite(tmp_path / "img" / f"t{i}.tif", (np.arange(48 * 48) % 251).reshape(48, 48).astype(np.uint8))
        tifffile.imwrite(tmp_path / "img" / f"m{i}.tif", np.zeros((48, 48), np.uint8))
    (tmp_path / "m.csv").write_text("source,target,mask,split\n" + "".join(
        f"img/s{i}.tif,img/t{i}.tif,img/m{i}.tif,{'val' if i == 2 else 'train'}\n" for i in range(3)))
    assert main(["train", str(CONFIGS / "translate_unet2d.yaml"), "--data", str(tmp_path / "m.csv"), "--out",
                 str(tmp_path / "run"), "--max-steps", "2", "--set", "loss.name=masked_l1", "--set", "loss.mask=manifest",
                 *TINY]) == 0
    assert main(["predict", str(tmp_path / "run" / "model"), str(tmp_path / "img" / "s0.tif"), "--out",
                 str(tmp_path / "p")]) == 0


def test_cli_prints_cytogens_warnings_as_one_line(tmp_path):
    import warnings

    from cytogen.cli import _format_warning, main

    ours = _format_warning("12 markers but no cell", UserWarning, "/x/site-packages/cytogen/workflows/s.py", 3)
    assert ours == "cytogen: warning: 12 markers but no cell\n"
    # another library's path, not lightning's: once Lightning is imported its own formatter is the
    # default, and it drops the category for files under lightning/
    theirs = _format_warning("deprecated", DeprecationWarning, "/x/site-packages/numpy/a.py", 7, "code")
    assert "DeprecationWarning" in theirs and "a.py:7" in theirs
    before = warnings.formatwarning
    (tmp_path / "p").mkdir()
    assert main(["evaluate", "cells", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "p"),
                 "--out", str(tmp_path / "o")]) == 2
    assert warnings.formatwarning is before  # main() restores it, also after an error
