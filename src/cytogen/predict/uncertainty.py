"""Several predictions per tile and their spread: test-time augmentation, ensembles, MC dropout, samples.

A prediction with uncertainty runs ``N`` passes over every tile and keeps, per pixel, their mean
(the prediction) and their standard deviation (the *spread*):

- ``tta``: the 8 transforms of the dihedral group of the square (rotations by 0, 90, 180, 270
  degrees, each with and without a flip) applied to the last two spatial axes (Y, X; Z is left
  alone in 3D); each output is transformed back exactly (``rot90`` and ``flip`` only: no
  resampling), so for a network that is itself equivariant the 8 passes agree and the spread is 0;
- ``members``: an ensemble of model folders trained alike (same channels, dimensions and source
  normalisation); each member's output is put in the first member's normalised target units
  through the members' own fitted target statistics, so members whose target statistics differ
  average in the same physical units;
- ``draws`` with ``kind="mc-dropout"`` (regression models with dropout layers: Gal and
  Ghahramani 2016) or ``kind="samples"`` (adversarial generators whose noise is their dropout, as
  pix2pix keeps it at test time): the dropout layers stay on, with masks drawn from a generator
  seeded with ``seed``, so a run is reproducible.

The passes multiply: ``N = members x (8 if tta) x draws``, and prediction takes about ``N`` times
as long (the tiling, the batch size and the memory per pass are unchanged). The per-pixel mean and
variance are accumulated with Welford's update, so memory does not grow with ``N`` and passes that
agree give a spread of exactly 0. The spread is the population standard deviation of the ``N``
passes (divided by ``N``), per tile, then blended across tile overlaps with the same weights as
the mean (a weighted mean of per-tile SDs: tile-to-tile disagreement in the overlaps is not
counted as uncertainty).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cytogen.errors import CytogenError

__all__ = ["DIHEDRAL", "Uncertainty", "dihedral", "undo_dihedral", "with_mc_dropout", "has_dropout"]

#: The 8 dihedral transforms as (quarter turns, flip first).
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))
GAN_TASKS = ("gan", "cyclegan")
TileFn = Callable[[torch.Tensor], torch.Tensor]


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x`` flipped along X (when ``flip``), then turned ``k`` quarter turns in the (Y, X) plane."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def undo_dihedral(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The exact inverse of :func:`dihedral`."""
    if k % 4:
        y = torch.rot90(y, -k, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if flip else y


class _MCDropout(nn.Module):
    """Dropout that stays on in eval mode, with masks from its own seeded generator.

    ``channelwise`` drops whole channels (as ``Dropout2d``/``Dropout3d``), otherwise elements.
    """

    def __init__(self, p: float, channelwise: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.channelwise, self.generator = float(p), channelwise, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0:
            return x
        shape = x.shape[:2] + (1,) * (x.ndim - 2) if self.channelwise else x.shape
        keep = torch.rand(shape, generator=self.generator, device="cpu") >= self.p
        return x * (keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p))


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def has_dropout(net: nn.Module) -> bool:
    """Whether ``net`` has a dropout layer with p > 0."""
    return any(isinstance(m, _DROPOUTS) and m.p > 0 for m in net.modules())


def with_mc_dropout(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """A deep copy of ``net`` whose dropout layers stay on in eval mode (``net`` is not changed)."""
    for m in net.modules():
        if isinstance(m, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
            raise CytogenError(f"{type(m).__name__} layers are not supported for MC dropout")
    out = copy.deepcopy(net)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, _DROPOUTS):
                setattr(module, name, _MCDropout(child.p, not isinstance(child, nn.Dropout), generator))
            else:
                swap(child)

    swap(out)
    return out


@dataclass
class Uncertainty:
    """What passes a prediction with uncertainty runs (see the module docstring).

    Parameters
    ----------
    tta
        The 8 dihedral transforms.
    members
        Further loaded models (:class:`~cytogen.predict.model_folder.LoadedModel`) of an
        ensemble; the model predicted with is the first member.
    draws
        Dropout draws per transform and member (1: dropout off).
    kind : {"mc-dropout", "samples"}, optional
        Which flag asked for the draws (checked against the model: ``samples`` for adversarial
        generators, ``mc-dropout`` for the others).
    seed
        Seed of the dropout masks.
    """

    tta: bool = False
    members: Sequence[Any] = ()
    draws: int = 1
    kind: str | None = None
    seed: int = 0
    _generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.tta or bool(self.members) or self.draws > 1

    def passes(self) -> int:
        """Network passes per tile."""
        return (1 + len(self.members)) * (len(DIHEDRAL) if self.tta else 1) * self.draws

    def describe(self) -> str:
        parts = [f"{1 + len(self.members)} models" if self.members else None,
                 f"{len(DIHEDRAL)} dihedral transforms" if self.tta else None,
                 f"{self.draws} {'dropout draws' if self.kind == 'mc-dropout' else 'samples'}"
                 if self.draws > 1 else None]
        what = " x ".join(p for p in parts if p)
        return (f"uncertainty: {self.passes()} passes per tile ({what}); prediction takes about "
                f"{self.passes()}x the time of one pass; OUT/<name>_spread.* holds the per-pixel SD")

    def to_dict(self) -> dict[str, Any]:
        return {"passes_per_tile": self.passes(), "tta": self.tta,
                "ensemble": [str(m.folder) for m in self.members], "draws": self.draws,
                "draws_kind": self.kind, "seed": self.seed,
                "spread": "population SD over the passes, per tile, blended like the mean"}

    def check(self, model: Any) -> None:
        """Refuse combinations that cannot take effect on ``model`` (and ensemble members that differ)."""
        if self.draws < 1 or (self.kind is not None and self.draws < 2):
            raise CytogenError(f"--{self.kind or 'samples'} needs at least 2 draws, got {self.draws}")
        if self.kind not in (None, "mc-dropout", "samples"):
            raise CytogenError(f"unknown kind of draws {self.kind!r}; use mc-dropout or samples")
        task = model.meta.get("recipe", {}).get("task")
        if self.draws > 1:
            gan = task in GAN_TASKS
            if self.kind == "samples" and not gan:
                raise CytogenError(f"{model.folder}: --samples is for adversarial generators (task gan or "
                                   f"cyclegan), this model's task is {task!r}; use --mc-dropout N for a "
                                   "model trained with dropout, or --tta / --ensemble")
            if self.kind == "mc-dropout" and gan:
                raise CytogenError(f"{model.folder}: this is an adversarial generator (task {task}): its "
                                   "dropout is its noise; use --samples N")
            for m in (model, *self.members):
                if not has_dropout(m.net):
                    raise CytogenError(
                        f"{m.folder}: the generator has no dropout layer, so every draw would be the "
                        f"same; --{self.kind} needs a model trained with dropout (e.g. --set "
                        "model.kwargs.decoder_dropout=0.2); use --tta or --ensemble instead")
        for m in self.members:
            _check_member(model, m)

    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.seed))
        return self._generator

    def reseed(self) -> None:
        """Start the dropout masks again from ``seed`` (once per image: each image is reproducible)."""
        self.generator().manual_seed(int(self.seed))

    def tile_fn(self, model: Any, build: Callable[[Any], TileFn]) -> TileFn:
        """The tile function of all passes: ``(B, C, ...)`` -> ``(B, 2 C_out, ...)`` = mean, spread.

        ``build(loaded_model)`` makes one member's ordinary tile function (the caller's, so the
        members run with the same run-time settings, layout decision included). Outputs are in
        ``model``'s normalised target units.
        """
        fns = []
        for m in (model, *self.members):
            if self.draws > 1:
                m = copy.copy(m)
                m.__dict__.pop("_tile_fns", None)
                m.net = with_mc_dropout(m.net, self.generator())
            fns.append((build(m), _to_first_units(model, m)))
        turns = DIHEDRAL if self.tta else ((0, False),)
        draws = self.draws

        def fn(x: torch.Tensor) -> torch.Tensor:
            mean = m2 = None
            n = 0
            for member, affine in fns:
                for k, flip in turns:
                    xt = dihedral(x, k, flip)
                    for _ in range(draws):
                        y = undo_dihedral(member(xt), k, flip).float()
                        if affine is not None:
                            shape = (1, -1) + (1,) * (y.ndim - 2)
                            y = y * affine[0].to(y.device).view(shape) + affine[1].to(y.device).view(shape)
                        n += 1
                        if mean is None:
                            mean, m2 = y.clone(), torch.zeros_like(y)
                        else:
                            delta = y - mean
                            mean += delta / n
                            m2 += delta * (y - mean)
            return torch.cat([mean, torch.sqrt(torch.clamp(m2 / n, min=0.0))], dim=1)

        return fn


