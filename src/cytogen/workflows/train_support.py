"""Lightning plumbing for ``cytogen train``, shared by the translators (``train``) and the
cell models (``train_cells``): atomic checkpoints, exact resume, a clean progress bar, the
Trainer, the run-folder checks, the guarded fit, the runtime speed settings, the loss log, and a
check that DDP ranks end with identical weights."""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cytogen.data.manifest import FieldEntry
from cytogen.data.sampling import EpochSampler
from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_file, write_json, write_text
from cytogen.runtime import RuntimeSettings, resolve_runtime
from cytogen.tasks.common import NonFiniteLossError
from cytogen.tasks.time_budget import TimeBudget


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then rename it into place
    (:func:`cytogen.io.atomic.atomic_file`: per-process temporary name, fsync, rename).

    A run killed while saving leaves the previous checkpoint intact instead of a truncated one
    that would fail (or, worse, half-load) on resume. Checkpoints are loaded with
    ``weights_only=True``: no pickled code is ever executed.
    """

    #: wall seconds spent writing checkpoints in this process (the loop's checkpoint cost)
    seconds: float = 0.0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        t0 = time.perf_counter()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)
        self.seconds += time.perf_counter() - t0

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


#: Fraction of the training fields held out for validation when a manifest has no val rows.
HOLD_OUT_FRACTION = 0.15


def hold_out_fields(train: list[FieldEntry], seed: int, source: str = "manifest",
                    fraction: float = HOLD_OUT_FRACTION) -> tuple[list[FieldEntry], list[FieldEntry]]:
    """Split training fields into (train, held-out validation) reproducibly.

    ``ceil(fraction * M)`` of the ``M`` fields (at least 1) are held out, chosen by a generator
    seeded with ``seed``; fields that share a manifest ``group`` stay together (whole groups are
    held out until the count is reached), and at least one group is left for training.

    Raises
    ------
    CytogenError
        With a single field (or a single group), which cannot be both trained and validated on.
    """
    units = sorted({e.group or f"__field__{e.name}" for e in train})
    if len(units) < 2:
        what = "one training field" if len(train) == 1 else f"one group ({train[0].group!r}) of training fields"
        raise CytogenError(f"{source}: no split=val rows and only {what}, so no field can be held out "
                           "for validation; add val rows to the manifest or more training fields")
    want = max(1, math.ceil(fraction * len(train)))
    order = np.random.default_rng(int(seed)).permutation(len(units))
    held: set[str] = set()
    count = 0
    for idx in order[:len(units) - 1]:
        if count >= want:
            break
        unit = units[idx]
        held.add(unit)
        count += sum((e.group or f"__field__{e.name}") == unit for e in train)
    is_val = [(e.group or f"__field__{e.name}") in held for e in train]
    return [e for e, v in zip(train, is_val) if not v], [e for e, v in zip(train, is_val) if v]


def check_task_uses(recipe: Any, task_cls: type, source: str = "recipe") -> None:
    """Refuse recipe settings the task would ignore (a setting that is accepted must take effect).

    Among the optional sections ``gan``, ``discriminator``, ``loss``, ``vae``, ``cellseg`` and
    ``instances``, every key
    that the task does not declare in its ``uses`` (``"section"`` or ``"section.key"``) must keep its
    default. ``loss.mask`` chooses the training mask of every field task (``data_kind``
    ``"fields"``) and is always allowed there.

    Raises
    ------
    CytogenError
        Naming the recipe, the keys, the task, and what to do.
    """
    from dataclasses import fields

    uses = frozenset(getattr(task_cls, "uses", frozenset()))
    free = {"loss.mask"} if getattr(task_cls, "data_kind", "fields") == "fields" else set()
    default = type(recipe)()
    ignored = []
    for section in ("gan", "discriminator", "loss", "vae", "cellseg", "instances"):
        if section in uses:
            continue
        given, base = getattr(recipe, section), getattr(default, section)
        for f in fields(given):
            key = f"{section}.{f.name}"
            if key in uses or key in free:
                continue
            if getattr(given, f.name) != getattr(base, f.name):
                ignored.append(f"{key}={getattr(given, f.name)!r}")
    if ignored:
        raise CytogenError(
            f"{source}: task {recipe.task!r} does not use {', '.join(ignored)}; remove these settings "
            "(or choose a task that uses them), so that no setting is silently ignored")


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The 63-bit seed of training step ``step`` on rank ``rank`` of a run seeded ``seed``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed every global random stream for one training step: torch (CPU and every CUDA
    device), numpy's legacy global generator and Python's ``random``."""
    s = step_seed(seed, step, rank)
    torch.manual_seed(s)  # also seeds all CUDA devices
    np.random.seed(s % (2**32))
    random.seed(s)


