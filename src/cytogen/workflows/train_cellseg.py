"""``cytogen train`` for the unsupervised cell segmenter (``data_kind = "markers"``, task
``cellseg_consistency``; paper 004, "Segmentation model").

Called by :func:`cytogen.workflows.train.train` when the recipe's task trains on a segmentation
manifest (``M.csv``, :func:`cytogen.data.seg_manifest.read_seg_manifest`). Every field is made
ready by :func:`cytogen.workflows.cellseg_inputs.prepare_inputs` (normalised cell image, markers,
foreground mask); one training step is every marker patch inside a random ``cellseg.area`` window
of a field (:class:`~cytogen.data.marker_patches.AreaBatches`, ``cellseg.areas_per_epoch`` steps
per epoch). The loss needs no labels, so validation is the same loss on every marker of the
``split=val`` fields (or, without any, of the training fields: said in ``val_source``), each
field cut into ``area x area`` windows. The Lightning machinery is the translators'
(:func:`~cytogen.workflows.train_support.run_fit`: atomic checkpoints, exact ``--resume``, logs,
the runtime probe's fast defaults); the checkpoint with the lowest validation loss is exported to
``OUT/model`` with :func:`~cytogen.predict.model_folder.save_cellseg_folder`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cytogen.config import Recipe
from cytogen.data.marker_patches import AreaBatches, MarkerField, canvas_for, extract_patches, mask_on_canvas
from cytogen.data.normalize import Normalizer
from cytogen.data.sampling import EpochSampler, ResumableLoader
from cytogen.data.seg_manifest import SegEntry, read_seg_manifest
from cytogen.errors import CytogenError
from cytogen.io.atomic import write_json
from cytogen.models.protocol import check_spatial_size
from cytogen.predict.model_folder import save_cellseg_folder
from cytogen.tasks import TASKS
from cytogen.workflows.cellseg_inputs import SegInputs, patch_sigma_px, prepare_inputs
from cytogen.workflows.train import channel_names
from cytogen.workflows.train_support import (
    check_run_folder,
    optim_section,
    read_loss_log,
    run_fit,
    runtime_for,
    speed_up_task,
)

__all__ = ["AreaTiles", "only_item", "train_cellseg"]

#: Data settings of patch-sampling tasks that the segmenter cannot use (a batch is one area's
#: marker patches, normalisation is per field).
_UNUSED_DATA = ("patches_per_epoch", "val_patches", "foreground_bias", "normalize_scope")
#: Model arguments that come from the data and the task, not from ``model.kwargs``.
_FROM_DATA = ("in_channels", "out_channels", "dims")


class AreaTiles(Dataset):
    """Every marker of ``fields`` exactly once, in batches of ``area x area`` windows.

    Each field is cut into a grid of windows (``[i * area, (i + 1) * area)`` per axis); item ``t``
    holds the patches of the markers whose pixel lies in window ``t`` (windows without markers are
    skipped), as :class:`~cytogen.data.marker_patches.AreaBatches` items: ``"patches"``,
    ``"offsets"``, ``"mask"`` (the canvas) and ``"field"``. Deterministic: the validation set of
    the unsupervised loss. Use with ``DataLoader(batch_size=None)``.
    """

    def __init__(self, fields: list[MarkerField], *, size: tuple[int, ...], area: int,
                 sigma_px: float | tuple[float, ...]) -> None:
        self.fields, self.size, self.sigma_px = list(fields), tuple(size), sigma_px
        self.items: list[tuple[int, np.ndarray]] = []
        for fi, f in enumerate(self.fields):
            cell = np.floor(f.markers + 0.5).astype(np.int64) // int(area)
            keys, inverse = np.unique(cell, axis=0, return_inverse=True)
            for k in range(len(keys)):
                self.items.append((fi, np.flatnonzero(inverse.reshape(-1) == k)))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_markers(self) -> int:
        """Markers (patches) in one pass over the tiles."""
        return int(sum(len(sel) for _, sel in self.items))

    def __getitem__(self, t: int) -> dict[str, Any]:
        fi, sel = self.items[t]
        f = self.fields[fi]
        patches, origins = extract_patches(f.image, f.markers[sel], self.size, self.sigma_px)
        c0, shape = canvas_for(origins, self.size)
        return {"patches": torch.from_numpy(patches),
                "offsets": torch.from_numpy(np.ascontiguousarray(origins - c0, np.int64)),
                "mask": torch.from_numpy(mask_on_canvas(f.foreground, c0, shape)), "field": fi}


def only_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate a batch of one area item into the item itself."""
    return items[0]


