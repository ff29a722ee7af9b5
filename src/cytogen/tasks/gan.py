"""Conditional adversarial translation (pix2pix, Vox2Vox-RU, TFill-Coarse + StyleGAN2 critic).

One training step = one discriminator update followed by one generator update, with separate
optimisers and learning rates. The generator loss is ``adv_weight * adversarial +
recon_weight * reconstruction`` (L1, MSE or the mask-weighted L1 of the actin -> nucleus
paper). Options: soft noisy labels during the first iterations (Sun et al.), R1 gradient
penalty on real images, and an exponential moving average (EMA) of the generator (with the
warm-up decay min(d, (1 + n) / (10 + n)) so short runs are not stuck near the initial weights), which is
then the one validated and exported.
"""

from __future__ import annotations

from typing import Any

import torch

from cytogen.losses import get_loss
from cytogen.losses.exclusivity import with_exclusivity
from cytogen.losses.adversarial import EMA, adversarial_loss, r1_penalty, soft_noisy_labels
from cytogen.models.discriminators import build_discriminator
from cytogen.tasks.base import AdversarialTask
from cytogen.tasks.common import build_generator, pearson_per_sample
from cytogen.tasks.registry import register_task


@register_task("gan")
class GANTranslateTask(AdversarialTask):
    """Paired source -> target translation with a conditional discriminator.

    Parameters
    ----------
    model, discriminator
        Architecture dicts (``name``, ``kwargs``; the model also ``dims`` and channel counts).
    loss
        Reconstruction loss ``{"name", "alpha"}``, optionally ``"exclusivity_weight"`` p and
        ``"exclusivity_margin"``: the generator loss becomes ``adv_weight * adversarial +
        recon_weight * recon + p * exclusivity`` (Sun et al. 2022, Eq 1, Vox2Vox-RU), each batch
        then carrying a ``"reference"`` (see :mod:`cytogen.losses.exclusivity`).
    optim
        Optimiser section (``name``, ``lr``, ``betas``, ``weight_decay``, ``fused``,
        ``scheduler``, ``warmup_steps``); the discriminator uses the same optimiser kind and
        weight decay with the ``gan`` section's ``d_lr`` and ``d_betas``.
    gan
        :class:`~cytogen.config.GanConfig` as a dict.
    max_steps
        Run length (for schedules).
    grad_clip
        Clip each player's gradient norm to this value (None: no clipping).
    """

    paired = True
    generator_modules = ("net",)
    uses = frozenset({"loss", "discriminator", "gan.adversarial", "gan.adv_weight", "gan.recon_weight",
                      "gan.d_lr", "gan.d_betas", "gan.soft_labels", "gan.soft_label_steps",
                      "gan.r1_gamma", "gan.ema_decay"})

    def __init__(self, model: dict[str, Any], discriminator: dict[str, Any], loss: dict[str, Any],
                 optim: dict[str, Any], gan: dict[str, Any], max_steps: int = 1000,
                 grad_clip: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_generator(model)
        self.disc = build_discriminator(discriminator["name"], in_channels=model["out_channels"],
                                        cond_channels=model["in_channels"], dims=model["dims"],
                                        **discriminator.get("kwargs", {}))
        self.recon = get_loss(loss["name"], loss.get("alpha", 10.0))
        self.d_loss_fn, self.g_loss_fn = adversarial_loss(gan["adversarial"])
        self.ema = EMA(self.net, decay=gan["ema_decay"], warmup=True) if gan.get("ema_decay", 0) > 0 else None
        self.net_ema = self.ema.module if self.ema is not None else None

    def generator(self) -> torch.nn.Module:
        """The generator to validate and export (the EMA copy when enabled)."""
        return self.net_ema if self.net_ema is not None else self.net

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def discriminator_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.disc.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator()(x)

    def _labels(self, logits: torch.Tensor) -> tuple[Any, Any]:
        g = self.hparams.gan
        if g.get("soft_labels"):
            real, fake = soft_noisy_labels(int(self.global_step), tuple(logits.shape),
                                           warm_steps=g["soft_label_steps"])
            return (torch.as_tensor(real, dtype=logits.dtype, device=logits.device),
                    torch.as_tensor(fake, dtype=logits.dtype, device=logits.device))
        return 1.0, 0.0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        g = self.hparams.gan
        opt_g, opt_d = self.players()
        src, tgt, mask = batch["source"], batch["target"], batch.get("mask")
        fake = self.net(src)

        self.toggle_optimizer(opt_d)
        real_in = tgt.detach().requires_grad_(g.get("r1_gamma", 0) > 0)
        d_real = self.disc(src, real_in)
        d_fake = self.disc(src, fake.detach())
        real_lab, fake_lab = self._labels(d_real)
        loss_d = self.d_loss_fn(d_real, d_fake, real_lab, fake_lab)
        if g.get("r1_gamma", 0) > 0:
            loss_d = loss_d + 0.5 * g["r1_gamma"] * r1_penalty(d_real, real_in)
        self.update(opt_d, loss_d, "discriminator loss")
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        loss_adv = self.g_loss_fn(self.disc(src, fake))
        loss_rec = self.recon(fake, tgt, mask)
        lo = self.hparams.loss
        loss_g = with_exclusivity(g["adv_weight"] * loss_adv + g["recon_weight"] * loss_rec, fake,
                                  batch.get("reference"), float(lo.get("exclusivity_weight", 0.0)),
                                  float(lo.get("exclusivity_margin", 1.0)))
        self.update(opt_g, loss_g, "generator loss")
        self.untoggle_optimizer(opt_g)
        self.end_step()
        n = src.shape[0]
        self.log_dict({"train_loss": loss_rec, "g_adv": loss_adv, "d_loss": loss_d}, prog_bar=True,
                      on_step=True, on_epoch=False, batch_size=n)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.generator()(batch["source"])
        n = pred.shape[0]
        self.log("val_loss", self.recon(pred, batch["target"], batch.get("mask")), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_l1", (pred - batch["target"]).abs().mean(), batch_size=n, sync_dist=True)
        self.log("val_pearson", pearson_per_sample(pred, batch["target"]).mean(), batch_size=n, sync_dist=True)