class ExactResume(Callback):
    """Make a resumed run continue exactly: the data position and every random stream.

    Lightning restores weights, optimisers, schedulers (under manual optimisation too) and
    loop counters; tasks restore what they own (EMA, image pools and their generators) in
    their checkpoint hooks. This callback adds:

    * the position inside the current epoch, so the remaining batches are the ones an
      uninterrupted run would see;
    * the global random streams (dropout masks, soft noisy labels, anything drawing from
      torch/numpy/``random``): they are re-seeded before every training step from
      ``(seed, step, rank)`` (:func:`seed_step`). Restoring a saved generator state is not
      enough: between the checkpoint and the next step Lightning draws from the torch
      generator (a data loader's base seed when its iterator is created, at a resume, an
      epoch start or a validation), so a saved state goes stale at a different moment in a
      resumed run than in an uninterrupted one.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, seed: int = 0) -> None:
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_step(self.seed, int(trainer.global_step), int(trainer.global_rank))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        done = loop.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed", 0)
        epoch = loop.get("epoch_progress", {}).get("current", {}).get("processed", 0)
        if done and done < len(self.sampler) // self.batch_size:
            self.sampler.resume(epoch, done * self.batch_size)


class LoopClock(Callback):
    """Time the training loop from inside: the steady-state rate and where the time goes.

    ``times[k]`` is the clock at the start of the ``k``-th training batch of this process;
    the steady-state rate counts the batches from the ``warm``-th on (start-up, first-step
    allocation and compilation excluded) up to the end of training, so validation, checkpoints,
    logging and data loading in between are all part of it. ``validation_seconds`` sums the
    validation loops. The same is kept in this process's CPU time (``cpu_times``), which other
    processes sharing the machine disturb far less than the wall clock.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.end = self.cpu_end = 0.0
        self.validation_seconds = 0.0
        self._val_t0 = 0.0
        #: wall seconds of each training step (batch start to batch end)
        self.step_seconds: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.step_seconds.append(time.perf_counter() - self.times[-1])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_seconds += time.perf_counter() - self._val_t0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()

    def warm(self) -> int:
        """Batches left out of the steady-state figure: a tenth of the run, at least 3."""
        return max(3, len(self.times) // 10)

    def step_share(self) -> float | None:
        """Share of the steady-state wall time spent inside the training steps (the rest:
        data loading, validation, checkpoints, logging between steps)."""
        w = self.warm()
        if len(self.times) <= w or self.end <= self.times[w]:
            return None
        return sum(self.step_seconds[w:]) / (self.end - self.times[w])

    def steady_batches_per_second(self, cpu: bool = False) -> float | None:
        """Batches per (wall or, with ``cpu``, this process's CPU) second after :meth:`warm`
        (None for a run too short)."""
        w = self.warm()
        times, end = (self.cpu_times, self.cpu_end) if cpu else (self.times, self.end)
        if len(times) <= w or end <= times[w]:
            return None
        return (len(times) - w) / (end - times[w])


class CleanProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger version number, which means nothing to a user."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes and exact values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankAgreement(Callback):
    """After training, gather every rank's weight digest (DDP must leave them identical).

    ``digests`` holds one SHA-256 per rank (just rank 0's in a single process).
    """

    def __init__(self) -> None:
        self.digests: list[str] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mine = weights_digest(pl_module)
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, mine)
            self.digests = [str(d) for d in gathered]
        else:
            self.digests = [mine]