def _check_settings(rec: Recipe, source: str) -> None:
    """Refuse recipe settings the segmenter would ignore or that cannot work."""
    default = Recipe()
    ignored = [f"data.{k}={getattr(rec.data, k)!r}" for k in _UNUSED_DATA
               if getattr(rec.data, k) != getattr(default.data, k)]
    if rec.data.batch_size not in (default.data.batch_size, 1):
        ignored.append(f"data.batch_size={rec.data.batch_size!r}")
    ignored += [f"predict.{f.name}={getattr(rec.predict, f.name)!r}" for f in fields(rec.predict)
                if getattr(rec.predict, f.name) != getattr(default.predict, f.name)]
    if ignored:
        raise CytogenError(
            f"{source}: task {rec.task!r} trains on all marker patches of one cellseg.area window per step "
            "(cellseg.areas_per_epoch steps per epoch; validation: every marker of the validation fields), "
            f"normalised per field, and does not use {', '.join(ignored)}; remove these settings")
    given = sorted(set(rec.model.kwargs) & set(_FROM_DATA))
    if given:
        raise CytogenError(f"{source}: model.kwargs {given} are set by the task (the source channels + the "
                           "Gaussian marker channel in, one logit out) and model.dims; remove them from model.kwargs")
    if rec.model.kwargs.get("final_activation") not in (None, "none"):
        raise CytogenError(f"{source}: task {rec.task!r} applies the sigmoid itself (in float32); remove "
                           f"model.kwargs.final_activation={rec.model.kwargs['final_activation']!r}")
    if rec.model.dims != 2:
        raise CytogenError(f"{source}: model.dims is {rec.model.dims}, but cell segmentation takes 2D fields; "
                           "use configs/cellseg_consistency2d.yaml (model.dims: 2)")
    c = rec.cellseg
    if c.area < 1 or c.areas_per_epoch < 1:
        raise CytogenError(f"{source}: cellseg.area ({c.area}) and cellseg.areas_per_epoch ({c.areas_per_epoch}) "
                           "must be >= 1")
    if not 0.0 < c.threshold < 1.0:
        raise CytogenError(f"{source}: cellseg.threshold is {c.threshold}; it must lie in (0, 1) (paper: 0.5)")
    if c.lam < 0 or c.beta < 0:
        raise CytogenError(f"{source}: cellseg.lam ({c.lam}) and cellseg.beta ({c.beta}) must be >= 0 "
                           "(paper: 3.32 and 15)")


def _prepare(entries: list[SegEntry], rec: Recipe, norm: Normalizer) -> list[SegInputs]:
    settings = asdict(rec.cellseg)
    return [prepare_inputs(e, settings, markers_from=rec.cellseg.marker_source, normalizer=norm) for e in entries]


def _sigma(inputs: list[SegInputs], rec: Recipe, data: Path) -> tuple[tuple[float, ...], str]:
    """Gaussian sigma in pixels per axis (the same for every field) and where it comes from."""
    settings = asdict(rec.cellseg)
    sigmas = {tuple(round(s, 6) for s in patch_sigma_px(settings, i.pixel_size_um)) for i in inputs}
    if len(sigmas) > 1:
        sizes = sorted({str(i.pixel_size_um) for i in inputs})
        raise CytogenError(
            f"{data}: the fields have different pixel sizes ({', '.join(sizes)}), so cellseg.sigma_um "
            f"{rec.cellseg.sigma_um} is a different Gaussian in pixels per field; train on fields of one pixel "
            "size (resample them), or give cellseg.sigma_px and leave cellseg.sigma_um empty")
    known = all(i.pixel_size_um is not None for i in inputs)
    how = "cellseg.sigma_um / pixel size" if rec.cellseg.sigma_um is not None and known else "cellseg.sigma_px"
    return next(iter(sigmas)), how


def _fields(inputs: list[SegInputs], c_in: int, data: Path) -> list[MarkerField]:
    out = []
    for i in inputs:
        if i.image.shape[0] != c_in:
            raise CytogenError(f"{data}: field {i.name!r} has {i.image.shape[0]} source channel(s), the first "
                               f"training field {c_in}; every field needs the same channels")
        out.append(MarkerField(i.name, i.image, i.markers, i.foreground))
    return out