def _to_first_units(first: Any, member: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(a, b)`` per channel with ``y_first = a * y_member + b`` between normalised target units
    (None when the two share their target statistics)."""
    t0, t1 = first.target_norm, member.target_norm
    if t0.offset is None or t1.offset is None or (t0.offset == t1.offset and t0.scale == t1.scale):
        return None
    o0, s0, o1, s1 = (np.asarray(v, np.float64) for v in (t0.offset, t0.scale, t1.offset, t1.scale))
    a, b = s1 / s0, (o1 - o0) / s0
    return (torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))


def _check_member(first: Any, m: Any) -> None:
    """An ensemble member must take and give the same images as the first model."""
    checks = [("dimensions", first.dims, m.dims),
              ("input channels", first.input_channels, m.input_channels),
              ("output channels", first.out_channels, m.out_channels),
              ("source channels", first.meta.get("source_channels"), m.meta.get("source_channels")),
              ("target channels", first.meta.get("target_channels"), m.meta.get("target_channels")),
              ("label-image encoding", first.meta.get("mask_channels"), m.meta.get("mask_channels")),
              ("size multiple", first.net.size_multiple, m.net.size_multiple)]
    s0, s1 = first.source_norm, m.source_norm
    checks.append(("source normalisation", (s0.method, s0.percentiles, s0.scope),
                   (s1.method, s1.percentiles, s1.scope)))
    if s0.scope == "dataset":
        checks.append(("source statistics", s0.offset, s1.offset))
    for what, a, b in checks:
        if a != b:
            raise CytogenError(f"{m.folder}: ensemble member differs from {first.folder} in its {what} "
                               f"({b} vs {a}); ensemble models trained alike on the same channels")
