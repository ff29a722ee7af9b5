"""Adversarial losses, the soft-noisy-label warm start, the R1 penalty and weight EMA.

* :func:`adversarial_loss` -- discriminator / generator losses on logits: ``"vanilla"``
  (Goodfellow et al. 2014, non-saturating generator), ``"lsgan"`` (Mao et al. 2017, as in
  pix2pix / CycleGAN) and ``"hinge"`` (Lim & Ye 2017, as in SAGAN / BigGAN).
* :func:`soft_noisy_labels` -- the "warm start" of Sun et al. (2022): noisy real/fake labels
  for the first iterations (2500 of their 20 000), in five decreasing noise levels, so the
  discriminator does not outrun the generator; :func:`check_soft_labels` refuses settings
  where it cannot work (a warm start as long as the run, or the label-free hinge loss).
* :func:`r1_penalty` -- the gradient penalty on real images of Mescheder et al. (2018), used
  by StyleGAN2 (the discriminator of Vasudevan et al. 2023).
* :class:`EMA` -- exponential moving average of a model's weights for validation/prediction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cytogen.errors import CytogenError

__all__ = ["ADVERSARIAL_KINDS", "EMA", "AdversarialLoss", "adversarial_loss", "check_soft_labels",
           "r1_penalty", "soft_noisy_labels"]

ADVERSARIAL_KINDS = ("vanilla", "lsgan", "hinge")
Label = float | Tensor


class AdversarialLoss(NamedTuple):
    """The two halves of an adversarial objective (unpacks as ``d_loss, g_loss``).

    Attributes
    ----------
    d_loss : callable
        ``d_loss(real_logits, fake_logits, real_label=1.0, fake_label=0.0) -> Tensor``, the
        discriminator's loss (the real term plus the fake term, each a mean). Labels are
        floats or tensors broadcastable to the logits (see :func:`soft_noisy_labels`).
        Pass ``fake_logits`` computed from detached generator outputs.
    g_loss : callable
        ``g_loss(fake_logits) -> Tensor``, the generator's loss.
    """

    d_loss: Callable[..., Tensor]
    g_loss: Callable[[Tensor], Tensor]


def _target(label: Label, logits: Tensor) -> Tensor:
    """``label`` as a tensor broadcast to ``logits``; a label that would enlarge them fails."""
    label = torch.as_tensor(label, dtype=logits.dtype, device=logits.device)
    try:
        shape = torch.broadcast_shapes(label.shape, logits.shape)
    except RuntimeError:
        shape = None
    if shape != logits.shape:
        raise ValueError(f"label of shape {tuple(label.shape)} does not broadcast to logits "
                         f"of shape {tuple(logits.shape)}")
    return label.expand_as(logits)


def _bce(logits: Tensor, label: Label) -> Tensor:
    """Binary cross-entropy with logits, ``softplus(-x) + (1 - y) x`` (stable for any x)."""
    logits = logits.float()
    return (F.softplus(-logits) + (1.0 - _target(label, logits)) * logits).mean()


def _vanilla_d(real: Tensor, fake: Tensor, real_label: Label = 1.0,
               fake_label: Label = 0.0) -> Tensor:
    return _bce(real, real_label) + _bce(fake, fake_label)


def _vanilla_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake.float()).mean()  # -log sigmoid(fake): non-saturating


def _lsgan_d(real: Tensor, fake: Tensor, real_label: Label = 1.0,
             fake_label: Label = 0.0) -> Tensor:
    real, fake = real.float(), fake.float()
    return ((real - _target(real_label, real)).square().mean()
            + (fake - _target(fake_label, fake)).square().mean())


def _lsgan_g(fake: Tensor) -> Tensor:
    return (fake.float() - 1.0).square().mean()


def _is_label(label: Label, value: float) -> bool:
    """Whether ``label`` is exactly ``value`` (a float, or a tensor of only that value)."""
    if isinstance(label, Tensor):
        return bool((label == value).all())
    return float(label) == value


def _hinge_d(real: Tensor, fake: Tensor, real_label: Label = 1.0,
             fake_label: Label = 0.0) -> Tensor:
    if not (_is_label(real_label, 1.0) and _is_label(fake_label, 0.0)):
        raise CytogenError(
            "the hinge loss (gan.adversarial: hinge) has no labels to soften, so soft noisy "
            "labels cannot take effect; set gan.soft_labels: false, or use gan.adversarial: "
            "vanilla or lsgan with soft labels")
    return F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean()


def _hinge_g(fake: Tensor) -> Tensor:
    return -fake.float().mean()


_KINDS = {"vanilla": (_vanilla_d, _vanilla_g), "lsgan": (_lsgan_d, _lsgan_g),
          "hinge": (_hinge_d, _hinge_g)}


def adversarial_loss(kind: str) -> AdversarialLoss:
    """Discriminator and generator losses on logits, by name.

    * ``vanilla``: D ``BCE(real, real_label) + BCE(fake, fake_label)``;
      G ``mean(-log sigmoid(fake))``.
    * ``lsgan``: D ``mean((real - real_label)^2) + mean((fake - fake_label)^2)``;
      G ``mean((fake - 1)^2)``.
    * ``hinge``: D ``mean(relu(1 - real)) + mean(relu(1 + fake))``; G ``-mean(fake)``.

    BCE is binary cross-entropy with logits; means run over all logits (per sample or per
    patch). The ``vanilla`` generator loss is the non-saturating form of Goodfellow et al.
    (its gradient does not vanish when the discriminator confidently rejects fakes). The hinge
    loss has no labels: its ``d_loss`` accepts only the hard labels 1 and 0 and raises
    :class:`~cytogen.errors.CytogenError` for any other (e.g. soft noisy) labels rather than
    ignore them. Losses are computed in float32 (safe under bf16 autocast).

    Parameters
    ----------
    kind : {"vanilla", "lsgan", "hinge"}
        The objective.

    Returns
    -------
    AdversarialLoss
        ``(d_loss, g_loss)``; see :class:`AdversarialLoss`.

    Raises
    ------
    CytogenError
        If ``kind`` is unknown.
    """
    if kind not in _KINDS:
        raise CytogenError(f"unknown adversarial loss {kind!r}; choose one of "
                           f"{', '.join(ADVERSARIAL_KINDS)}")
    return AdversarialLoss(*_KINDS[kind])


def soft_noisy_labels(step: int, shape: Sequence[int], *,
                      generator: torch.Generator | None = None, warm_steps: int = 2500,
                      levels: int = 5, scale: float = 0.02, noise: str = "normal",
                      device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Real and fake labels for the discriminator, softened by noise during a warm start.

    Sun et al. (2022, Methods) train 3D pix2pix / Vox2Vox-RU for 20 000 iterations; "for the
    first 2500 iterations the value of real and fake labels provided for the discriminators
    were set to"::

        real label = 1 - (0.02 * (5 - floor(i / 500))) * N(0, 1)
        fake label = 0 + (0.02 * (5 - floor(i / 500))) * N(0, 1)

    where ``i`` is the iteration number: five noise levels of 500 iterations each. Here the
    period scales with the warm start, so any ``warm_steps`` keeps the five levels::

        a(i) = scale * (levels - floor(levels * i / warm_steps))   for i < warm_steps
        a(i) = 0                                                   for i >= warm_steps

    With the defaults (2500 steps, 5 levels, 0.02) this is the paper's schedule: 0.10 for steps
    0-499, 0.08 for 500-999, ..., 0.02 for 2000-2499; with ``warm_steps=250`` the levels last 50
    steps each. From ``warm_steps`` on the labels are exactly 1 and 0.

    ``noise="normal"`` (default) follows the paper: zero-mean Gaussian noise of standard
    deviation ``a``, so labels can fall slightly outside [0, 1] (with the ``vanilla`` BCE
    loss a label above 1 rewards ever larger real logits for that element; the effect is
    small and ends with the warm start). ``noise="uniform"`` gives one-sided labels that stay
    in [0, 1]: real ``1 - U(0, a)``, fake ``0 + U(0, a)``.

    Parameters
    ----------
    step : int
        Training iteration (0-based).
    shape : sequence of int
        Shape of each label tensor, e.g. the logits' shape (one label per patch) or
        ``(B, 1, 1, 1)`` (one per sample); it must broadcast to the logits.
    generator : torch.Generator, optional
        Random generator (on ``device``) for reproducible labels.
    warm_steps : int
        Length of the warm start (2500 in Sun et al.; ``gan.soft_label_steps``).
    levels : int
        Number of noise levels the warm start is split into (5 in Sun et al.).
    scale : float
        Magnitude step between levels (0.02 in Sun et al.).
    noise : {"normal", "uniform"}
        Noise distribution, see above.
    device, dtype
        Where and how the labels are made.

    Returns
    -------
    real, fake : torch.Tensor
        Label tensors of ``shape``.
    """
    if noise not in ("normal", "uniform"):
        raise CytogenError(f"noise must be 'normal' or 'uniform', got {noise!r}")
    if step < 0 or warm_steps < 0 or levels < 1 or scale < 0:
        raise ValueError(f"need step >= 0, warm_steps >= 0, levels >= 1, scale >= 0; got "
                         f"{step}, {warm_steps}, {levels}, {scale}")
    real = torch.ones(tuple(shape), device=device, dtype=dtype)
    fake = torch.zeros(tuple(shape), device=device, dtype=dtype)
    if step >= warm_steps:
        return real, fake
    magnitude = scale * (levels - (levels * step) // warm_steps)
    draw = torch.randn if noise == "normal" else torch.rand
    real -= magnitude * draw(real.shape, generator=generator, device=device, dtype=dtype)
    fake += magnitude * draw(fake.shape, generator=generator, device=device, dtype=dtype)
    return real, fake


def check_soft_labels(gan: Mapping[str, Any] | Any, max_steps: int,
                      source: str = "recipe") -> None:
    """Refuse soft-noisy-label settings that cannot take effect as written.

    Call it when a recipe is validated (``gan`` is the recipe's ``gan`` section as a mapping or
    a :class:`~cytogen.config.GanConfig`; ``max_steps`` is ``train.max_steps`` after command-line
    overrides). Does nothing when ``gan.soft_labels`` is off.

    Raises
    ------
    CytogenError
        If ``soft_labels`` is on and ``soft_label_steps`` is not a positive integer, is not
        shorter than ``max_steps`` (the warm start would never end; Sun et al. use 2500 of
        20 000 iterations), or ``adversarial`` is ``hinge`` (no labels to soften).
    """
    def get(key: str, default: Any) -> Any:
        return gan.get(key, default) if isinstance(gan, Mapping) else getattr(gan, key, default)

    if not get("soft_labels", False):
        return
    steps = get("soft_label_steps", 2500)
    if get("adversarial", "vanilla") == "hinge":
        raise CytogenError(f"{source}: gan.soft_labels is on but gan.adversarial is hinge, which "
                           "has no labels to soften; set gan.soft_labels: false or use "
                           "gan.adversarial: vanilla or lsgan")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise CytogenError(f"{source}: gan.soft_label_steps must be a positive integer, got "
                           f"{steps!r}")
    if steps >= max_steps:
        raise CytogenError(
            f"{source}: gan.soft_label_steps={steps} is not shorter than train.max_steps="
            f"{max_steps}, so the soft-label warm start would never end; set "
            f"gan.soft_label_steps to a fraction of the run (Sun et al. use 2500 of 20 000 "
            f"steps, i.e. about {max(1, max_steps // 8)} here) or gan.soft_labels: false")


def r1_penalty(real_logits: Tensor, real_inputs: Tensor | Sequence[Tensor]) -> Tensor:
    """R1 gradient penalty ``mean_b ||d D(x_b) / d x_b||^2`` on real samples.

    Mescheder et al. (2018); StyleGAN2 adds ``gamma / 2 * r1_penalty(...)`` to the
    discriminator loss (often every 16th step, scaled by 16: "lazy regularisation"); the
    weighting is the caller's. The penalty is differentiable (``create_graph=True``), so its
    gradient reaches the discriminator's weights.

    Parameters
    ----------
    real_logits : torch.Tensor
        ``D(real_inputs)``, ``(B, ...)``; patch logits are summed per sample.
    real_inputs : torch.Tensor or sequence of torch.Tensor
        The real images fed to ``D`` (for a conditional one, usually the real target only).
        **The caller must set ``requires_grad_(True)`` on them before calling ``D``**,
        e.g. ``real = real.detach().requires_grad_(True)``.

    Returns
    -------
    torch.Tensor
        Scalar: squared gradient norm per sample (summed over all inputs), averaged over the
        batch.
    """
    inputs = [real_inputs] if isinstance(real_inputs, Tensor) else list(real_inputs)
    if not all(x.requires_grad for x in inputs):
        raise ValueError("r1_penalty needs real_inputs with requires_grad=True set before "
                         "the discriminator call: real = real.detach().requires_grad_(True)")
    grads = torch.autograd.grad(real_logits.float().sum(), inputs, create_graph=True)
    return sum(g.float().square().reshape(g.shape[0], -1).sum(dim=1) for g in grads).mean()


class EMA:
    """Exponential moving average of a module's parameters and buffers.

    Keeps a shadow copy ``ema.module`` (a deep copy in eval mode, ``requires_grad=False``) to
    validate or predict with. After each optimiser step, :meth:`update` sets every
    parameter ``s <- d * s + (1 - d) * p``; floating-point buffers (e.g. batch-norm running
    statistics) are averaged the same way (``average_buffers=True``) or copied, other
    buffers are copied.

    Parameters
    ----------
    module : torch.nn.Module
        The trained model (not modified).
    decay : float
        ``d`` in [0, 1).
    warmup : bool
        Use ``min(decay, (1 + n) / (10 + n))`` at the ``n``-th update (n = 0, 1, ...), so
        early averages are not dominated by the random initialisation.
    average_buffers : bool
        Average floating-point buffers (True) or copy them (False, e.g. for spectral norm's
        power-iteration vectors).
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, *, warmup: bool = False,
                 average_buffers: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.average_buffers = average_buffers
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor, bool]]:
        """``(shadow, live, average)`` for each parameter and buffer, matched by name."""
        shadow = dict(self.module.named_parameters())
        shadow_buffers = dict(self.module.named_buffers())
        live = dict(module.named_parameters())
        live_buffers = dict(module.named_buffers())
        if shadow.keys() != live.keys() or shadow_buffers.keys() != live_buffers.keys():
            raise ValueError("EMA: the module's parameters/buffers differ from the averaged "
                             "module's; pass the same architecture")
        pairs = [(shadow[k], live[k], True) for k in shadow]
        pairs += [(shadow_buffers[k], live_buffers[k],
                   self.average_buffers and shadow_buffers[k].is_floating_point())
                  for k in shadow_buffers]
        return pairs

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the current weights of ``module`` into the average.

        The shadow moves to the device of ``module``'s first parameter if it differs.
        """
        first = next(module.parameters(), None)
        if first is not None and next(self.module.parameters()).device != first.device:
            self.module.to(first.device)
        d = self.current_decay()
        for s, p, average in self._pairs(module):
            if average:
                s.lerp_(p.detach().to(s.dtype), 1.0 - d)  # s + (1-d)(p - s)
            else:
                s.copy_(p)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Copy the averaged parameters and buffers into ``module`` (same architecture)."""
        for s, p, _ in self._pairs(module):
            p.copy_(s)

    def to(self, *args: Any, **kwargs: Any) -> EMA:
        """Move the shadow module like ``nn.Module.to``; returns ``self``."""
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The shadow's state dict plus ``decay``, ``warmup`` and ``num_updates``."""
        return {"module": self.module.state_dict(), "decay": self.decay,
                "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
