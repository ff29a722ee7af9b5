"""Lightning task for regression translation (source channels -> target channels)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cytogen.losses import get_loss
from cytogen.tasks.common import (
    GradClipMixin,
    build_generator,
    check_finite,
    configure_single,
    pearson_per_sample,
)
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.registry import register_task


@register_task("translate")
class TranslateTask(GradClipMixin, MemoryFormatMixin, L.LightningModule):
    """Train a generator to regress the target from the source.

    Parameters
    ----------
    model
        ``{"name": ..., "dims": 2|3, "in_channels": ..., "out_channels": ..., "kwargs": {...}}``.
    loss
        ``{"name": "l1"|"mse"|"masked_l1", "alpha": float}``.
    optim
        ``{"name": "adam"|"adamw"|"sgd", "lr", "weight_decay", "betas", "scheduler",
        "warmup_steps"}``, optionally ``"fused": True`` (see :func:`~cytogen.tasks.common.build_optimizer`).
    max_steps
        Length of the run, for the cosine schedule.
    grad_clip
        Clip the gradient norm to this value before each step (None: no clipping).
    discriminator, gan
        Accepted for the uniform task signature; regression has no adversary and ignores them.
    """

    paired = True
    generator_modules = ("net",)
    uses = frozenset({"loss"})

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], optim: dict[str, Any],
                 max_steps: int = 1000, grad_clip: float | None = None,
                 discriminator: dict[str, Any] | None = None, gan: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["discriminator", "gan"])
        self.net = build_generator(model)
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
        return configure_single(self)
