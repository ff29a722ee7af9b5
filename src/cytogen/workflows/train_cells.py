"""``cytogen train`` for cell tasks (``data_kind = "cells"``): the Statistical Cell's beta-VAEs.

Called by :func:`cytogen.workflows.train.train` when the recipe's task trains on a CELLS folder
(``cytogen cells extract``) instead of a manifest of fields. The Lightning machinery is the
translators' (:mod:`cytogen.workflows.train_support`): atomic checkpoints, exact ``--resume``
(epoch-aware sampler, per-step seeding), CSV/TensorBoard logs, the runtime probe's fast
defaults, the progress bar, ``train_summary.json`` and ``loss.png``. The best checkpoint is the
one with the highest validation ELBO (``val_elbo``), as in the paper (section 4.4); it is
exported to ``OUT/model`` with :func:`~cytogen.predict.model_folder.save_statcell_folder`.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from cytogen.config import Recipe
from cytogen.data.cell_dataset import CellDataset, ShuffledEpochs
from cytogen.data.cellset import CellSet, read_cellset
from cytogen.data.sampling import EpochSampler, ResumableLoader
from cytogen.errors import CytogenError
from cytogen.io.atomic import write_json
from cytogen.predict.model_folder import save_statcell_folder
from cytogen.tasks import TASKS
from cytogen.workflows.train_support import (
    check_run_folder,
    optim_section,
    hold_out_fields,
    read_loss_log,
    run_fit,
    runtime_for,
    speed_up_task,
)

__all__ = ["CELL_HOLD_OUT_FRACTION", "split_cells", "train_cells"]

#: Fraction of the training cells held out for validation (whole fields) when none has split=val.
CELL_HOLD_OUT_FRACTION = 0.10

#: Data settings of field tasks that a cell task cannot use (crops are given, aligned, in [0, 1]).
_FIELD_ONLY = ("patches_per_epoch", "val_patches", "normalize", "normalize_scope", "percentiles",
               "foreground_bias")
#: Model arguments that come from the cell set, not from ``model.kwargs``.
_FROM_DATA = ("in_channels", "ref_channels", "n_classes", "dims", "size")

_Unit = namedtuple("_Unit", "name group")


def _check_cell_settings(rec: Recipe, source: str) -> None:
    """Refuse settings of the recipe that a cell task would ignore or that would be wrong."""
    default = Recipe()
    ignored = [f"data.{k}={getattr(rec.data, k)!r}" for k in _FIELD_ONLY
               if getattr(rec.data, k) != getattr(default.data, k)]
    ignored += [f"predict.{f.name}={getattr(rec.predict, f.name)!r}" for f in fields(rec.predict)
                if getattr(rec.predict, f.name) != getattr(default.predict, f.name)]
    if ignored:
        raise CytogenError(
            f"{source}: task {rec.task!r} trains on the cells of a CELLS folder (every training cell once "
            f"per epoch, crops already in [0, 1]) and does not use {', '.join(ignored)}; remove these settings")
    if rec.data.augment:
        raise CytogenError(
            f"{source}: data.augment is true, but task {rec.task!r} trains on aligned cell crops (major axis, "
            "flip by skew: 'cytogen cells extract'), which flips and rotations would undo; set data.augment: false")
    given = sorted(set(rec.model.kwargs) & set(_FROM_DATA))
    if given:
        raise CytogenError(f"{source}: model.kwargs {given} are set from the CELLS folder (channels, structures, "
                           "crop size) and model.dims; remove them from model.kwargs")


def split_cells(cells: CellSet, seed: int, source: str) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """(training rows, validation rows, where validation comes from in words, validation fields).

    Validation is the cells of split ``val``; without any, ``ceil(10 %)`` of the training cells
    are held out by whole field (:func:`~cytogen.workflows.train_support.hold_out_fields`,
    seeded by ``seed``), so no field is in both.

    Raises
    ------
    CytogenError
        No training cells; no validation cells and a single training field.
    """
    train, val = cells.indices("train"), cells.indices("val")
    if train.size == 0:
        raise CytogenError(f"{source}: no cells with split=train; give some fields split=train in FIELDS.csv "
                           "and run 'cytogen cells extract' again")
    field_of = [cells.rows[i].get("field") or cells.rows[i].get("cell_id") or str(i) for i in range(len(cells.rows))]
    if val.size:
        names = sorted({field_of[i] for i in val})
        return train, val, f"{val.size} split=val cells ({len(names)} fields) of the cell set", names
    units = [_Unit(str(i), field_of[i]) for i in train]
    try:
        kept, held = hold_out_fields(units, seed, source, fraction=CELL_HOLD_OUT_FRACTION)
    except CytogenError:
        raise CytogenError(
            f"{source}: no split=val cells and every training cell comes from one field ({field_of[train[0]]!r}), "
            "so no field can be held out for validation; give some fields split=val in FIELDS.csv "
            "(or add fields) and run 'cytogen cells extract' again") from None
    tr = np.array([int(u.name) for u in kept], dtype=np.int64)
    va = np.array([int(u.name) for u in held], dtype=np.int64)
    names = sorted({u.group for u in held})
    return tr, va, (f"held out {va.size} of {train.size} training cells ({len(names)} whole fields) "
                    f"automatically (seed {seed})"), names


def _architecture(rec: Recipe, cells: CellSet, kind: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dims": rec.model.dims, "size": list(cells.size)}
    n_ref = len(cells.reference_channels)
    if kind == "statcell_target":
        kwargs.update(in_channels=1, ref_channels=n_ref, n_classes=len(cells.structures))
    else:
        kwargs.update(in_channels=n_ref)
    return {"name": rec.model.name, "kwargs": {**kwargs, **dict(rec.model.kwargs)}}


def _check_data(rec: Recipe, cells: CellSet, task_cls: type, data: Path, source: str) -> None:
    if cells.dims != rec.model.dims:
        raise CytogenError(f"{data}: the crops are {cells.dims}D but the recipe's model.dims is {rec.model.dims}; "
                           f"use a {cells.dims}D recipe (e.g. configs/{rec.task}{cells.dims}d.yaml)")
    if tuple(rec.data.patch_size) != tuple(cells.size):
        size = ",".join(str(s) for s in cells.size)
        raise CytogenError(
            f"{source}: data.patch_size {list(rec.data.patch_size)} is not the size {list(cells.size)} of the "
            f"crops in {cells.root}; pass --set data.patch_size=[{size}] (or extract crops of "
            f"{list(rec.data.patch_size)} with 'cytogen cells extract --size')")
    if getattr(task_cls, "needs_target", False) and cells.target_channel is None:
        raise CytogenError(f"{data}: the cell set has no target channel (cells.json target_channel is null), "
                           f"so task {rec.task!r} has nothing to model; extract cells from fields with a "
                           "'target' column, or train the reference model (statcell_reference)")


def _evaluate(task: Any, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Validation ELBO, reconstruction and KL per latent dimension of the exported network."""
    tot_elbo = tot_recon = 0.0
    kl_sum, n = None, 0
    for i, batch in enumerate(loader):
        batch = {k: v.to(device) for k, v in batch.items()}
        est = task.elbo(batch, i)
        tot_elbo += float(est["elbo"].double().sum())
        tot_recon += float(est["recon"].double().sum())
        s = est["kl"].double().sum(0)
        kl_sum = s if kl_sum is None else kl_sum + s
        n += int(est["elbo"].shape[0])
    if not n:
        return {"val_elbo": None, "val_recon": None, "kl_per_dim": None}
    kl = (kl_sum / n).cpu().numpy()
    return {"val_elbo": tot_elbo / n, "val_recon": tot_recon / n, "kl_per_dim": [float(v) for v in kl]}


