"""Helpers every training task shares: NaN guard, per-sample Pearson r, the optimiser builder,
learning-rate schedules and gradient clipping that works under every precision."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from cytogen.errors import CytogenError
from cytogen.models import build_model
from cytogen.tasks.time_budget import TimeBudget

__all__ = ["OPTIMIZERS", "GradClipMixin", "NonFiniteLossError", "build_generator", "build_optimizer",
           "check_finite", "clip_gradients_", "lr_lambda", "pearson_per_sample", "time_spent_of",
           "with_schedules"]

#: Optimiser names a recipe's ``optim.name`` accepts (``sgd`` takes its momentum from ``betas[0]``).
OPTIMIZERS = ("adam", "adamw", "sgd")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or infinite (training stops; weights untouched)."""

    def __init__(self, step: int, name: str, value: float) -> None:
        super().__init__(f"{name} is {value} at step {step}")
        self.step, self.name, self.value = step, name, value


def check_finite(loss: torch.Tensor, step: int, name: str = "loss") -> None:
    """Stop before an optimiser step that would spread NaN/Inf into the weights."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(step, name, float(loss.detach().float().mean()))


def pearson_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each sample in a batch (all channels and pixels pooled)."""
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    p = p - p.mean(dim=1, keepdim=True)
    t = t - t.mean(dim=1, keepdim=True)
    denom = (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    return (p * t).sum(dim=1) / denom


def build_generator(model: dict[str, Any]) -> torch.nn.Module:
    """Generator from an architecture dict (name, dims, in/out channels, kwargs)."""
    return build_model(model["name"], in_channels=model["in_channels"], out_channels=model["out_channels"],
                       dims=model["dims"], **model.get("kwargs", {}))


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser a recipe's ``optim`` section names, for every task and both GAN players.

    Parameters
    ----------
    params
        Parameters to optimise.
    cfg
        ``name`` (``adam``, ``adamw`` or ``sgd``), ``lr``, ``betas``, ``weight_decay`` and
        ``fused`` (the single-kernel step; None/False for the default implementation).
        ``adam`` applies the weight decay as an L2 term in the gradient, ``adamw`` decoupled
        (Loshchilov & Hutter 2019); ``sgd`` uses ``betas[0]`` as its momentum (0 for plain SGD).

    Raises
    ------
    CytogenError
        For an unknown ``name``.
    """
    name = cfg.get("name", "adamw")
    betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
    common = dict(lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0) or 0.0),
                  fused=bool(cfg.get("fused")) or None)
    if name == "adam":
        return torch.optim.Adam(params, betas=betas, **common)
    if name == "adamw":
        return torch.optim.AdamW(params, betas=betas, **common)
    if name == "sgd":
        return torch.optim.SGD(params, momentum=betas[0], **common)
    raise CytogenError(f"optim.name {name!r} is not one of {list(OPTIMIZERS)}")


def lr_lambda(cfg: dict[str, Any], max_steps: int,
              time_spent: Callable[[], float] | None = None) -> Callable[[int], float] | None:
    """Learning-rate factor per step: linear warm-up, then cosine decay to 5 % (or constant).

    ``time_spent`` (e.g. :attr:`cytogen.tasks.time_budget.TimeBudget.fraction`) returns the share
    of a wall-clock budget used so far; the cosine then follows whichever budget, steps or time,
    is further spent, so a time-limited run ends at the floor instead of half-way down.
    Returns None when neither warm-up nor a schedule is configured.
    """
    warm = int(cfg.get("warmup_steps", 0) or 0)
    cosine = cfg.get("scheduler", "none") == "cosine"
    if not cosine and not warm:
        return None
    total = max(1, max_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        if time_spent is not None:
            t = max(t, min(1.0, float(time_spent())))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def with_schedules(optimizers: list[torch.optim.Optimizer], cfg: dict[str, Any], max_steps: int,
                   time_spent: Callable[[], float] | None = None) -> Any:
    """``configure_optimizers`` return value: the optimisers, each with the same per-step schedule
    (``time_spent``: see :func:`lr_lambda`)."""
    fn = lr_lambda(cfg, max_steps, time_spent)
    if fn is None:
        return optimizers if len(optimizers) > 1 else optimizers[0]
    scheds = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(o, fn), "interval": "step"} for o in optimizers]
    return optimizers, scheds


def time_spent_of(module: Any) -> Callable[[], float] | None:
    """The share of the wall-clock budget spent, when the trainer runs a
    :class:`~cytogen.tasks.time_budget.TimeBudget` callback (``train.max_time_min``)."""
    trainer = getattr(module, "_trainer", None)
    budget = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, TimeBudget)), None)
    return None if budget is None else (lambda: budget.fraction)


def configure_single(module: Any) -> Any:
    """``configure_optimizers`` of a task with one optimiser: built from ``hparams.optim``, with
    its per-step schedule over ``hparams.max_steps`` (Lightning's dict form when scheduled)."""
    opt = build_optimizer(module.parameters(), module.hparams.optim)
    out = with_schedules([opt], module.hparams.optim, int(module.hparams.max_steps), time_spent_of(module))
    if isinstance(out, tuple):
        return {"optimizer": opt, "lr_scheduler": out[1][0]}
    return out


def clip_gradients_(optimizer: torch.optim.Optimizer, max_norm: float,
                    scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Clip the gradients of ``optimizer``'s parameters to total L2 norm ``max_norm``, in place.

    Works under every precision and with fused optimisers: where a ``GradScaler`` scales the
    loss (16-mixed) and the gradients are still scaled, they are unscaled first
    (``scaler.unscale_``), so the norm is measured in true units; the scaler's ``step`` then
    knows not to unscale again, fused or not. Returns the norm before clipping.
    """
    if scaler is not None and scaler.is_enabled():
        from torch.amp.grad_scaler import OptState

        if scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.READY:
            scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


class GradClipMixin:
    """Mix into a LightningModule with a ``grad_clip`` hyper-parameter: clip gradients by norm
    right before each optimiser step, under automatic and manual optimisation alike.

    Lightning's own ``gradient_clip_val`` refuses fused optimisers under mixed precision and
    cannot be used with manual optimisation; this hook runs after Lightning's unscaling (or
    unscales itself where Lightning leaves it to a fused optimiser), so it clips correctly
    under 32, bf16-mixed and 16-mixed. Under 32 and bf16-mixed it also stops training
    (:class:`NonFiniteLossError`) before a step whose gradient norm is NaN or infinite.
    """

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        value = self.hparams.get("grad_clip")  # type: ignore[attr-defined]
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # type: ignore[attr-defined]
        norm = clip_gradients_(optimizer, float(value), scaler) if value else None
        if scaler is not None and scaler.is_enabled():
            return  # 16-mixed: the GradScaler skips steps with inf/NaN gradients by design
        if norm is None:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if norm is not None and not torch.isfinite(norm):
            # a finite loss with a NaN gradient would otherwise spread NaN into the weights silently
            raise NonFiniteLossError(int(self.trainer.global_step), "gradient norm", float(norm))  # type: ignore[attr-defined]
