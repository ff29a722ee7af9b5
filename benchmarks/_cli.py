"""Benchmark helpers for whole-CLI figures and machine description: run ``cytogen ...`` as a
subprocess (wall time, peak RSS of that one process) and read the CPU's features."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cytogen.errors import CytogenError

#: /proc/cpuinfo flags that decide which precision and kernels are fast on a CPU
CPU_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model name, the logical CPU count and which of :data:`CPU_FLAGS` the CPU has."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"cpu_model": None, "cpus": os.cpu_count(), **{f: None for f in CPU_FLAGS}}
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"cpu_model": model, "cpus": os.cpu_count(), **{f: f in flags for f in CPU_FLAGS}}


def run_cli(args: list[str], *, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``cytogen ARGS`` (with this interpreter) and measure it.

    Returns
    -------
    dict
        ``seconds`` (wall), ``peak_rss_mib`` (the child's own ``ru_maxrss`` from ``wait4``, so
        one run's figure is not mixed with another's) and ``stderr`` (its last 2000 characters).

    Raises
    ------
    CytogenError
        When the command exits non-zero (its stderr tail in the message) or runs past ``timeout``.
    """
    cmd = [sys.executable, "-m", "cytogen.cli", *map(str, args)]
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.txt"
        t0 = time.perf_counter()
        # a small stdlib launcher forks cytogen: a child forked from this (large) process would
        # count the parent's pages in its ru_maxrss
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report), *cmd],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CytogenError(f"{' '.join(cmd)} ran past {timeout} s") from None
        seconds = time.perf_counter() - t0
        code, maxrss_kib = (int(v) for v in report.read_text().split())
        err.seek(0)
        tail = err.read()[-2000:]
    if code != 0:
        raise CytogenError(f"{' '.join(cmd)} exited {code} after {seconds:.0f} s: {tail}")
    return {"seconds": seconds, "peak_rss_mib": round(maxrss_kib / 1024, 1), "stderr": tail}


_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""
