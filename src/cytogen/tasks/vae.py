"""Lightning tasks of the Statistical Cell (Donovan-Maiye et al. 2022): the reference beta-VAE
p(x_r) and the conditional target beta-VAE p(x_t | x_r, t).

Both train on cell crops (``data_kind = "cells"``: batches of
:class:`~cytogen.data.cell_dataset.CellDataset`, built by
:func:`cytogen.workflows.train_cells.train_cells`), minimise the paper's reparameterised
beta-ELBO ``2 [(1 - beta) recon + beta KL]`` of one reparameterised sample
(:func:`~cytogen.losses.elbo.beta_elbo_loss`) and validate with the unweighted ELBO averaged over
``vae.elbo_samples`` latent samples (:func:`~cytogen.losses.elbo.elbo_estimate`; the paper: 10).

They are built with the cell tasks' keyword arguments ``model`` (``{"name", "kwargs"}`` of a
:data:`~cytogen.models.vae.VAES` model, kwargs complete), ``optim``, ``vae``
(``{"beta", "elbo_samples"}``), ``max_steps`` and ``grad_clip``; the translators' ``gan``,
``discriminator`` and ``loss`` sections are refused by the train workflow (not in ``uses``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cytogen.errors import CytogenError
from cytogen.losses.elbo import beta_elbo_loss, check_beta, elbo_estimate, kl_per_dim, recon_sse
from cytogen.models.vae import build_vae
from cytogen.tasks.common import GradClipMixin, check_finite, configure_single
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.registry import register_task

__all__ = ["ReferenceVAETask", "StatCellTask", "TargetVAETask"]

#: Seed of the validation ELBO's latent samples: the same draws at every validation, so that the
#: best checkpoint is chosen by the model, not by Monte-Carlo noise.
VAL_SEED = 20220701


class StatCellTask(GradClipMixin, MemoryFormatMixin, L.LightningModule):
    """Base of the two Statistical Cell tasks (one network ``net``, automatic optimisation).

    Parameters
    ----------
    model
        ``{"name": "statcell_reference"|"statcell_target", "kwargs": {...}}`` (kwargs complete:
        in_channels, dims, size, latent_dim, widths, ... as the model's ``architecture``).
    optim
        The recipe's ``optim`` section (see :func:`~cytogen.tasks.common.build_optimizer`).
    vae
        ``{"beta": float in [0, 1], "elbo_samples": int >= 1}``.
    max_steps
        Length of the run, for a cosine schedule.
    grad_clip
        Clip the gradient norm to this value before each step (None: no clipping).
    """

    data_kind = "cells"
    paired = True
    generator_modules = ("net",)
    uses = frozenset({"vae"})
    #: The VAES model this task trains (``model.name`` must be this).
    model_name = ""

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], vae: dict[str, Any],
                 max_steps: int = 1000, grad_clip: float | None = None) -> None:
        super().__init__()
        if model.get("name") != self.model_name:
            raise CytogenError(f"task {self.model_name!r} trains the model {self.model_name!r}, "
                               f"not {model.get('name')!r}; set model.name: {self.model_name}")
        check_beta(vae.get("beta", 0.5))
        if int(vae.get("elbo_samples", 10)) < 1:
            raise CytogenError(f"vae.elbo_samples must be >= 1, got {vae.get('elbo_samples')!r}")
        self.save_hyperparameters()
        self.net = build_vae(model["name"], **model.get("kwargs", {}))

    # -- to implement ------------------------------------------------------------------------
    def image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image this model reconstructs."""
        raise NotImplementedError

    def coders(self, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """``(encode, decode)``: zero-argument encoder and ``z -> x_hat`` decoder for the batch."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # -- Lightning -----------------------------------------------------------------------------
    def generator(self) -> torch.nn.Module:
        """The network to export."""
        return self.net

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x_hat, mu, logvar = self(batch)
        recon = recon_sse(x_hat, self.image(batch))
        kl = kl_per_dim(mu, logvar)
        loss = beta_elbo_loss(recon, kl, float(self.hparams.vae["beta"]))
        check_finite(loss, int(self.global_step), "training loss")
        n = recon.shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("train_recon", recon.mean(), on_step=True, on_epoch=False, batch_size=n)
        self.log("train_kl", kl.sum(1).mean(), on_step=True, on_epoch=False, batch_size=n)
        return loss

    def elbo(self, batch: dict[str, torch.Tensor], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """Unweighted ELBO of each cell of ``batch`` (``vae.elbo_samples`` latent samples, drawn
        from a generator seeded by ``batch_idx`` alone; the global random streams are untouched).

        Returns :func:`~cytogen.losses.elbo.elbo_estimate`'s ``{"elbo", "recon", "kl"}``.
        """
        encode, decode = self.coders(batch)
        x = self.image(batch)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VAL_SEED + batch_idx)
            return elbo_estimate(encode, decode, x, int(self.hparams.vae["elbo_samples"]))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        est = self.elbo(batch, batch_idx)
        n = est["elbo"].shape[0]
        self.log("val_elbo", est["elbo"].mean(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_recon", est["recon"].mean(), batch_size=n, sync_dist=True)
        self.log("val_kl", est["kl"].sum(1).mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return configure_single(self)


@register_task("statcell_reference")
class ReferenceVAETask(StatCellTask):
    """The reference model p(x_r): a beta-VAE of the cell and DNA channels."""

    model_name = "statcell_reference"

    def image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["reference"]

    def coders(self, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        x = batch["reference"]
        return (lambda: self.net.encode(x)), self.net.decode

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(batch["reference"])


@register_task("statcell_target")
class TargetVAETask(StatCellTask):
    """The conditional target model p(x_t | x_r, t): a beta-VAE of the target channel given the
    reference channels and the structure type."""

    model_name = "statcell_target"
    #: The CELLS set must have a target channel.
    needs_target = True

    def image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["target"]

    def coders(self, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        xt, xr, t = batch["target"], batch["reference"], batch["structure"]
        return (lambda: self.net.encode(xt, xr, t)), (lambda z: self.net.decode(z, xr, t))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(batch["target"], batch["reference"], batch["structure"])
