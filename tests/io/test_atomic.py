"""cytogen.io.atomic: complete versions or the old one, never a torn file, never a stray temp."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from cytogen.io.atomic import atomic_dir, atomic_file, temp_sibling, write_bytes, write_json, write_text

CTX = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


class Boom(RuntimeError):
    pass


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_file_writer_that_raises_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_text(tmp_path / "result.csv", "old version\n")
    with pytest.raises(Boom):
        with atomic_file(path) as tmp:
            tmp.write_text("half of the new vers")
            assert tmp.parent == path.parent and tmp.name.startswith(".")
            raise Boom
    assert path.read_text() == "old version\n"
    assert _names(tmp_path) == {"result.csv"}


def test_file_writer_that_never_writes_fails_and_keeps_the_old_file(tmp_path):
    path = write_bytes(tmp_path / "a.bin", b"\x01\x02")
    with pytest.raises(FileNotFoundError):
        with atomic_file(path):
            pass
    assert path.read_bytes() == b"\x01\x02" and _names(tmp_path) == {"a.bin"}


def test_folder_writer_that_raises_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    out = tmp_path / "set"
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a1")
    with pytest.raises(Boom):
        with atomic_dir(out) as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("a2")
            raise Boom
    assert _names(out) == {"a.txt"} and (out / "a.txt").read_text() == "a1"
    assert _names(tmp_path) == {"set"}


def test_folder_writer_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert _names(out) == {"new.txt"}  # nothing of the old folder survives
    assert _names(tmp_path) == {"set"}  # the moved-aside old folder is deleted


def test_folder_swap_that_fails_puts_the_old_folder_back(tmp_path, monkeypatch):
    import errno

    import cytogen.io.atomic as atomic

    out = tmp_path / "set"
    out.mkdir()
    (out / "a.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.endswith(".tmp") and Path(dst) == out and not out.exists():
            raise OSError(errno.EACCES, "permission denied (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        with atomic_dir(out) as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "old" and _names(tmp_path) == {"set"}


def test_folder_writer_may_replace_a_file(tmp_path):
    out = write_text(tmp_path / "out.zarr", "a file where a folder goes")
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        (tmp / ".zgroup").write_text("{}")
    assert out.is_dir() and _names(out) == {".zgroup"} and _names(tmp_path) == {"out.zarr"}


def test_write_json_round_trip_keeps_nan(tmp_path):
    obj = {"r": float("nan"), "n": 3, "names": ["a", "b"]}
    back = json.loads(write_json(tmp_path / "m.json", obj).read_text())
    assert math.isnan(back["r"]) and back["n"] == 3 and back["names"] == ["a", "b"]


def _sibling_in_child(path: Path, queue) -> None:
    queue.put(str(temp_sibling(path)))


def test_temp_names_differ_per_call_and_per_process(tmp_path):
    path = tmp_path / "image.ome.tif"
    here = {temp_sibling(path) for _ in range(50)}
    assert len(here) == 50
    assert all(p.parent == tmp_path and p.name.startswith(".image.ome.tif.") for p in here)
    assert all(p.suffix == ".tif" for p in here)  # libraries that pick a format by suffix still can
    queue = CTX.Queue()
    procs = [CTX.Process(target=_sibling_in_child, args=(path, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    theirs = {Path(queue.get(timeout=60)) for _ in procs}
    for p in procs:
        p.join(60)
    assert len(theirs) == 2 and not theirs & here
    assert all(f".{os.getpid()}-" not in p.name for p in theirs)  # the pid is part of the name


def _payload(k: int) -> bytes:
    return bytes([65 + k]) * 300_000  # large enough that a torn write would be visible


def _write_file_many(path: Path, k: int, barrier, queue) -> None:
    try:
        barrier.wait(30)
        for _ in range(15):
            write_bytes(path, _payload(k))
        queue.put((k, "ok"))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put((k, repr(exc)))


def _write_dir_many(path: Path, k: int, barrier, queue) -> None:
    try:
        barrier.wait(30)
        for _ in range(150):  # many short swaps, so the writers almost surely collide
            with atomic_dir(path) as tmp:
                tmp.mkdir()
                for name in ("a.bin", "b.bin"):
                    (tmp / name).write_bytes(_payload(k)[:2000])
        queue.put((k, "ok"))
    except BaseException as exc:
        queue.put((k, repr(exc)))


def _race(target, path: Path, n: int = 2) -> dict[int, str]:
    barrier, queue = CTX.Barrier(n), CTX.Queue()
    procs = [CTX.Process(target=target, args=(path, k, barrier, queue)) for k in range(n)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    return results


def test_two_processes_writing_one_file_both_succeed_with_one_complete_version(tmp_path):
    path = tmp_path / "summary.json"
    results = _race(_write_file_many, path)
    assert results == {0: "ok", 1: "ok"}
    assert path.read_bytes() in (_payload(0), _payload(1))
    assert _names(tmp_path) == {"summary.json"}


def test_processes_writing_one_folder_all_succeed_with_one_complete_version(tmp_path):
    path = tmp_path / "model"
    results = _race(_write_dir_many, path, n=4)
    assert results == {k: "ok" for k in range(4)}
    assert _names(path) == {"a.bin", "b.bin"}
    a, b = (path / "a.bin").read_bytes(), (path / "b.bin").read_bytes()
    assert a == b and a in {_payload(k)[:2000] for k in range(4)}  # both files from the same writer
    assert _names(tmp_path) == {"model"}
