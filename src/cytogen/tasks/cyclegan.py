"""CycleGAN for unpaired data (Zhu et al. 2017): two generators, two discriminators.

Domain A is the source, B the target. ``net`` (A -> B) is the generator that is validated and
exported; ``net_ba`` (B -> A) closes the cycle. Generator loss: adversarial (LSGAN by default)
for both directions + ``cycle_weight`` * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|) +
``identity_weight * cycle_weight`` * (|G_AB(b) - b| + |G_BA(a) - a|) when A and B have the same
number of channels. Discriminators see a history pool of generated images.
"""

from __future__ import annotations

from typing import Any

import torch

from cytogen.losses.adversarial import adversarial_loss
from cytogen.models.discriminators import build_discriminator
from cytogen.tasks.base import AdversarialTask
from cytogen.tasks.common import build_generator, pearson_per_sample
from cytogen.tasks.pool import ImagePool
from cytogen.tasks.registry import register_task

__all__ = ["CycleGANTask", "ImagePool"]


@register_task("cyclegan")
class CycleGANTask(AdversarialTask):
    """Unpaired translation A (source) <-> B (target); see module docstring.

    Parameters are those of :class:`~cytogen.tasks.gan.GANTranslateTask`; ``loss`` is unused
    (the cycle and identity terms are L1, as in Zhu et al. 2017).
    """

    paired = False
    generator_modules = ("net", "net_ba")
    uses = frozenset({"discriminator", "gan.adversarial", "gan.adv_weight", "gan.d_lr", "gan.d_betas",
                      "gan.cycle_weight", "gan.identity_weight", "gan.pool_size"})

    def __init__(self, model: dict[str, Any], discriminator: dict[str, Any], loss: dict[str, Any],
                 optim: dict[str, Any], gan: dict[str, Any], max_steps: int = 1000,
                 grad_clip: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        ca, cb = model["in_channels"], model["out_channels"]
        self.net = build_generator(model)
        self.net_ba = build_generator({**model, "in_channels": cb, "out_channels": ca})
        dkw = dict(dims=model["dims"], cond_channels=0, **discriminator.get("kwargs", {}))
        self.disc_a = build_discriminator(discriminator["name"], in_channels=ca, **dkw)
        self.disc_b = build_discriminator(discriminator["name"], in_channels=cb, **dkw)
        self.d_loss_fn, self.g_loss_fn = adversarial_loss(gan["adversarial"])
        self.pools = {"a": ImagePool(gan["pool_size"], 1), "b": ImagePool(gan["pool_size"], 2)}
        self.same_channels = ca == cb

    @property
    def pool_a(self) -> ImagePool:
        return self.pools["a"]

    @property
    def pool_b(self) -> ImagePool:
        return self.pools["b"]

    def generator(self) -> torch.nn.Module:
        """The A -> B generator (validated and exported)."""
        return self.net

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters()) + list(self.net_ba.parameters())

    def discriminator_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.disc_a.parameters()) + list(self.disc_b.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        g = self.hparams.gan
        opt_g, opt_d = self.players()
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
        self.update(opt_g, loss_g, "generator loss")
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        loss_d = 0.5 * (self.d_loss_fn(self.disc_a(None, a), self.disc_a(None, self.pool_a.query(fake_a)))
                        + self.d_loss_fn(self.disc_b(None, b), self.disc_b(None, self.pool_b.query(fake_b))))
        self.update(opt_d, loss_d, "discriminator loss")
        self.untoggle_optimizer(opt_d)
        self.end_step()
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
