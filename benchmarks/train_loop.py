"""The whole ``cytogen train`` loop against its pure step rate, on real fields, in one run.

For each data set the same model, batch, patch and precision are trained twice:

* **pure**: :func:`speed.train_cytogen`, Lightning's TranslateTask fed pre-built batches (no data
  loading, no validation, no logging, no checkpoints);
* **loop**: ``cytogen train configs/translate_unet2d.yaml --data M.csv --out RUN`` as a
  subprocess; its steady-state rate is measured from inside (``train_summary.json``
  ``loop_images_per_second``: after the first tenth of the steps, validation, checkpoints,
  logging and data loading included).

Data sets: ``sbs`` (the 48 SBS fields of 640x640, GFP -> Hoechst, row G as test) and ``crops``
(400 fields of 128x128 cut from the SBS fields: many small images). Regimes: ``recipe`` (the
recipe's U-Net; on a slow CPU few steps, with validation and checkpoint cadences scaled down by
``--cadence`` so that they still happen) and ``light`` (a small U-Net whose fast steps expose the
loop's own per-step cost, as a GPU would; the recipe's cadences as they are).

    python benchmarks/train_loop.py [--sets sbs,crops] [--regimes light,recipe] [--steps-light 300]
        [--steps-recipe 20] [--precision auto]

Prints one JSON line per figure; ``loop_vs_pure`` is the ratio of wall-clock rates measured in the
same run, ``loop_vs_pure_cpu`` the ratio per CPU second of the training process (what other
processes on a shared machine disturb least), and ``loop_timing.step_share`` the share of the
loop's steady-state wall time spent inside training steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from _bench import SHARED, emit, note
from _cli import cpu_features, run_cli
from cytogen.data.datasets import RandomPatches, prepare_fields, read_field
from cytogen.data.manifest import build_manifest, read_manifest
from cytogen.data.normalize import Normalizer
from cytogen.models import build_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "translate_unet2d.yaml"
RECIPE_KW = {"depth": 4, "base_channels": 32, "norm": "batch", "kernel_size": 3}
LIGHT_KW = {"depth": 2, "base_channels": 8, "norm": "batch", "kernel_size": 3}


def sbs_manifest(work: Path) -> Path:
    """Manifest of the SBS fields (GFP source, Hoechst target, plate row G as test)."""
    return build_manifest(SHARED / "sbs_translocation", "Channel1-*.tif", "Channel2-*.tif", work / "sbs.csv",
                          test_match="-G-", val_fraction=0.15, seed=0)


def crops_manifest(work: Path, n: int = 400, size: int = 128) -> Path:
    """``n`` fields of ``size`` x ``size`` cut on a grid from the SBS fields (a set of many small
    images), written as TIFFs under ``work/crops`` with their manifest."""
    import tifffile

    folder = work / "crops"
    folder.mkdir(parents=True, exist_ok=True)
    root = SHARED / "sbs_translocation"
    k = 0
    for src in sorted(root.glob("Channel1-*.tif")):
        a, b = tifffile.imread(src), tifffile.imread(root / src.name.replace("Channel1", "Channel2"))
        for y in range(0, a.shape[0] - size + 1, size):
            for x in range(0, a.shape[1] - size + 1, size):
                if k == n:
                    break
                tifffile.imwrite(folder / f"src-{k:04d}.tif", a[y:y + size, x:x + size])
                tifffile.imwrite(folder / f"tgt-{k:04d}.tif", b[y:y + size, x:x + size])
                k += 1
    return build_manifest(folder, "src-*.tif", "tgt-*.tif", work / "crops.csv", val_fraction=0.15,
                          test_fraction=0.0, seed=0)


def pure_batches(manifest: Path, patch: int, batch: int, n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches drawn as ``cytogen train`` draws them (percentile normalisation per field,
    flips/rotations, foreground bias 0.5) from the manifest's training fields."""
    raw = [read_field(e) for e in read_manifest(manifest) if e.split == "train"]
    sn, tn = Normalizer(), Normalizer()
    sn.fit([f.source.data for f in raw])
    tn.fit([f.target.data for f in raw])
    ds = RandomPatches(prepare_fields(raw, sn, tn, (patch, patch)), (patch, patch), n * batch,
                       augment=True, fg_bias=0.5, seed=0)
    items = [ds[i] for i in range(n * batch)]
    return [{k: torch.stack([it[k] for it in items[b * batch:(b + 1) * batch]]) for k in ("source", "target")}
            for b in range(n)]


