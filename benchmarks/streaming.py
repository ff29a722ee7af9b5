"""Peak memory and speed of streaming prediction (OME-Zarr or TIFF in and out) versus image size.

Writes synthetic uint16 fields of SIZE x SIZE pixels strip by strip (never a whole array): an
OME-Zarr for the ``ome-zarr`` format, a zlib-compressed tiled OME-TIFF
(:func:`cytogen.io.tiff.create_tiff`) for the ``tif`` format. Builds an untrained 2D U-Net model
folder, then predicts each size and format in a fresh Python process
(``cytogen.workflows.predict.predict(..., output_format=FORMAT)``) that reports its own peak
resident memory (``VmHWM`` from ``/proc/self/status``, else ``ru_maxrss``) and the prediction's
wall time. Prints one JSON line per size and format and, per format, a line with the ratio of
the largest to the smallest peak: with streaming it should stay near 1 while the pixel count
grows 16-fold from 4096 to 16384.

    python benchmarks/streaming.py [--sizes 4096 8192 16384] [--format tif|ome-zarr|both]
                                   [--base-channels 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cytogen.data.normalize import Normalizer
from cytogen.io.ome_zarr import create_ome_zarr
from cytogen.io.tiff import create_tiff
from cytogen.models import build_model
from cytogen.predict.model_folder import save_model_folder

CHILD = """
import json, resource, sys, time
model, image, out, tile, batch, threads, fmt = sys.argv[1:8]


def peak_kib():
    # VmHWM: peak RSS of this process image only (ru_maxrss can carry the parent's RSS over
    # fork + exec on Linux); ru_maxrss where /proc is missing
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


import torch
from cytogen.workflows.predict import predict
if int(threads) > 0:
    torch.set_num_threads(int(threads))
before = peak_kib()
t0 = time.perf_counter()
written = predict(model, out, files=[image], output_format=fmt, tile=(int(tile),) * 2,
                  batch_size=int(batch), progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({"peak_kib": peak_kib(), "after_import_kib": before, "seconds": seconds,
                  "written": [str(w) for w in written]}))
"""

def field_rows(start: int, stop: int, size: int, seed: int = 0) -> np.ndarray:
    """Rows ``[start, stop)`` of a smooth synthetic field (sums of separable waves) + noise."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(2 * np.pi / 400, 2 * np.pi / 40, size=(8, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(8, 2))
    y = np.arange(start, stop, dtype=np.float32)
    x = np.arange(size, dtype=np.float32)
    out = np.zeros((stop - start, size), np.float32)
    for (fy, fx), (py, px) in zip(freq, phase):
        out += np.outer(np.sin(fy * y + py), np.sin(fx * x + px)).astype(np.float32)
    noise = np.random.default_rng(seed + start).normal(0, 0.3, size=out.shape).astype(np.float32)
    return np.clip(out * 4000 + 20000 + noise * 4000, 0, 65535).astype(np.uint16)


def write_field(path: Path, size: int, strip: int = 1024) -> None:
    """A ``(1, size, size)`` uint16 OME-Zarr (``.ome.zarr``) or OME-TIFF written strip by strip."""
    if path.name.endswith(".zarr"):
        create = create_ome_zarr(path, (1, size, size), np.uint16, "CYX", (0.5, 0.5), ["actin"],
                                 "zlib", chunks=(1, strip, 1024))
    else:
        create = create_tiff(path, (1, size, size), np.uint16, "CYX", (0.5, 0.5), ["actin"], "zlib")
    with create as writer:
        for start in range(0, size, strip):
            writer.write(start, field_rows(start, min(size, start + strip), size)[None])


def make_model(folder: Path, base_channels: int, depth: int) -> None:
    """An untrained U-Net model folder with normalisers fitted on a synthetic patch."""
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=depth,
                      base_channels=base_channels).eval()
    sample = field_rows(0, 512, 512)[None]
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
            "kwargs": {"depth": depth, "base_channels": base_channels}}
    save_model_folder(folder, net, architecture=arch, source_norm=Normalizer().fit([sample]),
                      target_norm=Normalizer().fit([sample.astype(np.float32)]),
                      source_channels=["actin"], target_channels=["nucleus"],
                      pixel_size_um=[0.5, 0.5], patch_size=[256, 256])


def _size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def run_size(work: Path, size: int, fmt: str, args: argparse.Namespace) -> dict:
    """Write the input, predict it in a fresh process, return the JSON record."""
    image = work / "in" / f"field{size}.{'ome.zarr' if fmt == 'ome-zarr' else 'tif'}"
    if not image.exists():
        t0 = time.perf_counter()
        write_field(image, size)
        print(f"wrote {image} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = work / f"out{size}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", CHILD, str(work / "model"), str(image), str(out),
           str(args.tile), str(args.batch_size), str(args.threads), fmt]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prediction of size {size} ({fmt}) failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    output_mib = _size_mib(Path(child["written"][0]))
    shutil.rmtree(out, ignore_errors=True)
    mpx = size * size / 1e6
    return {"benchmark": "streaming_predict", "format": fmt, "size": size, "mpx": round(mpx, 2),
            "input_mib": _size_mib(image), "output_mib": output_mib,
            "peak_rss_mib": round(child["peak_kib"] / 1024, 1),
            "rss_after_import_mib": round(child["after_import_kib"] / 1024, 1),
            "seconds": round(child["seconds"], 2), "process_seconds": round(wall, 2),
            "mpx_per_s": round(mpx / child["seconds"], 3), "tile": args.tile,
            "batch_size": args.batch_size, "base_channels": args.base_channels,
            "depth": args.depth, "threads": args.threads or "default"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--format", choices=["tif", "ome-zarr", "both"], default="both",
                   help="input and output format of the prediction (default: both, one after the other)")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: default)")
    p.add_argument("--work", type=Path, default=None, help="folder for inputs (kept); default temp")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cytogen_streaming_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        make_model(work / "model", args.base_channels, args.depth)
        formats = ["tif", "ome-zarr"] if args.format == "both" else [args.format]
        for fmt in formats:
            rows = []
            for size in args.sizes:
                rows.append(run_size(work, size, fmt, args))
                print(json.dumps(rows[-1]), flush=True)
            peaks = [r["peak_rss_mib"] for r in rows]
            print(json.dumps({"benchmark": "streaming_predict_rss_ratio", "format": fmt,
                              "sizes": args.sizes, "peak_rss_mib": peaks,
                              "max_over_min": round(max(peaks) / min(peaks), 3),
                              "pixels_max_over_min": round(max(args.sizes) ** 2
                                                           / min(args.sizes) ** 2, 1)}), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
