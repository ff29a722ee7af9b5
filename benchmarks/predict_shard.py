"""Sharded prediction: one process vs ``--devices N`` CPU processes on the same fields.

Writes a small model folder and ``--fields`` synthetic fields to a temporary folder, then predicts
them once with one process (``predict_sharded(devices=1)``) and once with ``cytogen predict
--devices N --accelerator cpu``, each in a fresh process. Prints one JSON line per run (wall time
of the whole command including start-up, and the busiest rank's prediction time from
``runtime.json``) and one with the ratios; the outputs of both runs are compared.

    python benchmarks/predict_shard.py --fields 8 --size 512 --devices 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Timer, emit, note  # noqa: E402


def _setup(root: Path, n: int, size: int) -> None:
    import torch
    from scipy.ndimage import gaussian_filter

    from cytogen.data.normalize import Normalizer
    from cytogen.io.images import Image, write_image
    from cytogen.models import build_model
    from cytogen.predict.model_folder import save_model_folder

    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, depth=2, base_channels=8).eval()
    rng = np.random.default_rng(0)
    fields = [(gaussian_filter(rng.random((1, size, size)), (0, 2, 2)) * 1000).astype(np.float32)
              for _ in range(n)]
    norm = Normalizer().fit(fields[:2])
    save_model_folder(root / "model", net, source_norm=norm, target_norm=norm,
                      architecture={"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1,
                                    "kwargs": {"depth": 2, "base_channels": 8}},
                      source_channels=["a"], target_channels=["b"], pixel_size_um=[0.4, 0.4],
                      patch_size=[64, 64])
    for i, f in enumerate(fields):
        write_image(root / "in" / f"field{i:03d}.tif", Image(f, "CYX", (0.4, 0.4), ["a"]))


def _run(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env["PYTHONWARNINGS"] = "ignore"
    with Timer() as t:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return t.seconds


def _busiest(out: Path) -> tuple[float, list[float]]:
    ranks = json.loads((out / "runtime.json").read_text())["ranks"]
    per = [r["seconds"] for r in ranks]
    return max(per), per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="field side in pixels")
    p.add_argument("--devices", type=int, default=2, help="CPU processes of the sharded run")
    p.add_argument("--tile", default="256")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _setup(root, a.fields, a.size)
        files = sorted(str(f) for f in (root / "in").glob("*.tif"))
        common = ["--tile", a.tile, "--batch-size", "2", "--no-fast", "--accelerator", "cpu"]
        one = root / "one"
        code = ("import sys; from cytogen.workflows.predict_shard import predict_sharded; "
                f"predict_sharded({str(root / 'model')!r}, {str(one)!r}, files=sys.argv[1:], devices=1, "
                f"accelerator='cpu', tile=({int(a.tile)}, {int(a.tile)}), batch_size=2, fast=False, "
                "progress=False)")
        note(f"1 process, {a.fields} fields of {a.size}x{a.size} ...")
        wall1 = _run([sys.executable, "-c", code, *files])
        busy1, _ = _busiest(one)
        emit({"bench": "predict_shard", "processes": 1, "fields": a.fields, "size": a.size,
              "wall_s": round(wall1, 2), "busiest_rank_predict_s": busy1, "cpus": os.cpu_count()})
        many = root / "many"
        note(f"{a.devices} processes ...")
        wall_n = _run([sys.executable, "-m", "cytogen", "predict", str(root / "model"), *files,
                       "--out", str(many), "--devices", str(a.devices), *common])
        busy_n, per = _busiest(many)
        emit({"bench": "predict_shard", "processes": a.devices, "fields": a.fields, "size": a.size,
              "wall_s": round(wall_n, 2), "busiest_rank_predict_s": busy_n, "per_rank_predict_s": per})
        from cytogen.io.images import read_image

        worst = max(float(np.abs(read_image(one / Path(f).name).data - read_image(many / Path(f).name).data).max())
                    for f in files)
        emit({"bench": "predict_shard", "speedup_wall": round(wall1 / wall_n, 2),
              "speedup_busiest_rank": round(busy1 / busy_n, 2),
              "rank_balance_min_over_max": round(min(per) / max(per), 2),
              "max_abs_difference_1_vs_n_processes": worst})


if __name__ == "__main__":
    main()
