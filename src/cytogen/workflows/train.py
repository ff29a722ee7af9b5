"""``cytogen train``: recipe + manifest -> run folder with checkpoints, logs and a model folder."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from cytogen.config import Recipe, apply_overrides, load_recipe
from cytogen.data.datasets import RandomPatches, prepare_fields, read_field
from cytogen.data.manifest import read_manifest
from cytogen.data.instance_targets import CLASS_NAMES, N_CLASSES, instance_classes
from cytogen.data.masks import MaskChannels, check_label_image
from cytogen.data.normalize import Normalizer
from cytogen.data.sampling import EpochSampler, ResumableLoader
from cytogen.errors import CytogenError
from cytogen.models.protocol import check_spatial_size
from cytogen.io.atomic import write_json
from cytogen.losses.adversarial import check_soft_labels
from cytogen.predict.model_folder import NUCLEUS_SEG_KIND, save_model_folder
from cytogen.tasks import TASKS, build_task
from cytogen.workflows.train_support import (  # noqa: F401  (read_loss_log, ... re-exported: public API)
    check_run_folder,
    check_task_uses,
    fused_optimizer,
    optim_section,
    hold_out_fields,
    read_loss_log,
    run_fit,
    runtime_for,
    speed_up_task,
)


def channel_names(img_names: list[str] | None, specs: list[str], n: int) -> list[str]:
    """Channel names from the image metadata, else from the file names."""
    if img_names and len(img_names) == n and all(img_names):
        return list(img_names)
    stems = [Path(s.partition("#")[0]).name.split(".")[0] + (("#" + s.partition("#")[2]) if "#" in s else "")
             for s in specs]
    return stems if len(stems) == n else [f"ch{i}" for i in range(n)]


def encode_instance_targets(raw: list, boundary_px: int) -> int:
    """Replace each field's target (an instance label image) by its class map (background,
    interior, boundary) and, where no mask was given, use the objects as the mask (patch
    sampling); returns the number of classes."""
    for rf in raw:
        labels = check_label_image(rf.target.data, f"field {rf.name!r}, target (instance labels of the segmenter)")
        rf.target.data = instance_classes(labels, boundary_px)[None].astype(np.float32)
        rf.target.channel_names = list(CLASS_NAMES)
        if rf.mask is None:
            rf.mask = labels > 0
    return N_CLASSES


def _split_entries(entries: list, seed: int, manifest: Path) -> tuple[list, list, str]:
    """(train entries, validation entries, where validation comes from, in words)."""
    train = [e for e in entries if e.split == "train"]
    if not train:
        raise CytogenError(f"{manifest}: no rows with split=train; mark some fields for training")
    val = [e for e in entries if e.split == "val"]
    if val:
        return train, val, f"{len(val)} split=val fields of the manifest"
    train, val = hold_out_fields(train, seed, str(manifest))
    return train, val, (f"held out {len(val)} of {len(train) + len(val)} training fields "
                        f"automatically (seed {seed})")


def _check_consistent(raw: list, dims: int, manifest: Path) -> tuple[int, int]:
    c_in, c_out = raw[0].source.data.shape[0], raw[0].target.data.shape[0]
    for rf in raw:
        if rf.source.ndim_spatial != dims:
            raise CytogenError(
                f"{manifest}: field {rf.name!r} is {rf.source.ndim_spatial}D but the recipe's "
                f"model.dims is {dims}; use a {rf.source.ndim_spatial}D recipe"
            )
        if rf.source.data.shape[0] != c_in or rf.target.data.shape[0] != c_out:
            raise CytogenError(
                f"{manifest}: field {rf.name!r} has {rf.source.data.shape[0]} source / "
                f"{rf.target.data.shape[0]} target channels, the first field {c_in}/{c_out}; "
                "every field needs the same channels"
            )
    return c_in, c_out


def _check_references(raw: list, c_out: int, weight: float, source: str, manifest: Path) -> None:
    """``loss.exclusivity_weight > 0`` needs a 'reference' image (1 or ``c_out`` channels) in every row."""
    if weight < 0:
        raise CytogenError(f"{source}: loss.exclusivity_weight must be >= 0, got {weight}")
    if weight == 0:
        return
    missing = [rf.name for rf in raw if rf.reference is None]
    if missing:
        raise CytogenError(
            f"{source}: loss.exclusivity_weight={weight} needs the other structures' predictions, but "
            f"{manifest} has no 'reference' image for field(s) {missing[:5]}; add a 'reference' column (the "
            "per-pixel maximum of the other structures' predictions in this target's normalised units) or "
            "use 'cytogen retrain exclusivity', which writes them")
    bad = [rf.name for rf in raw if rf.reference.shape[0] not in (1, c_out)]
    if bad:
        raise CytogenError(f"{manifest}: the 'reference' of field(s) {bad[:5]} must have 1 or {c_out} channel(s)")


def _init_from(task: Any, loaded: Any, arch: dict[str, Any], folder: str) -> None:
    """Start from a loaded model folder's generator weights (fine-tuning)."""
    theirs = loaded.meta["architecture"]
    keys = ("name", "dims", "in_channels", "out_channels")
    if any(theirs.get(k) != arch[k] for k in keys) or dict(theirs.get("kwargs", {})) != arch["kwargs"]:
        raise CytogenError(f"{folder}: its architecture {theirs} differs from the recipe's {arch}; fine-tune "
                           "with the model's own recipe (model.json 'recipe') and the same channels")
    state = loaded.net.state_dict()
    task.net.load_state_dict(state)
    ema = getattr(task, "ema", None)
    if ema is not None:  # the GAN's exported copy starts from the same weights
        ema.module.load_state_dict(state)


