"""Shared plumbing of the adversarial tasks (manual optimisation of a generator and a critic).

:class:`AdversarialTask` gives GAN and CycleGAN one implementation of: the two optimisers
(:func:`~cytogen.tasks.common.build_optimizer` with the ``optim`` section for the generator
and the ``gan`` section's ``d_lr``/``d_betas`` for the discriminator), their schedules, the
guarded update (NaN check, backward, gradient clipping, step), Lightning's step counter held
to the number of *generator* updates, and checkpoint hooks that save the EMA and the image
pools so that a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cytogen.tasks.common import (GradClipMixin, build_optimizer, check_finite, time_spent_of,
                                  with_schedules)
from cytogen.tasks.layout import MemoryFormatMixin
from cytogen.tasks.pool import ImagePool


def _silence_step_counter(opt: Any) -> None:
    """Keep Lightning's global step = number of *generator* updates.

    Under manual optimisation Lightning counts every ``optimizer.step()``; with a discriminator
    optimiser too, ``max_steps`` and logged steps would silently double.
    """
    opt._on_after_step = lambda: None


class AdversarialTask(GradClipMixin, MemoryFormatMixin, L.LightningModule):
    """Base of tasks with a generator and a discriminator optimiser (manual optimisation).

    Subclasses build their networks, then implement :meth:`generator_parameters`,
    :meth:`discriminator_parameters` and ``training_step`` (calling :meth:`update` for each
    player and :meth:`end_step` once). ``self.ema`` (an :class:`~cytogen.losses.adversarial.EMA`
    or None) and ``self.pools`` (name -> :class:`~cytogen.tasks.pool.ImagePool`) are saved
    in and restored from checkpoints.
    """

    generator_modules: tuple[str, ...] = ("net",)

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.ema: Any = None
        self.pools: dict[str, ImagePool] = {}

    # -- to implement -------------------------------------------------------------------------
    def generator_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def discriminator_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    # -- optimisation -------------------------------------------------------------------------
    def players(self) -> tuple[Any, Any]:
        """(generator optimiser, discriminator optimiser); the latter does not count steps."""
        opt_g, opt_d = self.optimizers()
        _silence_step_counter(opt_d)
        return opt_g, opt_d

    def update(self, opt: Any, loss: torch.Tensor, name: str) -> None:
        """One guarded step: NaN check, backward, step (clipped in ``on_before_optimizer_step``).

        Call it inside ``toggle_optimizer(opt)`` ... ``untoggle_optimizer(opt)`` around the
        player's forward pass, so only ``opt``'s parameters receive gradients.
        """
        check_finite(loss, int(self.global_step), name)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    def end_step(self) -> None:
        """After both players stepped: advance the schedules and the EMA."""
        for sched in self.lr_schedulers() or []:
            sched.step()
        if self.ema is not None:
            self.ema.update(self.net)

    def configure_optimizers(self) -> Any:
        o, g = self.hparams.optim, self.hparams.gan
        opt_g = build_optimizer(self.generator_parameters(), o)
        opt_d = build_optimizer(self.discriminator_parameters(), {**o, "lr": g["d_lr"], "betas": g["d_betas"]})
        return with_schedules([opt_g, opt_d], o, int(self.hparams.max_steps), time_spent_of(self))

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema_state"] = self.ema.state_dict()
        if self.pools:
            checkpoint["image_pools"] = {k: p.state_dict() for k, p in self.pools.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema_state" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state"])
        for k, state in checkpoint.get("image_pools", {}).items():
            if k in self.pools:
                self.pools[k].load_state_dict(state)
