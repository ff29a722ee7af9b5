"""Training and prediction speed: cytogen's defaults against a naive PyTorch reference, one run.

The naive reference is how pytorch_fnet and pix2pix run: plain PyTorch, NCHW float32, the
default (foreach) AdamW, tiles predicted one at a time under ``torch.no_grad``. cytogen runs
through its own code: the Lightning :class:`~cytogen.tasks.TranslateTask` with the run-time
settings ``cytogen train`` resolves (:func:`cytogen.runtime.resolve_runtime`: channels-last,
bf16 autocast where the probe finds it faster, fused AdamW; ``+compile`` adds
``torch.compile``), and :func:`cytogen.predict.predict_tiled` with
:func:`cytogen.runtime.inference.inference_fn` for prediction (BatchNorm folded into the
convolutions, NCHW or channels-last as the layout probe finds faster on this machine; each row
says which, and how far its output is from the naive one, as max |difference| / output range).

Data: GFP -> Hoechst patches of ``../shared/data/sbs_translocation`` (synthetic cells where that
folder is absent). The same batches, in the same order, from the same initial weights, train
every variant for ``--steps`` steps; the validation L1 on fixed patches is the quality guard.
Achieved FLOP rates count the model's convolution FLOPs (``torch.utils.flop_counter``) and are
set against the float32 and bf16 matmul rates measured at the start of the same run.

Where the ``onnx`` extra is installed (CPU), prediction also runs through float32 ONNX Runtime
(``cytogen predict --backend onnxruntime``), in process and through the CLI.

Beside the in-process figures: the whole ``cytogen train`` loop and ``cytogen predict`` as
subprocesses (steady-state img/s from inside the run, Mpx/s with start-up subtracted, peak RSS of
each process), the bf16 quality guard (float32 vs bf16-mixed validation L1 over seeds) and one
line per CPU feature that decides precision (AMX, AVX-512 BF16/VNNI, AVX2), so figures from
different machines read correctly.

    python benchmarks/speed.py [--steps 60] [--device cpu|cuda] [--no-compile] [--no-3d] [--no-cli]
        [--guard-seeds 3] [--guard-steps 40]

Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _bench import SHARED, Timer, emit, note, peak_rss_mib, reset_peak_rss
from _cli import CPU_FLAGS, cpu_features, run_cli
from cytogen.data.datasets import RandomPatches, prepare_fields, read_field
from cytogen.data.manifest import build_manifest, read_manifest
from cytogen.data.normalize import Normalizer
from cytogen.models import build_model
from cytogen.predict.onnx_backend import Float32TileFn
from cytogen.predict.receptive import auto_tiling
from cytogen.predict.tiling import predict_tiled, redundancy
from cytogen.runtime import matmul_gflops, resolve_runtime
from cytogen.runtime.inference import inference_fn
from cytogen.runtime.int8 import missing_onnx_modules
from cytogen.tasks import TranslateTask
from cytogen.workflows.train import fused_optimizer, speed_up_task

ARCH2D = {"depth": 4, "base_channels": 32, "norm": "batch", "kernel_size": 3}  # translate_unet2d
ARCH3D = {"depth": 3, "base_channels": 16, "norm": "batch", "kernel_size": 3}  # translate_unet3d
OPTIM = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "betas": [0.9, 0.999],
         "scheduler": "none", "warmup_steps": 0}


def _fields(work: Path) -> tuple[list, list, str]:
    sbs = SHARED / "sbs_translocation"
    if sbs.is_dir():
        manifest = build_manifest(sbs, "Channel1-*.tif", "Channel2-*.tif", work / "sbs.csv",
                                  test_match="-G-", val_fraction=0.15, seed=0)
        source = "sbs_translocation"
    else:
        from cytogen.synth.cells import write_synthetic_dataset

        manifest = write_synthetic_dataset(work / "synth", n_fields=8, shape=(256, 256), seed=0)
        source = "synthetic"
    entries = read_manifest(manifest)
    train = [read_field(e) for e in entries if e.split == "train"][:12]
    val = [read_field(e) for e in entries if e.split in ("val", "test")][:4]
    sn, tn = Normalizer(), Normalizer()
    sn.fit([f.source.data for f in train])
    tn.fit([f.target.data for f in train])
    return (prepare_fields(train, sn, tn, (128, 128)), prepare_fields(val, sn, tn, (128, 128)), source)


def _batches(fields: list, n: int, batch: int, seed: int, patch: int = 128) -> list[dict[str, torch.Tensor]]:
    ds = RandomPatches(fields, (patch, patch), n * batch, augment=True, fg_bias=0.5, seed=seed)
    out = []
    for b in range(n):
        items = [ds[b * batch + i] for i in range(batch)]
        out.append({k: torch.stack([it[k] for it in items]) for k in ("source", "target")})
    return out


def _val_l1(state: dict, batches: list, kwargs: dict | None = None) -> float:
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, **(kwargs or ARCH2D))
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        return float(np.mean([(net(b["source"]) - b["target"]).abs().mean().item() for b in batches]))


def train_naive(init: dict, batches: list, warm: int, device: str) -> tuple[float, dict]:
    net = build_model("unet", in_channels=1, out_channels=1, dims=2, **ARCH2D).to(device)
    net.load_state_dict(init)
    opt = torch.optim.AdamW(net.parameters(), lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"])
    net.train()
    t0 = 0.0
    for i, b in enumerate(batches):
        if i == warm:
            t0 = time.perf_counter()
        x, y = b["source"].to(device), b["target"].to(device)
        loss = (net(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    rate = (len(batches) - warm) * batches[0]["source"].shape[0] / (time.perf_counter() - t0)
    return rate, {k: v.cpu() for k, v in net.state_dict().items()}


class _StepClock(L.Callback):
    """Wall and process-CPU clocks from the start of batch ``warm`` to the end of training."""

    def __init__(self, warm: int) -> None:
        self.warm, self.t0, self.t1, self.c0, self.c1 = warm, 0.0, 0.0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warm:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t1, self.c1 = time.perf_counter(), time.process_time()


def train_cytogen(init: dict, batches: list, warm: int, device: str, compile: bool, *,
                  precision: str = "auto", kwargs: dict | None = None) -> tuple[float, dict, str]:
    """The pure step rate: Lightning's TranslateTask fed pre-built ``batches`` (no data
    loading, no validation, no logging, no checkpoints); images/s after ``warm`` steps.
    ``precision="bf16-mixed!"`` forces bf16 autocast where cytogen would refuse it (a CPU without
    native bf16: slow, but numerically what a bf16 CPU computes)."""
    forced = precision.endswith("!")
    settings = resolve_runtime("32" if forced else precision, compile=compile, accelerator=device)
    if forced:
        settings.precision = precision[:-1]
    settings.apply()
    optim = dict(OPTIM, fused=fused_optimizer(settings))
    arch = {"name": "unet", "dims": 2, "in_channels": 1, "out_channels": 1, "kwargs": kwargs or ARCH2D}
    task = TranslateTask(arch, {"name": "l1"}, optim, max_steps=len(batches))
    task.net.load_state_dict(init)
    speed_up_task(task, settings, 2)
    clock = _StepClock(warm)
    trainer = L.Trainer(max_steps=len(batches), accelerator=device, devices=1, precision=settings.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[clock])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(task, loader)
    rate = (len(batches) - warm) * batches[0]["source"].shape[0] / (clock.t1 - clock.t0)
    state = {k: v.float().cpu().contiguous() for k, v in task.net.state_dict().items()}
    train_cytogen.last_cpu_rate = (len(batches) - warm) * batches[0]["source"].shape[0] / (clock.c1 - clock.c0)
    return rate, state, settings.precision


def bf16_guard(train_f: list, val_f: list, device: str, *, seeds: int = 3, steps: int = 40, patch: int = 64,
               batch: int = 8, kwargs: dict | None = None) -> dict:
    """The bf16 quality guard: per seed, the same batches from the same initial weights train
    ``steps`` steps in float32 and in bf16-mixed (forced, see :func:`train_cytogen`); each net's
    float32 validation L1 on fixed patches; the relative difference ``bf16 / fp32 - 1``."""
    kwargs = kwargs or ARCH2D
    val = _batches(val_f, 8, batch, seed=10_000, patch=patch)
    diffs, rows = [], []
    for seed in range(seeds):
        batches = _batches(train_f, steps, batch, seed=seed, patch=patch)
        torch.manual_seed(seed)
        init = copy.deepcopy(build_model("unet", in_channels=1, out_channels=1, dims=2, **kwargs).state_dict())
        losses = {}
        for prec in ("32", "bf16-mixed!"):
            _, state, _ = train_cytogen(init, batches, min(3, steps - 1), device, False, precision=prec,
                                        kwargs=kwargs)
            losses[prec.rstrip("!")] = _val_l1(state, val, kwargs)
        diffs.append(losses["bf16-mixed"] / losses["32"] - 1)
        rows.append({"seed": seed, "val_l1_fp32": round(losses["32"], 5),
                     "val_l1_bf16": round(losses["bf16-mixed"], 5), "rel_diff": round(diffs[-1], 4)})
    d = np.asarray(diffs)
    return {"benchmark": "bf16_guard", "model": kwargs, "patch": patch, "batch": batch, "steps": steps,
            "seeds": rows, "rel_diff_mean": round(float(d.mean()), 4), "rel_diff_sd": round(float(d.std(ddof=1)), 4)
            if len(d) > 1 else None, "abs_rel_diff_max": round(float(np.abs(d).max()), 4),
            "within_2pct": bool(abs(d.mean()) <= 0.02)}


def _flops(net: torch.nn.Module, x: torch.Tensor, backward: bool) -> float:
    with FlopCounterMode(display=False) as fc:
        y = net(x)
        if backward:
            y.abs().mean().backward()
    return float(fc.get_total_flops())


def _tile_work(shape: tuple[int, ...], tile: tuple[int, ...], overlap: float) -> float:
    """Pixels the tiler sends through the model for an image (overlap counted)."""
    from cytogen.predict.tiling import tile_starts

    n = 1.0
    for s, t in zip(shape, tile):
        n *= len(tile_starts(s, t, t - round(overlap * t))) * t
    return n


def predict_bench(dims: int, image: np.ndarray, state: dict | None, device: str, compile: bool,
                  rates: dict[str, float]) -> list[dict]:
    arch = ARCH2D if dims == 2 else ARCH3D
    tile = (256, 256) if dims == 2 else (32, 128, 128)
    batch = 4 if dims == 2 else 2
    tiles_px = _tile_work(image.shape[1:], tile, 0.25)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        net = build_model("unet", in_channels=1, out_channels=1, dims=dims, **arch)
        if state is not None:
            net.load_state_dict(state)
        return net.to(device).eval()

    flops_px = _flops(fresh(), torch.zeros(1, 1, *tile, device=device), False) / np.prod(tile)
    mult = 2**arch["depth"]
    results = []
    variants = [("naive", None), ("cytogen", False), ("cytogen+auto", False)] + (
        [("cytogen+compile", True), ("cytogen+auto+compile", True)] if compile else []) + (
        [("cytogen+auto+onnxruntime", False)] if device == "cpu" and not missing_onnx_modules() else [])
    for name, comp in variants:
        net = fresh()
        tiling, work_px, plan_s = {"tile": tile, "overlap": 0.25}, tiles_px, 0.0
        if name.startswith("cytogen+auto"):  # the default of today's recipes: tile: auto
            with Timer() as tp:
                plan = auto_tiling(net, dims, image_shape=image.shape[1:])
            plan_s = tp.seconds
            tiling = {"tile": plan.tile, "overlap": plan.overlap, "margin": plan.margin, "balance": True}
            work_px = redundancy(image.shape[1:], size_multiple=mult, **tiling) * float(np.prod(image.shape[1:]))
        if comp is None:
            def fn(b, net=net):
                with torch.no_grad():
                    return net(b)
            bs, precision = 1, "32"
        elif name.endswith("onnxruntime"):  # cytogen predict --backend onnxruntime
            settings = resolve_runtime("auto", accelerator=device, inference=True, backend="onnxruntime")
            fn, bs, precision = Float32TileFn(net, settings.threads, mult, report=settings.probe), \
                plan.batch_size, "32"
            warm = image[(slice(None),) + tuple(slice(0, t) for t in tiling["tile"])]
            predict_tiled(fn, warm, tile=tiling["tile"], batch_size=bs, size_multiple=mult, device=device)
        else:
            settings = resolve_runtime("auto", compile=comp, accelerator=device)
            fn, bs, precision = inference_fn(net, dims, settings), batch, settings.precision
            if name.startswith("cytogen+auto"):
                bs = plan.batch_size
            warm = image[(slice(None),) + tuple(slice(0, t) for t in tiling["tile"])]
            predict_tiled(fn, warm, tile=tiling["tile"], batch_size=bs, size_multiple=mult, device=device,
                          pad_batches=bool(comp))
        reset_peak_rss()
        with Timer() as t:
            out = predict_tiled(fn, image, batch_size=bs, size_multiple=mult, device=device,
                                pad_batches=bool(comp), **tiling)
        if comp is None:
            ref = out
        diff = float(np.abs(out - ref).max() / (np.ptp(ref) or 1.0))
        mpx = float(np.prod(image.shape[1:])) / 1e6 / t.seconds
        gflops = flops_px * work_px / t.seconds / 1e9
        results.append({"benchmark": f"predict{dims}d", "variant": name, "shape": list(image.shape[1:]),
                        "precision": precision, "tile": list(tiling["tile"]), "batch": bs,
                        "overlap": list(tiling["overlap"]) if name.startswith("cytogen+auto") else 0.25,
                        "pixels_computed_per_output_pixel": round(work_px / float(np.prod(image.shape[1:])), 3),
                        "backend": settings.backend if comp is not None else "torch",
                        "layout": "nchw" if comp is None or not settings.channels_last else "channels_last",
                        "batchnorm_folded": 0 if comp is None else settings.probe.get("batchnorm_folded", 0),
                        "max_abs_diff_vs_naive_over_range": round(diff, 6),
                        "plan_s": round(plan_s, 2),
                        "seconds": round(t.seconds, 2), "mpx_per_s": round(mpx, 3),
                        "gflops": round(gflops, 1),
                        "frac_bf16_matmul": round(gflops / rates["bfloat16"], 3),
                        "frac_fp32_matmul": round(gflops / rates["float32"], 3),
                        "peak_rss_mib": peak_rss_mib()})
        emit(results[-1])
    return results


def machine_lines() -> list[dict]:
    """One line with the CPU model, then one per :data:`_cli.CPU_FLAGS` feature (present or not)."""
    feats = cpu_features()
    rows = [{"benchmark": "machine", "cpu_model": feats["cpu_model"], "cpus": feats["cpus"],
             "torch_threads": torch.get_num_threads()}]
    rows += [{"benchmark": "machine", "feature": f, "present": feats[f]} for f in CPU_FLAGS]
    return rows


def cli_figures(steps: int, device: str, in_process: dict, work: Path) -> list[dict]:
    """``cytogen train`` and ``cytogen predict`` as subprocesses, beside the in-process figures.

    Training: the recipe ``configs/translate_unet2d.yaml`` for ``steps`` steps on the same data;
    its steady-state rate from inside (``train_summary.json``), its wall time and peak RSS.
    Prediction: the trained model on a 256x256 and a 2048x2048 image (the first SBS field
    tiled); Mpx/s from the difference of the two runs, so start-up (imports, model load) is
    subtracted.
    """
    import tifffile

    from train_loop import RECIPE, sbs_manifest

    sbs = SHARED / "sbs_translocation"
    if sbs.is_dir():
        manifest = sbs_manifest(work)
        raw = tifffile.imread(sorted(sbs.glob("Channel1-*.tif"))[0])
    else:
        from cytogen.synth.cells import write_synthetic_dataset

        manifest = write_synthetic_dataset(work / "synth", n_fields=8, shape=(256, 256), seed=0)
        raw = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    run = work / "run"
    acc = "gpu" if device == "cuda" else "cpu"
    t = run_cli(["train", RECIPE, "--data", manifest, "--out", run, "--max-steps", steps, "--accelerator", acc])
    summary = json.loads((run / "train_summary.json").read_text())
    rows = [{"benchmark": "train2d_cli", "variant": "cytogen train (subprocess)", "steps": steps,
             "precision": summary["precision"], "loop_images_per_s": summary["loop_images_per_second"],
             "fit_images_per_s": summary["images_per_second"], "loop_timing": summary["loop_timing"],
             "wall_s": round(t["seconds"], 1), "peak_rss_mib": t["peak_rss_mib"],
             "loop_vs_in_process": round(summary["loop_images_per_second"] / in_process["images_per_s"], 3)}]
    emit(rows[-1])
    reps = [int(np.ceil(2048 / s)) for s in raw.shape]
    big = np.ascontiguousarray(np.tile(raw, reps)[:2048, :2048])
    images = work / "images"
    images.mkdir()
    tifffile.imwrite(images / "small.tif", big[:256, :256])
    tifffile.imwrite(images / "big.tif", big)
    backends = ["torch"] + (["onnxruntime"] if acc == "cpu" and not missing_onnx_modules() else [])
    for backend in backends:
        flags = ["--accelerator", acc, "--backend", backend]
        small_t = run_cli(["predict", run / "model", images / "small.tif", "--out", work / f"pred_small_{backend}", *flags])
        big_t = run_cli(["predict", run / "model", images / "big.tif", "--out", work / f"pred_big_{backend}", *flags])
        extra = big_t["seconds"] - small_t["seconds"]
        mpx = (big.size - 256 * 256) / 1e6
        rows.append({"benchmark": "predict2d_cli", "variant": f"cytogen predict --backend {backend} (subprocess)",
                     "shape": [2048, 2048], "wall_s_2048": round(big_t["seconds"], 2),
                     "wall_s_256": round(small_t["seconds"], 2),
                     "mpx_per_s": round(mpx / extra, 3) if extra > 0 else None,
                     "peak_rss_mib_2048": big_t["peak_rss_mib"], "peak_rss_mib_256": small_t["peak_rss_mib"]})
        emit(rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="training steps per variant")
    p.add_argument("--warm", type=int, default=8, help="untimed first steps (compilation)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--no-3d", action="store_true", help="skip the 3D prediction benchmark")
    p.add_argument("--no-cli", action="store_true", help="skip the cytogen train/predict subprocess figures")
    p.add_argument("--guard-seeds", type=int, default=3, help="bf16 guard: seeds (0 skips the guard)")
    p.add_argument("--guard-steps", type=int, default=40, help="bf16 guard: steps per seed and precision")
    a = p.parse_args()
    dev = a.device
    for row in machine_lines():
        emit(row)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        rates[str(dtype).split(".")[1]] = matmul_gflops(dtype, n=4096 if dev == "cuda" else 2048, device=dev)
        emit({"benchmark": "matmul", "dtype": str(dtype).split(".")[1], "device": dev,
              "gflops": round(rates[str(dtype).split(".")[1]], 1)})
    settings = resolve_runtime("auto", accelerator=dev)
    emit({"benchmark": "runtime", **{k: v for k, v in settings.to_dict().items() if k != "notes"},
          "notes": settings.notes})

    with tempfile.TemporaryDirectory() as tmp:
        train_f, val_f, source = _fields(Path(tmp))
    batches = _batches(train_f, a.steps, a.batch, seed=0)
    val = _batches(val_f, 8, a.batch, seed=1)
    torch.manual_seed(0)
    init = build_model("unet", in_channels=1, out_channels=1, dims=2, **ARCH2D).state_dict()
    init = copy.deepcopy(init)
    probe_net = build_model("unet", in_channels=1, out_channels=1, dims=2, **ARCH2D)
    step_flops = _flops(probe_net, batches[0]["source"], True)
    note(f"training on {source} patches: {a.steps} steps of {a.batch} x 128x128, "
         f"{step_flops / 1e9:.1f} GFLOP per step")

    train_rows = {}
    variants = [("naive", None), ("cytogen", False)] + ([] if a.no_compile else [("cytogen+compile", True)])
    for name, comp in variants:
        reset_peak_rss()
        if comp is None:
            rate, state = train_naive(init, batches, a.warm, dev)
            precision = "32"
        else:
            rate, state, precision = train_cytogen(init, batches, a.warm, dev, comp)
        gflops = rate / a.batch * step_flops / 1e9
        row = {"benchmark": "train2d", "variant": name, "data": source, "steps": a.steps,
               "batch": a.batch, "precision": precision, "images_per_s": round(rate, 2),
               "gflops": round(gflops, 1), "frac_bf16_matmul": round(gflops / rates["bfloat16"], 3),
               "frac_fp32_matmul": round(gflops / rates["float32"], 3),
               "val_l1": round(_val_l1(state, val), 5), "peak_rss_mib": peak_rss_mib()}
        train_rows[name] = row
        if name == "cytogen":
            trained = state
        emit(row)
    ref = train_rows["naive"]
    for name, row in train_rows.items():
        if name != "naive":
            emit({"benchmark": "train2d_vs_naive", "variant": name,
                  "speedup": round(row["images_per_s"] / ref["images_per_s"], 2),
                  "val_l1_rel_diff": round(row["val_l1"] / ref["val_l1"] - 1, 4)})

    if a.guard_seeds > 0:  # a small U-Net of the same blocks (batch norm) keeps bf16 emulation affordable
        emit(bf16_guard(train_f, val_f, dev, seeds=a.guard_seeds, steps=a.guard_steps,
                        kwargs={"depth": 2, "base_channels": 8, "norm": "batch", "kernel_size": 3}))
    if not a.no_cli:
        with tempfile.TemporaryDirectory() as tmp:
            cli_figures(a.steps, dev, train_rows["cytogen"], Path(tmp))

    field = next((f.source for f in val_f), train_f[0].source)
    reps = [int(np.ceil(2048 / s)) for s in field.shape[1:]]
    image2d = np.ascontiguousarray(np.tile(field, [1] + reps)[:, :2048, :2048])
    rows = predict_bench(2, image2d, trained, dev, not a.no_compile, rates)
    if not a.no_3d:
        vol = np.random.default_rng(0).random((1, 64, 512, 512), dtype=np.float32)
        stack = SHARED / "cells3d_nuclei" / "nuclei.tif"
        if stack.is_file():
            import tifffile

            real = tifffile.imread(stack).astype(np.float32)
            real = (real - real.mean()) / (real.std() + 1e-6)
            vol = np.ascontiguousarray(np.tile(real[None], (1, 2, 2, 2))[:, :64, :512, :512])
        rows += predict_bench(3, vol, None, dev, not a.no_compile, rates)
    for dims in (2, 3):
        base = next((r for r in rows if r["benchmark"] == f"predict{dims}d" and r["variant"] == "naive"), None)
        for r in rows:
            if base and r["benchmark"] == f"predict{dims}d" and r["variant"] != "naive":
                emit({"benchmark": f"predict{dims}d_vs_naive", "variant": r["variant"],
                      "speedup": round(r["mpx_per_s"] / base["mpx_per_s"], 2)})


if __name__ == "__main__":
    main()
