"""Prediction shared by several processes (``cytogen predict --devices N``): each field written once,
the same answer as one process, resumable after a failure, and clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cytogen.cli import main
from cytogen.data.normalize import Normalizer
from cytogen.io.images import Image, read_image, write_image
from cytogen.models import build_model
from cytogen.predict.model_folder import save_model_folder
from cytogen.workflows.predict import predict
from cytogen.workflows.predict_shard import assign_ranks, remove_stale_temps

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py
needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

ARCH = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1, "kwargs": {"depth": 2, "base_channels": 4}}
SHAPES = [(48, 64), (64, 64), (80, 64), (40, 40), (64, 96), (56, 56)]  # unequal: the split balances pixels
NAMES = [f"f{i}" for i in range(len(SHAPES))]
# Explicit tiling and plain float32, so one and two processes run the very same computation.
TILING = ["--tile", "32,32", "--overlap", "0.25", "--batch-size", "2", "--no-fast", "--accelerator", "cpu"]


def _field(i: int, shape: tuple[int, int], channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(i)
    return (gaussian_filter(rng.random((channels, *shape)), (0, 2, 2)) * 1000).astype(np.float32)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """A model folder, six fields with a manifest, and their single-process predictions."""
    root = tmp_path_factory.mktemp("plate")
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=4).eval()
    fields = [_field(i, s) for i, s in enumerate(SHAPES)]
    norm = Normalizer().fit(fields)
    save_model_folder(root / "model", net, architecture=ARCH, source_norm=norm, target_norm=norm,
                      source_channels=["actin"], target_channels=["nucleus"], pixel_size_um=[0.4, 0.4],
                      patch_size=[32, 32])
    for name, f in zip(NAMES, fields):
        write_image(root / "in" / f"{name}.tif", Image(f, "CYX", (0.4, 0.4), ["actin"]))
    (root / "in" / "fields.csv").write_text(
        "name,source,split\n" + "".join(f"{n},{n}.tif,test\n" for n in NAMES))
    written = predict(root / "model", root / "ref", files=[str(root / "in" / f"{n}.tif") for n in NAMES],
                      tile=(32, 32), overlap=0.25, batch_size=2, fast=False, accelerator="cpu",
                      progress=False)
    ref = {p.stem: read_image(p).data for p in written}
    return root, ref


def _cli(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``cytogen predict MODEL --data fields.csv --out OUT --devices 2 ...`` in a fresh process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("SLURM_")}
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, "-m", "cytogen", "predict", str(root / "model"), "--data", str(root / "in" / "fields.csv"),
           "--split", "test", "--out", str(out), "--devices", "2", *TILING, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def _same_as_reference(out: Path, ref: dict[str, np.ndarray], names: list[str]) -> None:
    for n in names:
        got = read_image(out / f"{n}.tif")
        assert got.channel_names == ["nucleus"] and got.pixel_size_um == pytest.approx((0.4, 0.4))
        # equal up to float32 rounding (1 ulp at ~400 is 3e-5); another field or tiling is far off
        np.testing.assert_allclose(got.data, ref[n], rtol=1e-6, atol=1e-6 * float(np.ptp(ref[n])))


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_balanced_assignment_is_deterministic_and_known():
    assert assign_ranks([100, 50, 50, 40, 10], 2) == [0, 1, 1, 0, 1]  # loads 140 / 110
    assert assign_ranks([5, 5, 5], 4) == [0, 1, 2]  # more ranks than jobs: some idle
    pixels = [int(p) for p in np.random.default_rng(0).integers(1, 1000, 40)]
    ranks = assign_ranks(pixels, 3)
    loads = [sum(p for p, r in zip(pixels, ranks) if r == k) for k in range(3)]
    assert ranks == assign_ranks(pixels, 3) and max(loads) - min(loads) <= max(pixels)


def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "f0.tif"
    stale = [tmp_path / ".f0.tif.4242-0123abcd.tmp.tif", tmp_path / ".f0.tif.77-deadbeef.rows"]
    keep = [tmp_path / ".f0.tif.notes", tmp_path / ".f01.tif.4242-0123abcd.tmp.tif", target]
    for p in stale + keep:
        p.write_bytes(b"x")
    (tmp_path / ".f0.tif.9-00ff00ff.old").mkdir()  # a moved-aside folder (OME-Zarr)
    assert remove_stale_temps(target) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


@needs_gloo
def test_two_processes_write_each_field_once_and_resume_predicts_only_the_missing(plate, tmp_path):
    root, ref = plate
    out = tmp_path / "out"
    r = _cli(root, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote 6 prediction(s)") == 1 and "with 2 processes" in r.stdout  # rank 1 is quiet
    info = json.loads((out / "runtime.json").read_text())
    assert info["distributed"]["world_size"] == 2 and info["complete"] and info["skipped_existing"] == []
    ranks = {n: f["rank"] for n, f in info["fields"].items()}
    assert sorted(ranks) == NAMES and set(ranks.values()) == {0, 1}  # every field once, both ranks worked
    pixels = [h * w for h, w in SHAPES]
    assert [ranks[n] for n in NAMES] == assign_ranks(pixels, 2)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.tif" for n in NAMES] + ["runtime.json"])
    _same_as_reference(out, ref, NAMES)

    # a kill after four fields: two outputs missing; --resume predicts those two only
    before = {n: _stamp(out / f"{n}.tif") for n in NAMES}
    for n in ("f1", "f4"):
        (out / f"{n}.tif").unlink()
    r = _cli(root, out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 2 prediction(s)" in r.stdout and "4 already there, skipped" in r.stdout
    info = json.loads((out / "runtime.json").read_text())
    assert sorted(info["fields"]) == ["f1", "f4"] and sorted(info["skipped_existing"]) == ["f0", "f2", "f3", "f5"]
    assert {n: _stamp(out / f"{n}.tif") for n in ("f0", "f2", "f3", "f5")} == \
        {n: before[n] for n in ("f0", "f2", "f3", "f5")}  # untouched
    _same_as_reference(out, ref, NAMES)


@needs_gloo
def test_a_failing_rank_fails_the_command_and_a_resume_completes_it(plate, tmp_path):
    root, ref = plate
    data = tmp_path / "in"
    data.mkdir()
    for n in NAMES:
        (data / f"{n}.tif").write_bytes((root / "in" / f"{n}.tif").read_bytes())
    (data / "fields.csv").write_text((root / "in" / "fields.csv").read_text())
    (tmp_path / "model").symlink_to(root / "model")
    # f2 has two channels: the rank that predicts it fails there (after the plan, at prediction)
    write_image(data / "f2.tif", Image(_field(2, SHAPES[2], channels=2), "CYX", (0.4, 0.4)))
    out = tmp_path / "out"
    r = _cli(tmp_path, out)
    assert r.returncode != 0
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("cytogen: error:")]
    assert len(err_lines) == 1 and "f2.tif" in err_lines[0] and "2 channel" in err_lines[0]
    assert "--resume" in err_lines[0] and "Traceback" not in r.stderr
    info = json.loads((out / "runtime.json").read_text())
    assert not info["complete"] and [x["error"] is not None for x in info["ranks"]].count(True) == 1
    first = set(info["fields"])
    assert "f2" not in first and {n for n in NAMES if (out / f"{n}.tif").exists()} == first
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    stamps = {n: _stamp(out / f"{n}.tif") for n in first}

    # fix the input, and leave a temporary as a kill during a write would; the rerun completes
    write_image(data / "f2.tif", Image(_field(2, SHAPES[2]), "CYX", (0.4, 0.4), ["actin"]))
    (out / ".f2.tif.999999-0123abcd.tmp.tif").write_bytes(b"half a file")
    r = _cli(tmp_path, out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "runtime.json").read_text())
    assert info["complete"] and set(info["skipped_existing"]) == first
    assert set(info["fields"]) == set(NAMES) - first  # the two runs together wrote each field once
    assert {n: _stamp(out / f"{n}.tif") for n in first} == stamps
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.tif" for n in NAMES] + ["runtime.json"])
    _same_as_reference(out, ref, NAMES)


def test_single_process_resume_skips_existing_and_default_overwrites(plate, tmp_path, capsys):
    root, ref = plate
    files = [str(root / "in" / f"{n}.tif") for n in NAMES[:3]]
    args = [str(root / "model"), *files, "--out", str(tmp_path / "o"), *TILING]
    assert main(["predict", *args]) == 0
    (tmp_path / "o" / "f1.tif").unlink()
    kept = {n: _stamp(tmp_path / "o" / f"{n}.tif") for n in ("f0", "f2")}
    capsys.readouterr()
    assert main(["predict", *args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 prediction(s)" in captured.out and captured.err.count("skipped (exists)") == 2
    assert {n: _stamp(tmp_path / "o" / f"{n}.tif") for n in ("f0", "f2")} == kept
    _same_as_reference(tmp_path / "o", ref, NAMES[:3])
    assert main(["predict", *args]) == 0  # without --resume: rewritten
    assert all(_stamp(tmp_path / "o" / f"{n}.tif") != kept[n] for n in ("f0", "f2"))


@pytest.mark.parametrize("flags, message", [
    (["--devices", "0"], "--devices 0"),
    (["--devices", "-2"], "--devices -2"),
    (["--devices", "2", "--num-nodes", "0"], "--num-nodes 0"),
    (["--devices", "2", "--output-format", "tif", "DUP"], "would both be written"),
])
def test_bad_sharding_requests_exit_2_with_one_line(plate, tmp_path, capsys, flags, message):
    root, _ = plate
    files = [str(root / "in" / "f0.tif")]
    if "DUP" in flags:  # two inputs with one stem: they would share an output
        flags = [f for f in flags if f != "DUP"]
        write_image(tmp_path / "other" / "f0.tif", Image(_field(9, (40, 40)), "CYX", (0.4, 0.4), ["actin"]))
        files.append(str(tmp_path / "other" / "f0.tif"))
    assert main(["predict", str(root / "model"), *files, "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cytogen: error:") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_gpus_asked_for_where_there_are_none_are_refused(plate, tmp_path, capsys):
    root, _ = plate
    assert main(["predict", str(root / "model"), str(root / "in" / "f0.tif"), "--out", str(tmp_path / "o"),
                 "--devices", "2", "--accelerator", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cytogen: error:") and "no CUDA GPU" in err and err.count("\n") == 1


def test_more_gpus_than_the_node_has_are_refused(monkeypatch):
    from cytogen.errors import CytogenError
    from cytogen.workflows.predict_shard import _check_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _check_gpus("cuda", 2, 4)  # two per node on four nodes: fine
    with pytest.raises(CytogenError, match="--devices 4: only 2 GPU"):
        _check_gpus("cuda", 4, 1)
    with pytest.raises(CytogenError, match="mps"):
        _check_gpus("mps", 2, 1)
