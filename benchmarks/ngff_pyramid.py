"""Peak memory and time of a streamed OME-Zarr write with and without its multiscale pyramid.

Streams a synthetic float32 field of SIZE x SIZE pixels (the smooth waves + noise of
``benchmarks/streaming.py``, as float32 like a prediction) strip by strip into
:func:`cytogen.io.ome_zarr.create_ome_zarr` with the chunks a prediction uses (one 512-row
tile high, 1024 wide, zlib), once with level 0 only (``max_side=None``) and once with the
pyramid (levels halved until <= 1024 px), each in a fresh Python process that reports its own
peak resident memory (``VmHWM``) and the seconds spent in ``writer.write`` (the pixel writes and
the pyramid, not making the field). Then opens the written image with ome-zarr-py's Reader and
reads the smallest level, as a viewer would first. One JSON line per run.

    python benchmarks/ngff_pyramid.py [--sizes 4096 16384] [--strip 512] [--compression zlib]
                                      [--variants none 1024] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[5])
from streaming import field_rows
from cytogen.io.ome_zarr import create_ome_zarr

path, size, strip, max_side = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
compression = None if sys.argv[6] == "none" else sys.argv[6]
max_side = None if max_side == "none" else int(max_side)


def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


before = peak_kib()
write_s, t0 = 0.0, time.perf_counter()
with create_ome_zarr(path, (1, size, size), np.float32, "CYX", (0.5, 0.5), ["nucleus"], compression,
                     chunks=(1, strip, 1024), max_side=max_side) as writer:
    for start in range(0, size, strip):
        block = field_rows(start, min(size, start + strip), size)[None].astype(np.float32)
        t = time.perf_counter()
        writer.write(start, block)
        write_s += time.perf_counter() - t
    t = time.perf_counter()
write_s += time.perf_counter() - t  # finish: metadata, fsync, rename
print(json.dumps({"peak_kib": peak_kib(), "after_import_kib": before, "write_seconds": write_s,
                  "total_seconds": time.perf_counter() - t0,
                  "levels": [list(s) for s in writer.level_shapes]}))
"""

OPEN = r"""
import json, sys, time
t0 = time.perf_counter()
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
import numpy as np
t1 = time.perf_counter()
node = next(iter(Reader(parse_url(sys.argv[1], fmt=FormatV04()))()))
top = np.asarray(node.data[-1])
print(json.dumps({"open_and_read_smallest_s": time.perf_counter() - t1, "import_s": t1 - t0,
                  "smallest": list(top.shape), "n_levels": len(node.data),
                  "channel_names": node.metadata.get("channel_names")}))
"""


def _size_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def run(work: Path, size: int, strip: int, max_side: str, compression: str) -> dict:
    """One streamed write in a fresh process; returns its JSON record."""
    path = work / f"field{size}_{max_side}.ome.zarr"
    shutil.rmtree(path, ignore_errors=True)
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(size), str(strip), max_side,
                           here, compression], check=False, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"write of {size} (max_side {max_side}) failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    record = {"benchmark": "ngff_stream_write", "size": size, "dtype": "float32",
              "pyramid": max_side != "none", "max_side": max_side, "levels": child["levels"],
              "peak_rss_mib": round(child["peak_kib"] / 1024, 1),
              "rss_after_import_mib": round(child["after_import_kib"] / 1024, 1),
              "write_seconds": round(child["write_seconds"], 2),
              "total_seconds": round(child["total_seconds"], 2), "output_mib": _size_mib(path),
              "strip": strip, "chunks": [1, strip, 1024], "compression": compression}
    opened = subprocess.run([sys.executable, "-c", OPEN, str(path)], check=False, capture_output=True,
                            text=True)
    if opened.returncode == 0:
        record.update(json.loads(opened.stdout.strip().splitlines()[-1]))
    shutil.rmtree(path, ignore_errors=True)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--strip", type=int, default=512, help="rows per block (a tile row)")
    p.add_argument("--compression", default="zlib", choices=["zlib", "zstd", "none"],
                   help="chunk compressor (default zlib, as cytogen predict)")
    p.add_argument("--variants", nargs="+", default=["none", "1024"],
                   help="max_side per run: none (level 0 only) and/or a number (default: both)")
    p.add_argument("--work", type=Path, default=None, help="folder for the outputs (default temp)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cytogen_ngff_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for size in args.sizes:
            rows = []
            for m in args.variants:
                rows.append(run(work, size, args.strip, m, args.compression))
                print(json.dumps(rows[-1]), flush=True)
            if len(rows) == 2 and rows[0]["pyramid"] != rows[1]["pyramid"]:
                    print(json.dumps({"benchmark": "ngff_pyramid_cost", "size": size,
                                  "extra_peak_rss_mib": round(rows[1]["peak_rss_mib"]
                                                              - rows[0]["peak_rss_mib"], 1),
                                  "extra_write_seconds": round(rows[1]["write_seconds"]
                                                               - rows[0]["write_seconds"], 2)}),
                      flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
