"""Lightning task of unsupervised marker-controlled cell segmentation (paper 004, "Segmentation
model"): a network maps each marker's patch (the cell image channels plus a Gaussian disk at the
marker) to the probability that a pixel belongs to that marker's cell, trained without labels by
the consistency loss of Eq 1 (:func:`~cytogen.losses.consistency.consistency_loss`): segmented
area is rewarded, two overlapping patches claiming the same pixel and probability outside the
foreground mask are penalised.

A batch is every patch whose marker lies in one ``area x area`` window of a field
(:class:`~cytogen.data.marker_patches.AreaBatches`, ``DataLoader(batch_size=None)``), so that the
patches overlap on a common canvas. Augmentation is the paper's: each patch is flipped and/or
transposed at random (:func:`~cytogen.data.marker_patches.dihedral_batch`) and the network's
output is transformed back (:func:`~cytogen.data.marker_patches.invert_dihedral_batch`) before
the loss. The codes come from a generator seeded by ``(seed, global step, rank)`` alone, so a
resumed run draws the same ones as an uninterrupted run.

Built with ``model`` (``{"name", "dims", "in_channels", "out_channels": 1, "kwargs"}``: a
:mod:`cytogen.models` generator whose ``in_channels`` are the image channels + 1 and whose
output is a logit), ``optim``, ``cellseg`` (the recipe's section as a dict: ``lam``, ``beta``,
``log_base`` are read here), ``max_steps``, ``grad_clip``, ``augment`` and ``seed``; the
translators' ``gan``, ``discriminator`` and ``loss`` sections are refused by the train workflow
(not in ``uses``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from cytogen.data.marker_patches import dihedral_batch, invert_dihedral_batch, random_codes
from cytogen.errors import CytogenError
from cytogen.losses.consistency import consistency_loss, consistency_terms
from cytogen.tasks.common import GradClipMixin, build_generator, check_finite, configure_single
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.registry import register_task

__all__ = ["CellSegTask", "step_generator"]


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, step, rank)`` only (for the augmentation
    codes of one training step; the global random streams are untouched)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


@register_task("cellseg_consistency")
class CellSegTask(GradClipMixin, MemoryFormatMixin, L.LightningModule):
    """Train a marker-patch segmenter with the unsupervised consistency loss (one network ``net``).

    Parameters
    ----------
    model
        ``{"name", "dims", "in_channels", "out_channels", "kwargs"}`` of a registered generator;
        ``out_channels`` must be 1 and ``in_channels`` at least 2 (image channels + the Gaussian
        marker channel); the output is a logit (``kwargs.final_activation`` None).
    optim
        The recipe's ``optim`` section (see :func:`~cytogen.tasks.common.build_optimizer`); the
        paper: Adam at a constant learning rate of 0.005.
    cellseg
        The recipe's ``cellseg`` section; ``lam`` (weight of the overlap term), ``beta`` (weight
        of the outside-the-mask term) and ``log_base`` are used here.
    max_steps
        Length of the run, for a cosine schedule.
    grad_clip
        Clip the gradient norm to this value before each step (None: no clipping).
    augment
        Random flips/transposes of every training patch (undone on the output before the loss).
    seed
        Seed of the augmentation codes (the recipe's ``train.seed``).
    """

    data_kind = "markers"
    paired = True
    generator_modules = ("net",)
    uses = frozenset({"cellseg"})

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], cellseg: dict[str, Any],
                 max_steps: int = 1000, grad_clip: float | None = None, augment: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        if int(model.get("out_channels", 1)) != 1:
            raise CytogenError(f"task cellseg_consistency predicts one probability map per patch; model "
                               f"out_channels is {model.get('out_channels')!r}, it must be 1")
        if int(model.get("in_channels", 0)) < 2:
            raise CytogenError(f"task cellseg_consistency needs the image channels plus the Gaussian marker "
                               f"channel as input (in_channels >= 2), got {model.get('in_channels')!r}")
        if model.get("kwargs", {}).get("final_activation") not in (None, "none"):
            raise CytogenError("task cellseg_consistency applies the sigmoid itself (in float32); remove "
                               f"model.kwargs.final_activation={model['kwargs']['final_activation']!r}")
        for key in ("lam", "beta"):
            if float(cellseg.get(key, 0.0)) < 0:
                raise CytogenError(f"cellseg.{key} is {cellseg[key]}; it must be >= 0")
        self.save_hyperparameters()
        self.net = build_generator(model)
        #: Patches trained on by this process since it was built (for patches per second).
        self.patches_seen = 0
        #: Global step this process started training from (0, or a resumed checkpoint's step).
        self.start_step = 0

    # -- network -------------------------------------------------------------------------------
    def generator(self) -> torch.nn.Module:
        """The network to export (its output is a logit per pixel)."""
        return self.net

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, 1, *patch)`` of patches ``(n, C + 1, *patch)``."""
        return self.net(patches)

    def probabilities(self, patches: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Cell probabilities ``(n, *patch)`` (float32 sigmoid of the logits).

        With ``codes``, every patch is flipped/transposed by its code before the network and the
        output transformed back, so the result is in the input patches' orientation.
        """
        x = patches
        if codes is not None:
            x = dihedral_batch(x, codes)
            if self.memory_format is not None and x.ndim == self._format_rank():
                x = x.contiguous(memory_format=self.memory_format)
        y = torch.sigmoid(self.net(x).float())
        if codes is not None:
            y = invert_dihedral_batch(y, codes)
        return y[:, 0]

    # -- loss ----------------------------------------------------------------------------------
    def _loss(self, y: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.hparams.cellseg
        lam, beta, base = float(c.get("lam", 3.32)), float(c.get("beta", 15.0)), float(c.get("log_base", 10.0))
        with torch.autocast(device_type=y.device.type, enabled=False):
            loss = consistency_loss(y, batch["offsets"], batch["mask"], lam=lam, beta=beta, log_base=base)
            with torch.no_grad():
                terms = consistency_terms(y.detach(), batch["offsets"], batch["mask"], log_base=base)
        return loss, terms

    def _codes(self, patches: torch.Tensor) -> torch.Tensor | None:
        if not self.hparams.augment:
            return None
        g = step_generator(int(self.hparams.seed), int(self.global_step), int(self.global_rank))
        square = patches.shape[-1] == patches.shape[-2]
        return random_codes(patches.shape[0], g, square=square).to(patches.device)

    def _log_terms(self, prefix: str, terms: dict[str, torch.Tensor], n: int, **kw: Any) -> None:
        for key, value in terms.items():  # per patch, like the loss
            self.log(f"{prefix}_{key}", value / max(n, 1), batch_size=n, **kw)

    def on_train_start(self) -> None:
        self.start_step = int(self.global_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["patches"]
        n = int(x.shape[0])
        y = self.probabilities(x, self._codes(x))
        loss, terms = self._loss(y, batch)
        check_finite(loss, int(self.global_step), "training loss")
        self.patches_seen += n
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self._log_terms("train", terms, n, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["patches"]
        n = int(x.shape[0])
        loss, terms = self._loss(self.probabilities(x), batch)
        self.log("val_loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self._log_terms("val", terms, n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return configure_single(self)
