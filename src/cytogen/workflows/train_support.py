"""Lightning plumbing for ``cytogen train``: atomic checkpoints, exact resume, a clean progress bar,
and a check that DDP ranks end with identical weights."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from cytogen.data.sampling import EpochSampler


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then rename it into place.

    A run killed while saving leaves the previous checkpoint intact instead of a truncated one
    that would fail (or, worse, half-load) on resume. Checkpoints are loaded with
    ``weights_only=True``: no pickled code is ever executed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class ExactResume(Callback):
    """Restore the data position and random states of an interrupted run.

    Lightning restores weights, optimisers, schedulers and loop counters; this callback adds
    the position inside the current epoch (so the remaining batches are the ones an
    uninterrupted run would see) and the torch/numpy random states.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = int(batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()[1].tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if "numpy_rng" in state:
            st = np.random.get_state()
            np.random.set_state((st[0], np.asarray(state["numpy_rng"], dtype=np.uint32), *st[2:]))

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