def train(recipe: Recipe | str | Path | None, data: str | Path, out: str | Path, *,
          overrides: list[str] | None = None, max_steps: int | None = None,
          resume: bool = False, progress: bool = True, init_model: str | Path | None = None) -> dict[str, Any]:
    """Train a translation model (or, for a task with ``data_kind = "cells"``, a Statistical
    Cell model: see :func:`cytogen.workflows.train_cells.train_cells`; for ``data_kind =
    "markers"``, an unsupervised cell segmenter: see
    :func:`cytogen.workflows.train_cellseg.train_cellseg`) and export ``OUT/model``.

    Parameters
    ----------
    recipe
        A :class:`~cytogen.config.Recipe` (not modified), a YAML path, or None for the defaults.
    data
        Manifest CSV with ``train`` (and ideally ``val``) fields; for a cell task the
        ``CELLS/cells.csv`` of ``cytogen cells extract``. Without ``val`` rows a
        reproducible 15 % of the training fields (at least one; whole manifest groups) is held
        out for validation, seeded by ``train.seed``; with a single training field this raises.
    out
        Run folder (created). With ``resume=True`` an interrupted run continues from
        ``OUT/checkpoints/last.ckpt``.
    overrides
        ``--set`` style ``key=value`` items applied on top of ``recipe``.
    max_steps
        Overrides ``train.max_steps``.
    init_model
        Fine-tune: a model folder (``RUN/model``) whose generator weights and normalisation the
        run starts from (same architecture and channels; a GAN's discriminator starts afresh).

    Returns
    -------
    dict
        Summary written to ``OUT/train_summary.json``.
    """
    rec = apply_overrides(recipe, overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if max_steps is not None:
        rec.train.max_steps = int(max_steps)  # rec is this call's own copy
    source = "recipe" if recipe is None or isinstance(recipe, Recipe) else str(recipe)
    task_cls = TASKS.get(rec.task)
    check_task_uses(rec, task_cls, source)
    check_soft_labels(rec.gan, rec.train.max_steps, source)
    out, data = Path(out), Path(data)
    if getattr(task_cls, "data_kind", "fields") != "fields":
        for key in ("mask_channels", "balance_groups"):
            if getattr(rec.data, key):
                raise CytogenError(f"{source}: data.{key} applies to the random-patch tasks (translation, "
                                   f"segment_nuclei); task {rec.task!r} draws its data otherwise: remove it")
    if getattr(task_cls, "data_kind", "fields") == "cells":  # declared by the task, e.g. statcell_*
        from cytogen.workflows.train_cells import train_cells

        return train_cells(rec, data, out, resume=resume, progress=progress, source=source)
    if getattr(task_cls, "data_kind", "fields") == "markers":  # cellseg_consistency: M.csv of cells + markers
        from cytogen.workflows.train_cellseg import train_cellseg

        return train_cellseg(rec, data, out, resume=resume, progress=progress, source=source)
    last = check_run_folder(out, data, resume)

    entries = read_manifest(data)
    train_entries, val_entries, val_source = _split_entries(entries, rec.train.seed, data)
    encoder = MaskChannels.from_dict(rec.data.mask_channels)  # source = instance labels on channels
    train_raw = [read_field(e, source_labels=encoder is not None) for e in train_entries]
    val_raw = [read_field(e, source_labels=encoder is not None) for e in val_entries]
    dims = rec.model.dims
    c_in, c_out = _check_consistent(train_raw + val_raw, dims, data)
    _check_references(train_raw + val_raw, c_out, float(rec.loss.exclusivity_weight), source, data)
    if encoder is not None:
        c_in = encoder.out_channels
    instances = getattr(task_cls, "target_kind", "image") == "instances"  # e.g. segment_nuclei
    if instances:
        c_out = encode_instance_targets(train_raw + val_raw, rec.instances.boundary_px)
    patch = tuple(rec.data.patch_size)

    src_norm = Normalizer("none" if encoder is not None else rec.data.normalize, tuple(rec.data.percentiles),
                          rec.data.normalize_scope)
    tgt_norm = Normalizer("none" if instances else rec.data.normalize, tuple(rec.data.percentiles),
                          "field" if instances else rec.data.normalize_scope)
    src_norm.fit([rf.source.data for rf in train_raw])
    # a segmenter's outputs are class logits, left as they are (one identity channel per class)
    tgt_norm.fit([np.zeros((c_out, 1), np.float32)] if instances else [rf.target.data for rf in train_raw])
    arch = {"name": rec.model.name, "dims": dims, "in_channels": c_in, "out_channels": c_out,
            "kwargs": dict(rec.model.kwargs)}
    init = None
    if init_model is not None:  # fine-tuning keeps the model's units: its normalisers, not refitted
        from cytogen.predict.model_folder import load_model_folder

        init = load_model_folder(init_model)
        src_norm, tgt_norm = init.source_norm, init.target_norm
    mask_mode = rec.loss.mask
    train_fields = prepare_fields(train_raw, src_norm, tgt_norm, patch, mask_mode=mask_mode, encoder=encoder)
    val_fields = prepare_fields(val_raw, src_norm, tgt_norm, patch, mask_mode=mask_mode, encoder=encoder)

    settings = runtime_for(rec)
    settings.apply()

    L.seed_everything(rec.train.seed, workers=True, verbose=False)
    train_ds = RandomPatches(train_fields, patch, rec.data.patches_per_epoch, augment=rec.data.augment,
                             fg_bias=rec.data.foreground_bias, seed=rec.train.seed,
                             unpaired=not getattr(task_cls, "paired", True), encoder=encoder,
                             groups=[e.group for e in train_entries] if rec.data.balance_groups else None)
    val_ds = RandomPatches(val_fields, patch, rec.data.val_patches, augment=False,
                           fg_bias=rec.data.foreground_bias, seed=rec.train.seed + 10_000, encoder=encoder)
    loader_kw = dict(batch_size=rec.data.batch_size, num_workers=settings.num_workers,
                     persistent_workers=settings.num_workers > 0,
                     pin_memory=settings.device == "cuda")
    sampler = EpochSampler(len(train_ds))
    train_dl = ResumableLoader(train_ds, sampler=sampler, drop_last=True, **loader_kw)
    val_dl = DataLoader(val_ds, shuffle=False, **loader_kw)
    if len(train_dl) == 0:
        raise CytogenError("data.patches_per_epoch is smaller than data.batch_size; raise it")

    optim = optim_section(rec, settings)
    task = build_task(rec.task, model=arch, optim=optim, gan=asdict(rec.gan),
                      discriminator={"name": rec.discriminator.name, "kwargs": dict(rec.discriminator.kwargs)},
                      loss={"name": rec.loss.name, "alpha": rec.loss.alpha,
                            "exclusivity_weight": float(rec.loss.exclusivity_weight),
                            "exclusivity_margin": float(rec.loss.exclusivity_margin)},
                      max_steps=rec.train.max_steps, grad_clip=rec.train.grad_clip,
                      instances=asdict(rec.instances) if instances else None)
    check_spatial_size(task.generator(), patch, "data.patch_size")
    if init is not None and not resume:
        _init_from(task, init, arch, str(init_model))
    speed_up_task(task, settings, dims)

    run = run_fit(rec, settings, task, train_dl, val_dl, sampler, out, last, resume=resume,
                  progress=progress, source=source, val_source=val_source, monitor="val_loss", mode="min")
    trainer, train_s, best_path = run.trainer, run.seconds, run.best_path
    if not trainer.is_global_zero:
        return {"run": str(out), "rank": trainer.global_rank, "weights_sha256": run.digests}
    task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    net = task.generator().float().eval().to(memory_format=torch.contiguous_format)

    px = next((list(rf.source.pixel_size_um) for rf in train_raw if rf.source.pixel_size_um), None)
    rf0 = train_raw[0]
    save_model_folder(
        out / "model", net, architecture=arch, source_norm=src_norm, target_norm=tgt_norm,
        source_channels=(encoder.channel_names() if encoder is not None
                         else channel_names(rf0.source.channel_names, entries[0].source, c_in)),
        target_channels=(list(CLASS_NAMES) if instances
                         else channel_names(rf0.target.channel_names, entries[0].target, c_out)),
        pixel_size_um=px, patch_size=list(patch), recipe=rec.to_dict(),
        extra={"best_val_loss": run.best_score,
               **({"mask_channels": encoder.to_dict()} if encoder is not None else {}),
               **({"kind": NUCLEUS_SEG_KIND, "instances": asdict(rec.instances)} if instances else {})},
    )
    summary = {
        "run": str(out), "steps": int(trainer.global_step), "train_seconds": round(train_s, 1),
        "best_val_loss": run.best_score,
        "best_checkpoint": best_path, "n_train_fields": len(train_raw), "n_val_fields": len(val_raw),
        "val_source": val_source, "val_fields": [e.name for e in val_entries],
        "model": str(out / "model"), "world_size": int(trainer.world_size),
        "ranks_weights_sha256": run.digests, "ranks_in_sync": len(set(run.digests)) == 1,
        "precision": settings.precision, "channels_last": settings.channels_last,
        "compile": settings.compile, **run.images_per_second(rec.data.batch_size),
    }
    write_json(out / "train_summary.json", summary)
    _plot_losses(out)
    return summary


def _plot_losses(run: Path) -> None:
    from cytogen.report.figures import loss_curve_figure, save_figure

    log = read_loss_log(run)
    if log:
        save_figure(loss_curve_figure(log), run / "loss.png")
