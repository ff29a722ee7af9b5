"""Prediction tiling: naive 256-px tiles, cytogen's old tiling and auto tiling, in one run.

Variants (all through :func:`cytogen.predict.tiling.predict_tiled`):

- ``naive``: 256 px tiles, 25 % overlap, one tile at a time under ``torch.no_grad``, NCHW
  float32 (as ``benchmarks/speed.py``'s naive reference, the way pytorch_fnet predicts);
- ``cytogen-old``: the same tiling, batches of 4 (3D: 2), :func:`cytogen.runtime.inference.inference_fn`;
- ``cytogen-auto``: :func:`cytogen.predict.receptive.auto_tiling` (largest tile in the default
  memory budget, margin = measured effective receptive field radius, overlap = 2 x margin
  rounded up to the size multiple, balanced tiles), ``inference_fn``; its planning time (ERF +
  memory probe) is timed separately and included in ``mpx_per_s_with_plan``;
- ``cytogen-auto-ramp`` (``--ramp``): the auto tile with twice the overlap and no margin, i.e. the
  Gaussian windows' soft ramp over the overlap instead of the hard cut in its middle.

Every variant is compared with one untiled prediction of the whole image (the network applied
once to all of it): seam error max |diff| and RMS in normalised output units, and Pearson r.
``redundancy`` is model pixels computed per output pixel.

Data: 2D: a 2048 x 2048 field tiled from an SBS GFP field (``../shared/data/sbs_translocation``,
percentile-normalised), model the translate_unet2d U-Net (depth 4, base 32, batch norm) trained
``--steps`` steps (GFP -> Hoechst, seed 0) so the seam figures belong to a model that has learnt
something (``--steps 0``: untrained, seed 0). 3D: a 64 x 512 x 512 volume tiled from ``../shared/data/cells3d_nuclei/nuclei.tif``
(z-scored), the translate_unet3d U-Net (depth 3, base 16, batch norm) untrained, seed 0.

    python benchmarks/tiling.py [--steps 100] [--batch 4] [--size2d 2048] [--shape3d 64,512,512]
                                [--ramp] [--no-3d]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _bench import SHARED, Timer, emit, note, peak_rss_mib, reset_peak_rss
from cytogen.models import build_model
from cytogen.predict.receptive import auto_tiling, measure_erf
from cytogen.predict.tiling import predict_tiled, redundancy
from cytogen.runtime import resolve_runtime
from cytogen.runtime.inference import inference_fn

ARCH2D = {"depth": 4, "base_channels": 32, "norm": "batch", "kernel_size": 3}
ARCH3D = {"depth": 3, "base_channels": 16, "norm": "batch", "kernel_size": 3}


def _train2d(steps: int, batch: int) -> tuple[dict, np.ndarray, str]:
    """A briefly trained 2D U-Net's weights and a normalised GFP field (C, Y, X)."""
    from speed import _batches, _fields

    with tempfile.TemporaryDirectory() as tmp:
        train_f, val_f, source = _fields(Path(tmp))
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, **ARCH2D)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    t0 = time.perf_counter()
    for i, b in enumerate(_batches(train_f, steps, batch, seed=0) if steps else []):
        loss = torch.nn.functional.l1_loss(net(b["source"]), b["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 10 == 9:
            note(f"step {i + 1}: L1 {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    if steps:
        note(f"trained {steps} steps of {batch} x 128x128 on {source} in "
             f"{time.perf_counter() - t0:.0f} s, last L1 {loss.item():.3f}")
    field = next((f.source for f in val_f), train_f[0].source)
    return net.state_dict(), np.asarray(field, dtype=np.float32), source


def _stats(pred: np.ndarray, ref: np.ndarray) -> dict:
    d = pred.astype(np.float64) - ref
    r = float(np.corrcoef(pred.ravel(), ref.ravel())[0, 1])
    return {"seam_max_abs": float(f"{np.abs(d).max():.3g}"),
            "seam_rms": float(f"{np.sqrt((d ** 2).mean()):.3g}"),
            "ref_range": round(float(np.ptp(ref)), 3), "pearson_r_vs_untiled": round(r, 7)}


def bench(dims: int, image: np.ndarray, net: torch.nn.Module, old_tile: tuple[int, ...],
          old_batch: int, extra: dict, ramp: bool = False) -> list[dict]:
    """All variants on ``image`` (C, *S); one JSON line each, then the speedups."""
    net = net.eval()
    mult = net.size_multiple
    shape = image.shape[1:]
    mpx = float(np.prod(shape)) / 1e6
    with Timer() as t_ref:
        with torch.inference_mode():
            ref = net(torch.from_numpy(image)[None])[0].numpy().astype(np.float64)
    note(f"{dims}D untiled reference {shape}: {t_ref.seconds:.1f} s")
    settings = resolve_runtime("auto", accelerator="cpu")
    fast = inference_fn(net, dims, settings)

    def naive_fn(b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(b)

    with Timer() as t_plan:
        erf = measure_erf(net, dims)
        plan = auto_tiling(net, dims, image_shape=shape, erf=erf)
    note(f"{dims}D auto plan in {t_plan.seconds:.1f} s: {plan.to_dict()}")
    old = {"tile": old_tile, "overlap": 0.25}
    auto = {"tile": plan.tile, "overlap": plan.overlap, "margin": plan.margin, "balance": True}
    variants = [("naive", naive_fn, old, 1), ("cytogen-old", fast, old, old_batch),
                ("cytogen-auto", fast, auto, plan.batch_size)]
    if ramp:
        soft = {"tile": plan.tile, "overlap": tuple(2 * o for o in plan.overlap), "balance": True}
        variants.append(("cytogen-auto-ramp", fast, soft, plan.batch_size))
    rows = []
    for name, fn, tiling, bs in variants:
        reset_peak_rss()
        with Timer() as t:
            pred = predict_tiled(fn, image, batch_size=bs, size_multiple=mult, **tiling)
        note(f"{dims}D {name}: {t.seconds:.0f} s")
        red = redundancy(shape, tiling["tile"], tiling["overlap"], mult,
                         tiling.get("margin", 0), tiling.get("balance", False))
        row = {"benchmark": f"tiling{dims}d", "variant": name, "shape": list(shape),
               "tile": list(tiling["tile"]),
               "overlap": tiling["overlap"] if isinstance(tiling["overlap"], float)
               else list(tiling["overlap"]),
               "margin": list(tiling["margin"]) if "margin" in tiling else 0, "batch": bs,
               "seconds": round(t.seconds, 2), "mpx_per_s": round(mpx / t.seconds, 4),
               "redundancy": round(red, 3), **_stats(pred, ref), "peak_rss_mib": peak_rss_mib(),
               **extra}
        if name.startswith("cytogen-auto"):
            row.update(plan_seconds=round(t_plan.seconds, 2),
                       mpx_per_s_with_plan=round(mpx / (t.seconds + t_plan.seconds), 4),
                       erf_radius=list(erf.radius), theoretical_radius=erf.theoretical,
                       memory_budget_gib=round(plan.budget_bytes / 2**30, 2),
                       bytes_per_pixel=round(plan.bytes_per_pixel))
        rows.append(row)
        emit(row)
    base = rows[0]
    for r in rows[1:]:
        emit({"benchmark": f"tiling{dims}d_vs_naive", "variant": r["variant"],
              "speedup": round(r["mpx_per_s"] / base["mpx_per_s"], 2),
              "speedup_with_plan": round(r.get("mpx_per_s_with_plan", r["mpx_per_s"])
                                         / base["mpx_per_s"], 2),
              "redundancy_ratio": round(base["redundancy"] / r["redundancy"], 2)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="2D training steps")
    p.add_argument("--batch", type=int, default=4, help="2D training batch (of 128 x 128 patches)")
    p.add_argument("--no-3d", action="store_true")
    p.add_argument("--size2d", type=int, default=2048, help="side of the 2D field")
    p.add_argument("--shape3d", default="64,512,512", help="Z,Y,X of the 3D volume")
    p.add_argument("--ramp", action="store_true", help="add the auto-ramp variant (2D)")
    a = p.parse_args()
    emit({"benchmark": "threads", "torch_threads": torch.get_num_threads()})
    state, field, source = _train2d(a.steps, a.batch)
    n = a.size2d
    reps = [int(np.ceil(n / s)) for s in field.shape[1:]]
    image = np.ascontiguousarray(np.tile(field, [1] + reps)[:, :n, :n])
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, **ARCH2D)
    net.load_state_dict(state)
    model = f"trained {a.steps} steps of {a.batch}" if a.steps else "untrained, seed 0"
    bench(2, image, net, (256, 256), 4, {"data": source, "model": model}, ramp=a.ramp)
    if not a.no_3d:
        stack = SHARED / "cells3d_nuclei" / "nuclei.tif"
        if stack.is_file():
            import tifffile

            real = tifffile.imread(stack).astype(np.float32)
            real = (real - real.mean()) / (real.std() + 1e-6)
            z, y, x = (int(v) for v in a.shape3d.split(","))
            reps3 = [int(np.ceil(n / s)) for n, s in zip((z, y, x), real.shape)]
            vol = np.ascontiguousarray(np.tile(real[None], [1] + reps3)[:, :z, :y, :x])
            data = "cells3d_nuclei"
        else:
            shape3 = tuple(int(v) for v in a.shape3d.split(","))
            vol = np.random.default_rng(0).random((1, *shape3), dtype=np.float32)
            data = "uniform noise"
        torch.manual_seed(0)
        net3 = build_model("unet", in_channels=1, out_channels=1, dims=3, **ARCH3D)
        bench(3, vol, net3, (32, 128, 128), 2, {"data": data, "model": "untrained, seed 0"})


if __name__ == "__main__":
    main()