def pure_rate(manifest: Path, kwargs: dict, patch: int, batch: int, steps: int, precision: str
              ) -> tuple[float, float]:
    """Images per wall second and per CPU second of this process, of the pure step (after a
    tenth of the steps, at least 3)."""
    from speed import train_cytogen

    batches = pure_batches(manifest, patch, batch, steps)
    torch.manual_seed(0)
    init = copy.deepcopy(build_model("unet", in_channels=1, out_channels=1, dims=2, **kwargs).state_dict())
    rate, _, _ = train_cytogen(init, batches, max(3, steps // 10), "cpu", False, precision=precision,
                               kwargs=kwargs)
    return rate, train_cytogen.last_cpu_rate


def loop_run(manifest: Path, out: Path, kwargs: dict, patch: int, batch: int, steps: int, precision: str,
             cadence: int) -> dict:
    """``cytogen train`` through the CLI; its summary, wall time and peak RSS."""
    sets = [f"model.kwargs={json.dumps(kwargs)}", f"data.patch_size=[{patch},{patch}]",
            f"data.batch_size={batch}"]
    if cadence > 1:  # the recipe's cadences scaled down so that a short run still validates and saves
        sets += [f"train.val_every={max(1, 100 // cadence)}", f"data.val_patches={max(batch, 64 // cadence)}",
                 f"train.checkpoint_every={max(1, 50 // cadence)}", f"train.log_every={max(1, 10 // cadence)}"]
    args = ["train", RECIPE, "--data", manifest, "--out", out, "--max-steps", steps, "--precision", precision]
    for s in sets:
        args += ["--set", s]
    cli = run_cli(args)
    summary = json.loads((out / "train_summary.json").read_text())
    return {"cli": cli, "summary": summary, "sets": sets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="sbs,crops")
    p.add_argument("--regimes", default="light,recipe")
    p.add_argument("--steps-light", type=int, default=300)
    p.add_argument("--steps-recipe", type=int, default=20)
    p.add_argument("--cadence", type=int, default=10, help="recipe regime: val/checkpoint/log every Nth as often")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", default="auto")
    a = p.parse_args()
    emit({"benchmark": "machine", **cpu_features(), "torch_threads": torch.get_num_threads()})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifests = {"sbs": (sbs_manifest, 128), "crops": (crops_manifest, 96)}
        for name in a.sets.split(","):
            make, patch = manifests[name]
            manifest = make(work)
            for regime in a.regimes.split(","):
                kwargs, steps = (LIGHT_KW, a.steps_light) if regime == "light" else (RECIPE_KW, a.steps_recipe)
                cadence = 1 if regime == "light" else a.cadence
                note(f"{name}/{regime}: pure step, {steps} steps of {a.batch} x {patch}x{patch}")
                pure, pure_cpu = pure_rate(manifest, kwargs, patch, a.batch, steps, a.precision)
                note(f"{name}/{regime}: cytogen train, {steps} steps")
                run = loop_run(manifest, work / f"run_{name}_{regime}", kwargs, patch, a.batch, steps,
                               a.precision, cadence)
                s = run["summary"]
                loop_cpu = s["loop_timing"]["steady_batches_per_cpu_second"] * a.batch
                emit({"benchmark": "train_loop", "data": name, "regime": regime, "fields": s["n_train_fields"],
                      "model": kwargs, "patch": patch, "batch": a.batch, "steps": steps,
                      "precision": s["precision"], "overrides": run["sets"],
                      "pure_images_per_s": round(pure, 2), "loop_images_per_s": s["loop_images_per_second"],
                      "loop_vs_pure": round(s["loop_images_per_second"] / pure, 3),
                      "pure_images_per_cpu_s": round(pure_cpu, 2), "loop_images_per_cpu_s": round(loop_cpu, 2),
                      "loop_vs_pure_cpu": round(loop_cpu / pure_cpu, 3),
                      "fit_images_per_s": s["images_per_second"], "loop_timing": s["loop_timing"],
                      "cli_seconds": round(run["cli"]["seconds"], 1),
                      "cli_peak_rss_mib": run["cli"]["peak_rss_mib"]})


if __name__ == "__main__":
    main()