def _marker_words(inputs: list[SegInputs], attr: str) -> str:
    kinds = sorted({getattr(i, attr) for i in inputs})
    return kinds[0] if len(kinds) == 1 else "mixed: " + ", ".join(kinds)


def train_cellseg(rec: Recipe, data: Path, out: Path, *, resume: bool = False, progress: bool = True,
                  source: str = "recipe") -> dict[str, Any]:
    """Train the marker-patch cell segmenter without labels and export ``OUT/model``.

    Parameters
    ----------
    rec
        The validated recipe (task ``cellseg_consistency``; not modified).
    data
        Segmentation manifest ``M.csv``. Fields of split ``train`` train; ``val`` fields validate
        (without any, the training fields themselves: the loss is unsupervised). Markers come from
        the column ``cellseg.marker_source`` (None: the only one a row gives), the foreground from
        the ``foreground`` column, the scribbles' pixel classifier or a graph cut.
    out
        Run folder; with ``resume=True`` continues exactly from ``OUT/checkpoints/last.ckpt``.
    resume, progress
        Continue a killed run; show the progress bar.
    source
        How to name the recipe in messages.

    Returns
    -------
    dict
        Summary written to ``OUT/train_summary.json`` (steps, train_seconds, n_train_fields,
        n_markers, marker_source, val_source, precision, patches_per_second, best_val_loss, ...).

    Raises
    ------
    CytogenError
        Settings the task cannot use, no ``split=train`` rows, fields without markers or with
        different channels, a patch size the network cannot take.
    """
    _check_settings(rec, source)
    rec = copy.deepcopy(rec)
    rec.data.batch_size = 1  # one area per step: the resume bookkeeping counts areas
    data, out = Path(data), Path(out)
    entries = read_seg_manifest(data)
    last = check_run_folder(out, data, resume)
    train_entries = [e for e in entries if e.split == "train"]
    val_entries = [e for e in entries if e.split == "val"]
    if not train_entries:
        raise CytogenError(f"{data}: no rows with split=train; mark the fields to learn from as train "
                           "(the loss needs no labels, so every field can train)")
    norm = Normalizer(rec.data.normalize, tuple(rec.data.percentiles), "field")
    train_in = _prepare(train_entries, rec, norm)
    val_in = _prepare(val_entries, rec, norm)
    norm.fit([i.raw.data for i in train_in])  # per-field scope: recorded, the images use their own statistics
    source_channels = channel_names(train_in[0].raw.channel_names, train_entries[0].source,
                                    int(train_in[0].image.shape[0]))
    for i in train_in + val_in:
        i.raw = None  # the raw sources are not needed any more (memory)
    n_markers = int(sum(len(i.markers) for i in train_in))
    if n_markers == 0:
        raise CytogenError(f"{data}: no markers in any training field ({_marker_words(train_in, 'marker_source')}); "
                           "check the marker column and the cellseg marker settings (nucleus_diameter_px, "
                           "threshold_rel)")
    sigma, sigma_how = _sigma(train_in + val_in, rec, data)
    c_in = int(train_in[0].image.shape[0])
    train_fields = _fields(train_in, c_in, data)
    val_fields = _fields(val_in, c_in, data) if val_in else train_fields
    patch = tuple(int(s) for s in rec.data.patch_size)
    c = rec.cellseg
    val_ds = AreaTiles([f for f in val_fields if len(f.markers)], size=patch, area=c.area, sigma_px=sigma)
    if val_in and len(val_ds) == 0:
        raise CytogenError(f"{data}: the split=val fields have no markers; give them markers or drop their split")
    val_source = (f"{len(val_in)} split=val fields of the manifest ({val_ds.n_markers} markers), unsupervised loss"
                  if val_in else
                  f"no split=val fields: the unsupervised loss (no labels) on every marker of the {len(train_in)} "
                  f"training fields ({val_ds.n_markers} markers, fixed {c.area} px windows)")

    settings = runtime_for(rec)
    settings.apply()
    L.seed_everything(rec.train.seed, workers=True, verbose=False)
    train_ds = AreaBatches([f for f in train_fields if len(f.markers)], size=patch, area=c.area,
                           sigma_px=sigma, length=c.areas_per_epoch, seed=rec.train.seed)
    loader_kw = dict(num_workers=settings.num_workers, persistent_workers=settings.num_workers > 0,
                     pin_memory=settings.device == "cuda")
    sampler = EpochSampler(len(train_ds))
    # batches of one area: a batch sampler of size 1 reads the sampler lazily, after Lightning's
    # set_epoch (batch_size=None would iterate it before, and a resumed run would restart the epoch)
    train_dl = ResumableLoader(train_ds, sampler=sampler, batch_size=1, collate_fn=only_item, **loader_kw)
    val_dl = DataLoader(val_ds, batch_size=None, shuffle=False, **loader_kw)

    arch = {"name": rec.model.name, "dims": rec.model.dims, "in_channels": c_in + 1, "out_channels": 1,
            "kwargs": {**dict(rec.model.kwargs), "final_activation": None}}
    optim = optim_section(rec, settings)
    task = TASKS.build(rec.task, model=arch, optim=optim, cellseg=asdict(c), max_steps=rec.train.max_steps,
                       grad_clip=rec.train.grad_clip, augment=rec.data.augment, seed=rec.train.seed)
    check_spatial_size(task.generator(), patch, "data.patch_size")
    speed_up_task(task, settings, rec.model.dims)

    run = run_fit(rec, settings, task, train_dl, val_dl, sampler, out, last, resume=resume,
                  progress=progress, source=source, val_source=val_source, monitor="val_loss", mode="min")
    trainer, train_s, best_path = run.trainer, run.seconds, run.best_path
    if not trainer.is_global_zero:
        return {"run": str(out), "rank": trainer.global_rank, "weights_sha256": run.digests}
    task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    net = task.generator().cpu().float().eval().to(memory_format=torch.contiguous_format)

    px = next((list(i.pixel_size_um) for i in train_in if i.pixel_size_um), None)
    iso = len(set(sigma)) == 1
    resolved = {**asdict(c), "sigma_px": float(sigma[0]) if iso else c.sigma_px}
    save_cellseg_folder(
        out / "model", net, architecture=arch, source_norm=norm,
        source_channels=source_channels,
        pixel_size_um=px, patch_size=list(patch), cellseg=resolved, recipe=rec.to_dict(),
        extra={"best_val_loss": run.best_score, "sigma_px_used": [float(s) for s in sigma],
               "augment": rec.data.augment, "marker_source": _marker_words(train_in, "marker_source")},
    )
    steps = int(trainer.global_step)
    world = int(trainer.world_size)
    summary = {
        "run": str(out), "task": rec.task, "steps": steps, "train_seconds": round(train_s, 1),
        "best_val_loss": run.best_score, "best_checkpoint": best_path,
        "n_train_fields": len(train_in), "n_val_fields": len(val_in), "n_markers": n_markers,
        "n_val_markers": val_ds.n_markers, "marker_source": _marker_words(train_in, "marker_source"),
        "foreground_source": _marker_words(train_in, "foreground_source"),
        "val_source": val_source, "val_fields": [i.name for i in val_in],
        "sigma_px": [float(s) for s in sigma], "sigma_from": sigma_how, "augment": rec.data.augment,
        "model": str(out / "model"), "world_size": world, "ranks_weights_sha256": run.digests,
        "ranks_in_sync": len(set(run.digests)) == 1,
        "precision": settings.precision, "channels_last": settings.channels_last, "compile": settings.compile,
        "patches_per_second": round(task.patches_seen * world / max(train_s, 1e-9), 2),
        "steps_per_second": round(max(0, steps - task.start_step) / max(train_s, 1e-9), 3),
    }
    write_json(out / "train_summary.json", summary)
    _plot_losses(out)
    return summary


def _plot_losses(run: Path) -> None:
    """``loss.png``: training and validation loss (linear: Eq 1 is negative once cells are
    segmented), and the three terms per patch of the validation loss."""
    from matplotlib.figure import Figure

    from cytogen.report.figures import save_figure

    log = read_loss_log(run)
    step = log.get("step")
    if step is None:
        return
    fig = Figure(figsize=(9, 3.5))
    left, right = fig.subplots(1, 2)
    panels = ((left, (("train_loss", "-"), ("val_loss", "o-")), "loss per patch (Eq 1)"),
              (right, (("val_area", "o-"), ("val_overlap", "s-"), ("val_outside", "^-")), "validation terms per patch"))
    for ax, series, ylabel in panels:
        for key, style in series:
            if key in log:
                ok = np.isfinite(log[key])
                if ok.any():
                    ax.plot(step[ok], log[key][ok], style, label=key.replace("_", " "), ms=3, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, run / "loss.png")
