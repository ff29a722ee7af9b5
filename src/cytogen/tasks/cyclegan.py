"""CycleGAN for unpaired data (Zhu et al. 2017): two generators, two discriminators.

Domain A is the source, B the target. ``net`` (A -> B) is the generator that is validated and
exported; ``net_ba`` (B -> A) closes the cycle. Generator loss: adversarial (LSGAN by default)
for both directions + ``cycle_weight`` * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|) +
``identity_weight * cycle_weight`` * (|G_AB(b) - b| + |G_BA(a) - a|) when A and B have the same
number of channels. Discriminators see a history pool of generated images.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cytogen.losses.adversarial import adversarial_loss
from cytogen.models.discriminators import build_discriminator
from cytogen.tasks.gan import _silence_step_counter, build_generator, update
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.translate import pearson_per_sample, with_schedules


class ImagePool:
    """History of generated images: half of the time a stored image replaces the new one.

    Shrivastava et al. 2017 / CycleGAN: discriminators see older fakes too, which damps
    oscillation. ``size=0`` disables the pool.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch mixing ``images`` with stored ones (stored ones are swapped out)."""
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() < 0.5:
                k = int(torch.randint(self.size, (1,), generator=self.gen))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)


class CycleGANTask(MemoryFormatMixin, L.LightningModule):
    """Unpaired translation A (source) <-> B (target); see module docstring."""

    def __init__(self, model: dict[str, Any], discriminator: dict[str, Any], loss: dict[str, Any],
                 optim: dict[str, Any], gan: dict[str, Any], max_steps: int = 1000,
                 grad_clip: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        ca, cb = model["in_channels"], model["out_channels"]
        self.net = build_generator(model)
        self.net_ba = build_generator({**model, "in_channels": cb, "out_channels": ca})
        dkw = dict(dims=model["dims"], cond_channels=0, **discriminator.get("kwargs", {}))
        self.disc_a = build_discriminator(discriminator["name"], in_channels=ca, **dkw)
        self.disc_b = build_discriminator(discriminator["name"], in_channels=cb, **dkw)
        self.d_loss_fn, self.g_loss_fn = adversarial_loss(gan["adversarial"])
        self.pool_a, self.pool_b = ImagePool(gan["pool_size"], 1), ImagePool(gan["pool_size"], 2)
        self.same_channels = ca == cb

    def generator(self) -> torch.nn.Module:
        """The A -> B generator (validated and exported)."""
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        g = self.hparams.gan
        opt_g, opt_d = self.optimizers()
        _silence_step_counter(opt_d)
        a, b = batch["source"], batch["target"]

        self.toggle_optimizer(opt_g)
        fake_b, fake_a = self.net(a), self.net_ba(b)
        adv = self.g_loss_fn(self.disc_b(None, fake_b)) + self.g_loss_fn(self.disc_a(None, fake_a))
        cyc = (self.net_ba(fake_b) - a).abs().mean() + (self.net(fake_a) - b).abs().mean()
        loss_g = g["adv_weight"] * adv + g["cycle_weight"] * cyc
        idt = torch.zeros((), device=a.device)
        if self.same_channels and g["identity_weight"] > 0:
            idt = (self.net(b) - b).abs().mean() + (self.net_ba(a) - a).abs().mean()
            loss_g = loss_g + g["identity_weight"] * g["cycle_weight"] * idt
        update(self, opt_g, loss_g, "generator loss")
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        loss_d = 0.5 * (self.d_loss_fn(self.disc_a(None, a), self.disc_a(None, self.pool_a.query(fake_a)))
                        + self.d_loss_fn(self.disc_b(None, b), self.disc_b(None, self.pool_b.query(fake_b))))
        update(self, opt_d, loss_d, "discriminator loss")
        self.untoggle_optimizer(opt_d)
        for sched in self.lr_schedulers() or []:
            sched.step()
        self.log_dict({"train_loss": cyc, "g_adv": adv, "identity": idt, "d_loss": loss_d}, prog_bar=True,
                      on_step=True, on_epoch=False, batch_size=a.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        a, b = batch["source"], batch["target"]
        pred = self.net(a)
        n = a.shape[0]
        # With paired validation fields this measures A -> B directly; the cycle error is
        # meaningful for unpaired data too.
        self.log("val_loss", (pred - b).abs().mean(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_cycle", (self.net_ba(pred) - a).abs().mean(), batch_size=n, sync_dist=True)
        self.log("val_pearson", pearson_per_sample(pred, b).mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        o, g = self.hparams.optim, self.hparams.gan
        betas = tuple(o.get("betas", (0.5, 0.999)))
        opt_g = torch.optim.Adam(list(self.net.parameters()) + list(self.net_ba.parameters()),
                                 lr=o["lr"], betas=betas)
        opt_d = torch.optim.Adam(list(self.disc_a.parameters()) + list(self.disc_b.parameters()),
                                 lr=g["d_lr"], betas=tuple(g["d_betas"]))
        return with_schedules([opt_g, opt_d], o, int(self.hparams.max_steps))
