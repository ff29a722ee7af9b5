"""The one atomic writer of cytogen: files and folders appear complete or not at all.

Every writer (images, manifests, CSV/JSON results, reports, figures, checkpoints, model
folders) goes through :func:`atomic_file` or :func:`atomic_dir`: the content is written under a
temporary name next to the destination that is unique per process and call (pid + random
suffix, so concurrent writers and DDP ranks never share one), flushed to disk with ``fsync``,
then renamed into place. A crash or an exception leaves the previous version (or nothing), never
a truncated file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_file", "temp_sibling", "write_bytes", "write_json", "write_text"]


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden name in ``path``'s folder, unique per process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{tag}{path.suffix}")


def _fsync_path(path: Path) -> None:
    """Flush a written file (or every file of a written folder) to disk."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; fsync it and move it onto ``path`` on success.

    The caller writes the temporary file (any library that takes a path, or ``open(tmp, "wb")``).
    On an exception it is deleted and ``path`` is untouched. The folder must exist.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _remove(path: Path) -> None:
    """Delete a moved-aside previous version (folder, file or link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


#: errno values of ``rename(folder, path)`` when something is already at ``path``.
_OCCUPIED = {errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR}


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename the folder ``tmp`` onto ``path``, moving whatever is there aside first.

    Concurrent writers of one ``path`` may each put their folder in place between another's
    "move aside" and "rename": the loser of such a race moves the winner's folder aside in turn
    and tries again, so every writer succeeds and the last one's folder stays. If the rename
    fails for any other reason, the previous version is put back.
    """
    aside: list[Path] = []
    try:
        for _ in range(1000):
            try:
                os.rename(tmp, path)
                break
            except OSError as exc:
                if exc.errno not in _OCCUPIED:
                    raise
            old = temp_sibling(path, "old")
            try:
                os.rename(path, old)
                aside.append(old)
            except FileNotFoundError:
                pass  # another writer moved it away first
        else:
            raise OSError(f"could not move a new version onto {path}: other writers kept replacing it")
    except BaseException:
        if aside and not (path.exists() or path.is_symlink()):
            os.rename(aside.pop(), path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for old in aside:
            _remove(old)
    _fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder path next to ``path``; swap it in only once complete.

    The caller creates and fills the folder. An existing ``path`` (folder or file) is moved
    aside, replaced by the new folder and then deleted; if the swap fails the old one is put
    back. On an exception the temporary folder is removed and ``path`` is untouched. Processes
    writing the same ``path`` at once all succeed; the folder of the last one to finish stays.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if tmp.exists():
            _fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **kwargs: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN/Inf allowed, as Python's json writes them)."""
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **kwargs))
