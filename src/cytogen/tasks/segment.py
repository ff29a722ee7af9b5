"""Lightning task of the supervised nucleus segmenter (``segment_nuclei``).

A generator maps the normalised image to three class logits (background, interior, boundary);
the target is the instance label image encoded by
:func:`cytogen.data.instance_targets.instance_classes` (the train workflow does that for a task
that declares ``target_kind = "instances"``). Loss: :func:`cytogen.losses.segmentation.class_loss`.
Validation logs the loss and the foreground IoU at 0.5.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cytogen.data.instance_targets import N_CLASSES
from cytogen.errors import CytogenError
from cytogen.losses.segmentation import class_loss
from cytogen.tasks.common import GradClipMixin, build_generator, check_finite, configure_single
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.registry import register_task


@register_task("segment_nuclei")
class NucleusSegTask(GradClipMixin, MemoryFormatMixin, L.LightningModule):
    """Three-class nucleus segmentation (settings: the recipe's ``instances`` section)."""

    paired = True
    generator_modules = ("net",)
    uses = frozenset({"instances"})
    target_kind = "instances"  # the workflow encodes instance labels as class maps
    out_channels = N_CLASSES

    def __init__(self, model: dict[str, Any], loss: dict[str, Any], optim: dict[str, Any],
                 max_steps: int = 1000, grad_clip: float | None = None,
                 discriminator: dict[str, Any] | None = None, gan: dict[str, Any] | None = None,
                 instances: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["discriminator", "gan", "loss"])
        if int(model["out_channels"]) != N_CLASSES:
            raise CytogenError(f"segment_nuclei predicts {N_CLASSES} classes, got out_channels {model['out_channels']}")
        self.net = build_generator(model)
        inst = instances or {}
        self.boundary_weight = float(inst.get("boundary_weight", 3.0))
        self.dice_weight = float(inst.get("dice_weight", 1.0))

    def generator(self) -> torch.nn.Module:
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(batch["source"])
        return class_loss(logits, batch["target"], boundary_weight=self.boundary_weight,
                          dice_weight=self.dice_weight), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits = self._loss(batch)
        check_finite(loss, int(self.global_step), "training loss")
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        n = logits.shape[0]
        fg = logits.float().argmax(1) > 0
        truth = batch["target"][:, 0] > 0.5
        iou = (fg & truth).sum().float() / (fg | truth).sum().clamp_min(1).float()
        self.log("val_loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_fg_iou", iou, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return configure_single(self)
