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

import lightning as L
import torch

from cytogen.losses import get_loss
from cytogen.losses.adversarial import EMA, adversarial_loss, r1_penalty, soft_noisy_labels
from cytogen.models import build_model
from cytogen.models.discriminators import build_discriminator
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.translate import check_finite, pearson_per_sample, with_schedules


def _silence_step_counter(opt: Any) -> None:
    """Keep Lightning's global step = number of *generator* updates.

    Under manual optimisation Lightning counts every ``optimizer.step()``; with a discriminator
    optimiser too, ``max_steps`` and logged steps would silently double.
    """
    opt._on_after_step = lambda: None


def clip(task: L.LightningModule, opt: Any) -> None:
    """Clip gradients by norm when the recipe's ``train.grad_clip`` is set (manual optimisation)."""
    value = task.hparams.get("grad_clip")
    if value:
        task.clip_gradients(opt, gradient_clip_val=value, gradient_clip_algorithm="norm")


def update(task: L.LightningModule, opt: Any, loss: torch.Tensor, name: str) -> None:
    """One optimiser step under manual optimisation: NaN guard, backward, optional clip, step."""
    check_finite(loss, int(task.global_step), name)
    opt.zero_grad(set_to_none=True)
    task.manual_backward(loss)
    clip(task, opt)
    opt.step()


def build_generator(model: dict[str, Any]) -> torch.nn.Module:
    """Generator from an architecture dict (name, dims, in/out channels, kwargs)."""
    return build_model(model["name"], in_channels=model["in_channels"], out_channels=model["out_channels"],
                       dims=model["dims"], **model.get("kwargs", {}))


class GANTranslateTask(MemoryFormatMixin, L.LightningModule):
    """Paired source -> target translation with a conditional discriminator.

    Parameters
    ----------
    model, discriminator
        Architecture dicts (``name``, ``kwargs``; the model also ``dims`` and channel counts).
    loss
        Reconstruction loss ``{"name", "alpha"}``.
    optim
        Generator optimiser (``lr``, ``betas``, ``weight_decay``, ``scheduler``, ``warmup_steps``).
    gan
        :class:`~cytogen.config.GanConfig` as a dict.
    max_steps
        Run length (for schedules).
    """

    def __init__(self, model: dict[str, Any], discriminator: dict[str, Any], loss: dict[str, Any],
                 optim: dict[str, Any], gan: dict[str, Any], max_steps: int = 1000,
                 grad_clip: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
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
        opt_g, opt_d = self.optimizers()
        _silence_step_counter(opt_d)
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
        update(self, opt_d, loss_d, "discriminator loss")
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        loss_adv = self.g_loss_fn(self.disc(src, fake))
        loss_rec = self.recon(fake, tgt, mask)
        loss_g = g["adv_weight"] * loss_adv + g["recon_weight"] * loss_rec
        update(self, opt_g, loss_g, "generator loss")
        self.untoggle_optimizer(opt_g)
        for sched in self.lr_schedulers() or []:
            sched.step()
        if self.ema is not None:
            self.ema.update(self.net)
        n = src.shape[0]
        self.log_dict({"train_loss": loss_rec, "g_adv": loss_adv, "d_loss": loss_d}, prog_bar=True,
                      on_step=True, on_epoch=False, batch_size=n)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.generator()(batch["source"])
        n = pred.shape[0]
        self.log("val_loss", self.recon(pred, batch["target"], batch.get("mask")), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_l1", (pred - batch["target"]).abs().mean(), batch_size=n, sync_dist=True)
        self.log("val_pearson", pearson_per_sample(pred, batch["target"]).mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        o, g = self.hparams.optim, self.hparams.gan
        opt_g = torch.optim.Adam(self.net.parameters(), lr=o["lr"], betas=tuple(o.get("betas", (0.5, 0.999))),
                                 weight_decay=o.get("weight_decay", 0.0))
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=g["d_lr"], betas=tuple(g["d_betas"]))
        return with_schedules([opt_g, opt_d], o, int(self.hparams.max_steps))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema_state"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema_state" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state"])
