"""Lightning plumbing for ``cytogen train``: atomic checkpoints, exact resume, a clean progress bar,
and a check that DDP ranks end with identical weights."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from cytogen.data.manifest import FieldEntry
from cytogen.data.sampling import EpochSampler
from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then rename it into place
    (:func:`cytogen.io.atomic.atomic_file`: per-process temporary name, fsync, rename).

    A run killed while saving leaves the previous checkpoint intact instead of a truncated one
    that would fail (or, worse, half-load) on resume. Checkpoints are loaded with
    ``weights_only=True``: no pickled code is ever executed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)

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

    Among the optional sections ``gan``, ``discriminator`` and ``loss``, every key that the task
    does not declare in its ``uses`` (``"section"`` or ``"section.key"``) must keep its default.
    ``loss.mask`` chooses the training mask for every task and is always allowed.

    Raises
    ------
    CytogenError
        Naming the recipe, the keys, the task, and what to do.
    """
    from dataclasses import fields

    uses = frozenset(getattr(task_cls, "uses", frozenset()))
    default = type(recipe)()
    ignored = []
    for section in ("gan", "discriminator", "loss"):
        if section in uses:
            continue
        given, base = getattr(recipe, section), getattr(default, section)
        for f in fields(given):
            key = f"{section}.{f.name}"
            if key in uses or key == "loss.mask":
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
