"""Lightning task for regression translation (source channels -> target channels)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cytogen.losses import get_loss
from cytogen.losses.exclusivity import exclusivity_loss, with_exclusivity
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
        ``{"name": "l1"|"mse"|"masked_l1", "alpha": float}``, optionally ``"exclusivity_weight"``
        (p of Sun et al. 2022, Eq 1: loss = recon + p * exclusivity, where each batch then needs a
        ``"reference"``, the frozen maximum of the other structures' predictions; see
        :mod:`cytogen.losses.exclusivity`) and ``"exclusivity_margin"``.
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

    def _loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, reconstruction + p * exclusivity); the two are the same tensor for p = 0."""
        lo = self.hparams.loss
        recon = self.loss_fn(pred, batch["target"], batch.get("mask"))
        total = with_exclusivity(recon, pred, batch.get("reference"), float(lo.get("exclusivity_weight", 0.0)),
                                 float(lo.get("exclusivity_margin", 1.0)))
        return recon, total

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred = self.net(batch["source"])
        recon, loss = self._loss(pred, batch)
        check_finite(loss, int(self.global_step), "training loss")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=pred.shape[0])
        if loss is not recon:
            self.log("train_recon", recon, on_step=True, on_epoch=False, batch_size=pred.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.net(batch["source"])
        n = pred.shape[0]
        recon, loss = self._loss(pred, batch)
        self.log("val_loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        if loss is not recon:
            self.log("val_recon", recon, batch_size=n, sync_dist=True)
            self.log("val_exclusivity_term", exclusivity_loss(
                pred, batch["reference"], float(self.hparams.loss.get("exclusivity_margin", 1.0))),
                batch_size=n, sync_dist=True)
        self.log("val_l1", (pred - batch["target"]).abs().mean(), batch_size=n, sync_dist=True)
        self.log("val_pearson", pearson_per_sample(pred, batch["target"]).mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return configure_single(self)
