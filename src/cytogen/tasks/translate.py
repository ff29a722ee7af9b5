"""Lightning task for regression translation (source channels -> target channels)."""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch

from cytogen.losses import get_loss
from cytogen.models import build_model
from cytogen.tasks.layout import MemoryFormatMixin


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or infinite (training stops; weights untouched)."""

    def __init__(self, step: int, name: str, value: float) -> None:
        super().__init__(f"{name} is {value} at step {step}")
        self.step, self.name, self.value = step, name, value


def check_finite(loss: torch.Tensor, step: int, name: str = "loss") -> None:
    """Stop before an optimiser step that would spread NaN/Inf into the weights."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(step, name, float(loss.detach().float().mean()))


def pearson_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each sample in a batch (all channels and pixels pooled)."""
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    p = p - p.mean(dim=1, keepdim=True)
    t = t - t.mean(dim=1, keepdim=True)
    denom = (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    return (p * t).sum(dim=1) / denom


def lr_lambda(cfg: dict[str, Any], max_steps: int) -> Callable[[int], float] | None:
    """Learning-rate factor per step: linear warm-up, then cosine decay to 5 % (or constant).

    Returns None when neither warm-up nor a schedule is configured.
    """
    warm = int(cfg.get("warmup_steps", 0) or 0)
    cosine = cfg.get("scheduler", "none") == "cosine"
    if not cosine and not warm:
        return None
    total = max(1, max_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def with_schedules(optimizers: list[torch.optim.Optimizer], cfg: dict[str, Any], max_steps: int) -> Any:
    """``configure_optimizers`` return value: the optimisers, with the same per-step schedule each."""
    fn = lr_lambda(cfg, max_steps)
    if fn is None:
        return optimizers
    return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, fn) for o in optimizers]


class TranslateTask(MemoryFormatMixin, L.LightningModule):
    """Train a generator to regress the target from the source.

    Parameters
    ----------
    model
        ``{"name": ..., "dims": 2|3, "in_channels": ..., "out_channels": ..., "kwargs": {...}}``.
    loss
        ``{"name": "l1"|"mse"|"masked_l1", "alpha": float}``.
    optim
        ``{"name": "adam"|"adamw", "lr", "weight_decay", "betas", "scheduler", "warmup_steps"}``,
        optionally ``"fused": True`` for the fused (single-kernel) optimiser step.
    max_steps
        Length of the run, for the cosine schedule.
    """

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], optim: dict[str, Any],
                 max_steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(model["name"], in_channels=model["in_channels"],
                               out_channels=model["out_channels"], dims=model["dims"],
                               **model.get("kwargs", {}))
        self.loss_fn = get_loss(loss["name"], loss.get("alpha", 10.0))

    def generator(self) -> torch.nn.Module:
        """The network to validate and export."""
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self.net(batch["source"])
        loss = self.loss_fn(pred, batch["target"], batch.get("mask"))
        check_finite(loss, int(self.global_step), "training loss")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=pred.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.net(batch["source"])
        n = pred.shape[0]
        self.log("val_loss", self.loss_fn(pred, batch["target"], batch.get("mask")),
                 prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_l1", (pred - batch["target"]).abs().mean(), batch_size=n, sync_dist=True)
        self.log("val_pearson", pearson_per_sample(pred, batch["target"]).mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        cfg = self.hparams.optim
        cls = torch.optim.AdamW if cfg.get("name", "adamw") == "adamw" else torch.optim.Adam
        opt = cls(self.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0),
                  betas=tuple(cfg.get("betas", (0.9, 0.999))), fused=cfg.get("fused") or None)
        fn = lr_lambda(cfg, int(self.hparams.max_steps))
        if fn is None:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