def train_cells(rec: Recipe, data: Path, out: Path, *, resume: bool = False, progress: bool = True,
                source: str = "recipe") -> dict[str, Any]:
    """Train a cell task (``statcell_reference`` or ``statcell_target``) and export ``OUT/model``.

    Parameters
    ----------
    rec
        The validated recipe (the caller's own copy, overrides applied; task settings checked).
    data
        ``CELLS/cells.csv`` (or the CELLS folder) of ``cytogen cells extract``. Cells of split
        ``train`` train, ``val`` validate; without ``val`` cells 10 % of the training cells are
        held out by whole field (seeded by ``train.seed``). One epoch is every training cell once,
        in an order shuffled per epoch (``data.batch_size`` per step, the last partial batch dropped).
    out
        Run folder; with ``resume=True`` continues exactly from ``OUT/checkpoints/last.ckpt``.
    source
        How to name the recipe in messages.

    Returns
    -------
    dict
        Summary written to ``OUT/train_summary.json``.
    """
    task_cls = TASKS.get(rec.task)
    _check_cell_settings(rec, source)
    cells = read_cellset(data)
    last = check_run_folder(out, cells.root / "cells.csv", resume)
    _check_data(rec, cells, task_cls, data, source)
    train_idx, val_idx, val_source, val_fields = split_cells(cells, rec.train.seed, str(data))
    dims, batch = rec.model.dims, rec.data.batch_size
    if train_idx.size < batch:
        raise CytogenError(f"{data}: {train_idx.size} training cells, fewer than data.batch_size {batch}; "
                           f"lower data.batch_size (e.g. --set data.batch_size={max(1, train_idx.size // 4)})")

    settings = runtime_for(rec)
    settings.apply()
    L.seed_everything(rec.train.seed, workers=True, verbose=False)
    train_ds = ShuffledEpochs(CellDataset(cells, train_idx), seed=rec.train.seed)
    val_ds = CellDataset(cells, val_idx)
    loader_kw = dict(batch_size=batch, num_workers=settings.num_workers,
                     persistent_workers=settings.num_workers > 0, pin_memory=settings.device == "cuda")
    sampler = EpochSampler(len(train_ds))
    train_dl = ResumableLoader(train_ds, sampler=sampler, drop_last=True, **loader_kw)
    val_dl = DataLoader(val_ds, shuffle=False, **loader_kw)

    optim = optim_section(rec, settings)
    arch = _architecture(rec, cells, rec.task)
    task = TASKS.build(rec.task, model=arch, optim=optim, vae=asdict(rec.vae), max_steps=rec.train.max_steps,
                       grad_clip=rec.train.grad_clip)
    arch = getattr(task.net, "architecture", arch)  # complete kwargs (the model's defaults filled in)
    speed_up_task(task, settings, dims)

    run = run_fit(rec, settings, task, train_dl, val_dl, sampler, out, last, resume=resume,
                  progress=progress, source=source, val_source=val_source, monitor="val_elbo", mode="max")
    trainer, train_s, best_path = run.trainer, run.seconds, run.best_path
    if not trainer.is_global_zero:
        return {"run": str(out), "rank": trainer.global_rank, "weights_sha256": run.digests}

    task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    device = torch.device("cuda" if settings.device == "cuda" and torch.cuda.is_available() else "cpu")
    task.to(device).float().eval().to(memory_format=torch.contiguous_format)
    final = _evaluate(task, DataLoader(val_ds, batch_size=batch, shuffle=False), device)
    net = task.net.cpu()
    best = run.best_score
    save_statcell_folder(
        out / "model", net, kind=rec.task, architecture=arch, structures=cells.structures,
        channels=cells.channels, crop_size=list(cells.size),
        pixel_size_um=None if cells.pixel_size_um is None else list(cells.pixel_size_um),
        beta=rec.vae.beta, recipe=rec.to_dict(),
        extra={"best_val_elbo": best, "val_elbo": final["val_elbo"], "val_recon": final["val_recon"],
               "kl_per_dim": final["kl_per_dim"], "exported": rec.train.export,
               "elbo_samples": rec.vae.elbo_samples, "reference_channels": cells.reference_channels,
               "target_channel": cells.target_channel, "cells": str(cells.root)},
    )
    steps = int(trainer.global_step)
    summary = {
        "run": str(out), "task": rec.task, "steps": steps,
        "epochs": round(steps * batch * int(trainer.world_size) / max(1, train_idx.size), 2),
        "train_seconds": round(train_s, 1), "best_val_elbo": best, "val_elbo": final["val_elbo"],
        "best_checkpoint": best_path, "n_train_cells": int(train_idx.size), "n_val_cells": int(val_idx.size),
        "val_source": val_source, "val_fields": val_fields, "model": str(out / "model"),
        "latent_dim": int(arch["kwargs"].get("latent_dim", 0)), "beta": rec.vae.beta,
        "world_size": int(trainer.world_size), "ranks_weights_sha256": run.digests,
        "ranks_in_sync": len(set(run.digests)) == 1,
        "precision": settings.precision, "channels_last": settings.channels_last, "compile": settings.compile,
        "images_per_second": round(steps * batch * int(trainer.world_size) / max(train_s, 1e-9), 2),
    }
    write_json(out / "train_summary.json", summary)
    _plot_losses(out)
    return summary


def _plot_losses(run: Path) -> None:
    """``loss.png``: the training loss and the negative validation ELBO (log scale), and the
    validation ELBO's two terms (reconstruction, KL)."""
    from matplotlib.figure import Figure

    from cytogen.report.figures import save_figure

    log = read_loss_log(run)
    step = log.get("step")
    if step is None:
        return
    fig = Figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    for ax, series in ((left, (("train_loss", "-", 1.0), ("val_elbo", "o-", -1.0))),
                       (right, (("val_recon", "o-", 1.0), ("val_kl", "s-", 1.0)))):
        for key, style, sign in series:
            if key in log:
                ok = np.isfinite(log[key]) & (sign * log[key] > 0)
                if ok.any():
                    label = "-val elbo" if key == "val_elbo" else key.replace("_", " ")
                    ax.plot(step[ok], sign * log[key][ok], style, label=label, ms=3, lw=1)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    left.set_ylabel("loss / negative ELBO")
    right.set_ylabel("validation terms")
    fig.tight_layout()
    save_figure(fig, run / "loss.png")