# ---------------------------------------------------------------- run set-up shared by every task


def csv_version(run: Path) -> str:
    """A fresh CSV log folder per (re)start: Lightning would delete an existing metrics.csv."""
    n = 0
    while (run / "logs" / ("csv" if n == 0 else f"csv_{n}") / "metrics.csv").exists():
        n += 1
    return "csv" if n == 0 else f"csv_{n}"


def is_rank_zero() -> bool:
    """True in the process that writes outputs (before the process group exists too): the
    rank variables of Lightning's launcher, torchrun and SLURM are all 0 or unset."""
    return all(os.environ.get(k, "0") == "0"
               for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def runtime_for(rec: Any) -> RuntimeSettings:
    """Resolve a recipe's speed keys (``train.precision/fast/compile``) on this machine."""
    return resolve_runtime(rec.train.precision, fast=rec.train.fast, compile=rec.train.compile,
                           accelerator=rec.train.accelerator, devices=rec.train.devices,
                           num_workers=rec.data.num_workers)


def fused_optimizer(settings: RuntimeSettings) -> bool:
    """Use the fused (single-kernel) Adam/AdamW step on the fast path."""
    return settings.fast and settings.device in ("cpu", "cuda")


def speed_up_task(task: L.LightningModule, settings: RuntimeSettings, dims: int) -> None:
    """Apply channels-last and (when asked) ``torch.compile`` to a task's networks in place.

    Training keeps channels-last on the fast path without timing it (prediction times it, see
    :mod:`cytogen.runtime.layout`): a measured choice can flip between two runs on one machine,
    and the two layouts round differently, so runs and resumes would no longer be bit-identical.

    Compilation uses ``nn.Module.compile``, so checkpoints keep the plain parameter names. Only
    the generators a task names in ``generator_modules`` are compiled: discriminators may need
    double backward (R1 penalty), which compiled graphs do not support.
    """
    task.memory_format = settings.memory_format(dims)
    if settings.compile:
        for name in getattr(task, "generator_modules", ("net",)):
            module = getattr(task, name, None)
            if isinstance(module, torch.nn.Module):
                module.compile()


def check_run_folder(out: Path, data: Path, resume: bool) -> Path:
    """Refuse a resume without a checkpoint, a fresh start over checkpoints, and a run folder
    that is the data's folder. Returns ``OUT/checkpoints/last.ckpt``."""
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise CytogenError(f"{out}: nothing to resume (no checkpoints/last.ckpt); start without --resume")
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise CytogenError(f"{out}: run folder already has checkpoints; pass --resume or choose a new --out")
    if out.resolve() == data.parent.resolve():
        raise CytogenError(f"{out}: run folder is the manifest's folder; choose a separate --out")
    return last


def build_trainer(rec: Any, settings: RuntimeSettings, out: Path, callbacks: list[Callback],
                  progress: bool, source: str = "recipe") -> L.Trainer:
    """The Lightning Trainer of a run (loops, hardware, DDP, precision, logs, checkpoint IO).

    Gradient clipping is done by the task (``train.grad_clip``, see
    :class:`~cytogen.tasks.common.GradClipMixin`), under every precision and optimiser.

    Raises
    ------
    CytogenError
        When Lightning refuses the accelerator/devices/strategy combination.
    """
    try:
        return L.Trainer(
            default_root_dir=out, max_steps=rec.train.max_steps,
            max_time={"minutes": rec.train.max_time_min} if rec.train.max_time_min else None,
            val_check_interval=min(rec.train.val_every, rec.train.max_steps), check_val_every_n_epoch=None,
            accelerator=rec.train.accelerator, devices=rec.train.devices, num_nodes=rec.train.num_nodes,
            strategy=rec.train.strategy, precision=settings.precision, use_distributed_sampler=False,
            logger=[CSVLogger(out, name="logs", version=csv_version(out)),
                    TensorBoardLogger(out, name="logs", version="tensorboard")],
            callbacks=callbacks, enable_progress_bar=progress, enable_model_summary=False,
            plugins=[AtomicCheckpointIO()],
            log_every_n_steps=rec.train.log_every, num_sanity_val_steps=0, deterministic=False,
        )
    except (ValueError, TypeError, MisconfigurationException) as exc:
        raise CytogenError(
            f"{source}: Lightning refused "
            f"accelerator={rec.train.accelerator!r}, devices={rec.train.devices!r}, "
            f"strategy={rec.train.strategy!r} ({str(exc).splitlines()[0]}); use e.g. "
            "--devices 2 --strategy ddp, or --accelerator cpu") from None


def start_run_folder(out: Path, rec: Any, settings: RuntimeSettings, progress: bool, val_source: str) -> None:
    """Create the run folder, write ``recipe.yaml`` and ``runtime.json`` (rank 0) and say where
    validation comes from (after every input check, so a bad input gets one line only)."""
    out.mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        write_text(out / "recipe.yaml", yaml.safe_dump(rec.to_dict(), sort_keys=False))
        write_json(out / "runtime.json", settings.to_dict())
    if progress and is_rank_zero():
        print(f"validation: {val_source}", file=sys.stderr)
        for note in settings.notes:
            print(f"note: {note}", file=sys.stderr)


def fit(trainer: L.Trainer, task: L.LightningModule, train_dl: Any, val_dl: Any, out: Path, last: Path,
        resume: bool) -> None:
    """``trainer.fit`` from scratch or from ``last`` (resume), with a NaN loss turned into a
    CytogenError naming the last good checkpoint and the fixes.

    The caller's warning filters stay as they were.
    """
    if resume:  # temporary files of a checkpoint write that a kill interrupted
        for stale in last.parent.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings():
            # The state after the optimiser step is what a checkpoint at step N should hold.
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            trainer.fit(task, train_dl, val_dl, ckpt_path=str(last) if resume else None, weights_only=True)
    except NonFiniteLossError as exc:
        good = f"the last good checkpoint is {last}; " if last.is_file() else ""
        raise CytogenError(
            f"{out}: training stopped: {exc}. {good}lower optim.lr, set train.grad_clip (e.g. 1.0) "
            "or check the data for extreme values, then run again (with --resume to continue)"
        ) from None


@dataclass
class FitResult:
    """What a finished run hands to its export: the trainer, the best checkpoint's path and
    score, the wall time and the ranks' weight digests."""

    trainer: L.Trainer
    best_path: str
    best_score: float | None
    seconds: float
    digests: list[str]
    #: where the loop's time went (steady-state batches/s, validation and checkpoint seconds)
    timing: dict[str, Any] = field(default_factory=dict)

    def images_per_second(self, batch_size: int) -> dict[str, Any]:
        """Summary keys: ``images_per_second`` (whole fit, start-up included) and
        ``loop_images_per_second`` (steady state: after the first :meth:`LoopClock.warm` steps,
        validation, checkpoints and data loading included), both over every rank."""
        n = batch_size * int(self.trainer.world_size)
        steady = self.timing.get("steady_batches_per_second")
        return {"images_per_second": round(int(self.trainer.global_step) * n / max(self.seconds, 1e-9), 2),
                "loop_images_per_second": None if steady is None else round(steady * n, 2),
                "loop_timing": {k: v for k, v in self.timing.items() if k != "steady_batches_per_second"}}


def optim_section(rec: Any, settings: RuntimeSettings) -> dict[str, Any]:
    """The recipe's ``optim`` section as a task takes it (with ``fused`` from the runtime)."""
    o = rec.optim
    return {"name": o.name, "lr": o.lr, "weight_decay": o.weight_decay, "betas": o.betas,
            "scheduler": o.scheduler, "warmup_steps": o.warmup_steps, "fused": fused_optimizer(settings)}


def run_fit(rec: Any, settings: RuntimeSettings, task: L.LightningModule, train_dl: Any, val_dl: Any,
            sampler: EpochSampler, out: Path, last: Path, *, resume: bool, progress: bool, source: str,
            val_source: str, monitor: str, mode: str) -> FitResult:
    """Checkpoints (best by ``monitor``/``mode``, periodic ``last``), exact resume, rank
    agreement and the progress bar; the Trainer; the run folder; ``fit``. Shared by every task
    kind, so that translators and cell models train through one loop. Warns when DDP ranks end
    with different weights."""
    ckpt = ModelCheckpoint(dirpath=last.parent, filename="best", monitor=monitor, mode=mode,
                           save_top_k=1, save_last=False)
    periodic = ModelCheckpoint(dirpath=last.parent, filename="last", save_top_k=0, save_last=True,
                               every_n_train_steps=max(1, rec.train.checkpoint_every))
    agreement = RankAgreement()
    clock = LoopClock()
    callbacks: list[Callback] = [ckpt, periodic, ExactResume(sampler, rec.data.batch_size, rec.train.seed),
                                 agreement, clock]
    if rec.train.max_time_min:  # the cosine schedule follows the time budget too
        callbacks.append(TimeBudget(rec.train.max_time_min))
    if progress:
        callbacks.append(CleanProgressBar(refresh_rate=5))
    trainer = build_trainer(rec, settings, out, callbacks, progress, source)
    start_run_folder(out, rec, settings, progress, val_source)
    t0 = time.perf_counter()
    fit(trainer, task, train_dl, val_dl, out, last, resume)
    seconds = time.perf_counter() - t0
    if trainer.is_global_zero and len(set(agreement.digests)) != 1:
        warnings.warn(f"{out}: DDP ranks ended with different weights ({agreement.digests}); "
                      "the exported model is rank 0's", stacklevel=3)
    best_path = (ckpt.best_model_path if rec.train.export == "best" else "") or str(last)
    score = float(ckpt.best_model_score) if ckpt.best_model_score is not None else None
    io = trainer.strategy.checkpoint_io
    while not isinstance(io, AtomicCheckpointIO) and getattr(io, "checkpoint_io", None) is not None:
        io = io.checkpoint_io  # Lightning's wrappers (async checkpointing) hold ours inside
    cpu_rate = clock.steady_batches_per_second(cpu=True)
    timing = {"steady_batches_per_second": clock.steady_batches_per_second(), "warm_steps": clock.warm(),
              "steady_batches_per_cpu_second": None if cpu_rate is None else round(cpu_rate, 4),
              "step_share": None if clock.step_share() is None else round(clock.step_share(), 4),
              "timed_steps": max(0, len(clock.times) - clock.warm()),
              "validation_seconds": round(clock.validation_seconds, 2),
              "checkpoint_seconds": round(getattr(io, "seconds", 0.0), 2)}
    return FitResult(trainer, best_path, score, seconds, list(agreement.digests), timing)


def read_loss_log(run: str | Path) -> dict[str, np.ndarray]:
    """Columns of the CSV training logs (step, train_loss, val_loss, ...) as arrays.

    The logs of a run and of each resumed restart are joined; where a restart repeated steps,
    the later restart's rows win.
    """
    import csv

    parts = sorted((Path(run) / "logs").glob("csv*/metrics.csv"),
                   key=lambda p: int(p.parent.name.partition("_")[2] or 0))
    rows: list[dict[str, str]] = []
    for path in parts:
        with open(path) as fh:
            new = list(csv.DictReader(fh))
        if new and rows:
            first = min(float(r["step"]) for r in new if r.get("step"))
            rows = [r for r in rows if float(r.get("step") or 0) < first]
        rows.extend(new)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: np.asarray([float(r[k]) if r.get(k) not in ("", None) else np.nan for r in rows])
            for k in keys}
