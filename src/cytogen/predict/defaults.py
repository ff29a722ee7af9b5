"""Where the tiling settings of a prediction come from: the caller, the model's recipe, or defaults.

A model folder keeps the recipe it was trained with (``model.json`` -> ``recipe``), and its
``predict`` section (``tile``, ``overlap``, ``batch_size``, ``blend``) holds the tiling the run
was meant to be applied with. :func:`resolve_tiling` gives each setting the value the caller
passed, else the recipe's, else (for model folders without a recipe) the
:class:`~cytogen.config.PredictConfig` default, and records which one was used.

``"auto"`` (the default of new recipes) is resolved from the model itself
(:mod:`cytogen.predict.receptive`): ``tile: auto`` is the largest tile whose activations fit the
memory budget, ``overlap: auto`` twice the measured effective-receptive-field radius in pixels
(that radius is the tiles' zero-weighted margin), ``batch_size: auto`` as many tiles as fit the
budget. Old model folders whose recipe says ``tile: [256, 256]``, ``overlap: 0.25`` keep it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cytogen.config import PredictConfig, recipe_from_dict
from cytogen.errors import CytogenError
from cytogen.predict.model_folder import LoadedModel
from cytogen.predict.receptive import (GIB, activation_bytes_per_pixel, auto_tiling,
                                       default_budget_bytes, largest_tile, measure_erf)
from cytogen.predict.tiling import BLENDS, balanced_tile

__all__ = ["AUTO", "TilingPlan", "resolve_tiling"]

#: Labels of :attr:`TilingPlan.sources`.
GIVEN, RECIPE, DEFAULT, PATCH = "given", "recipe", "default", "2 x training patch size"
#: The value that asks for a tiling chosen from the model (see the module docstring).
AUTO = "auto"


@dataclass(frozen=True)
class TilingPlan:
    """The tiling settings of one prediction and where each came from.

    Attributes
    ----------
    tile : tuple of int
        Tile size per spatial axis (before clipping to the image).
    overlap : float or tuple of int
        Fraction of the tile shared by neighbours, or pixels per axis.
    batch_size : int
        Tiles per model call (halved on out-of-memory errors).
    blend : str
        Blend window, see :func:`~cytogen.predict.tiling.blend_window`.
    sources : dict
        Per setting: ``"given"`` (argument or CLI flag), ``"recipe"`` (the model's recipe),
        ``"default"`` (cytogen's default: the model folder's recipe lacks it) or, for the tile,
        ``"2 x training patch size"`` (the recipe leaves ``predict.tile`` unset); a setting
        that was ``"auto"`` reads e.g. ``"auto (recipe)"``.
    notes : tuple of str
        What the user should know, e.g. that defaults stood in for a missing recipe.
    margin : int or tuple of int
        Zero-weighted pixels at interior tile sides (``overlap: auto``: the ERF radius).
    balance : bool
        ``tile: auto``: each image's tile shrinks to the smallest that needs as many tiles
        (:func:`~cytogen.predict.tiling.balanced_tile`); ``tile`` is the largest allowed.
    auto : dict
        With any ``"auto"`` setting: the budget, the memory estimate and the measured ERF
        (:meth:`~cytogen.predict.receptive.AutoTiling.to_dict`).
    """

    tile: tuple[int, ...]
    overlap: float | tuple[int, ...]
    batch_size: int
    blend: str
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    margin: int | tuple[int, ...] = 0
    balance: bool = False
    auto: dict[str, Any] = field(default_factory=dict)

    def for_image(self, shape: tuple[int, ...]) -> "TilingPlan":
        """This plan fitted to one image: an ``auto`` tile becomes the largest tile within the
        budget for an image of spatial ``shape`` (:func:`~cytogen.predict.receptive.largest_tile`),
        so e.g. a thin 3D stack gets wider tiles, then balanced per axis
        (:func:`~cytogen.predict.tiling.balanced_tile`). The tile used is recorded per image
        shape in ``auto["image_tiles"]`` (``runtime.json``). Other plans are returned unchanged."""
        if not (self.auto and self.sources.get("tile", "").startswith("auto")):
            return self
        a = self.auto
        mult = a["size_multiple"]
        overlap = self.overlap if isinstance(self.overlap, tuple) else (0,) * len(shape)
        tile, _ = largest_tile(shape, mult, overlap, a["bytes_per_pixel"],
                               a["memory_budget_bytes"])
        if self.balance:
            tile = tuple(balanced_tile(int(n), t, max(o, 2 * g), m) for n, t, o, g, m in zip(
                shape, tile, overlap, _axes(self.margin, len(shape)), mult))
        a.setdefault("image_tiles", {})["x".join(map(str, shape))] = list(tile)
        return replace(self, tile=tile)

    def tiled_kwargs(self) -> dict[str, Any]:
        """Every :func:`~cytogen.predict.tiling.predict_tiled` keyword this plan sets
        (:meth:`kwargs` plus ``margin`` and ``balance``)."""
        return {**self.kwargs(), "margin": self.margin, "balance": self.balance}

    def kwargs(self) -> dict[str, Any]:
        """``tile``, ``overlap``, ``batch_size``, ``blend`` as keyword arguments."""
        return {"tile": self.tile, "overlap": self.overlap, "batch_size": self.batch_size,
                "blend": self.blend}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``runtime.json``): the values and ``from`` per setting."""
        overlap = self.overlap if isinstance(self.overlap, float) else list(self.overlap)
        out = {"tile": list(self.tile), "overlap": overlap, "batch_size": self.batch_size,
               "blend": self.blend, "from": dict(self.sources)}
        if self.auto or self.margin:
            margin = self.margin
            out.update(margin=[margin] * len(self.tile) if isinstance(margin, int)
                       else list(margin), balance=self.balance)
        if self.auto:
            out["auto"] = dict(self.auto)
        return out

    def describe(self) -> str:
        """One line for the prediction log."""
        s = self.sources
        ov = (f"{'x'.join(map(str, self.overlap))} px" if isinstance(self.overlap, tuple)
              else f"{self.overlap}")
        text = (f"tiling: tile {'x'.join(map(str, self.tile))} ({s['tile']}), overlap "
                f"{ov} ({s['overlap']}), batch size {self.batch_size} "
                f"({s['batch_size']}), blend {self.blend} ({s['blend']})")
        if self.auto:
            erf = self.auto["erf"]
            used = (f"margin {'x'.join(map(str, self.auto['margin']))} px" if any(_axes(self.margin, 1))
                    else "no margin (overlap given)")
            text += (f"; {used}; effective receptive field radius "
                     f"{'x'.join(map(str, erf['radius']))} px ({erf['fraction']:.1%} of the "
                     f"gradient; theoretical {erf['theoretical_radius']}), memory budget "
                     f"{self.auto['memory_budget_gib']:.2f} GiB ({s.get('memory_budget')})")
        return text


def _axes(value: int | tuple[int, ...], nd: int) -> tuple[int, ...]:
    return (value,) * nd if isinstance(value, int) else tuple(value)


def _where(model: LoadedModel) -> str:
    return str(model.folder / "model.json") if model.folder is not None else "model.json"


def _recipe_section(model: LoadedModel, given: frozenset[str] = frozenset()
                    ) -> tuple[dict[str, Any] | None, PredictConfig]:
    """The raw ``predict`` section of the model's recipe (None without a recipe), validated
    except for the keys in ``given`` (values the caller passes instead, so a bad saved value
    can be overridden)."""
    recipe = model.meta.get("recipe") or {}
    if not recipe:
        return None, PredictConfig()
    section = recipe.get("predict")
    if section is None:
        return {}, PredictConfig()
    if not isinstance(section, dict):
        raise CytogenError(f"{_where(model)}: recipe section 'predict' must be a mapping; "
                           "the model folder is damaged")
    try:
        checked = recipe_from_dict({"predict": {k: v for k, v in section.items() if k not in given}},
                                   source=_where(model)).predict
    except CytogenError as exc:
        raise CytogenError(f"{exc} (in the model's training recipe; pass --tile, --overlap, "
                           "--batch-size and --blend to predict with other values)") from None
    return section, checked


def _tile(value: Any, dims: int, what: str) -> tuple[int, ...]:
    tile = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(tile) == 1:
        tile = tile * dims
    if len(tile) != dims or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                    and t >= 1 for t in tile):
        raise CytogenError(f"{what} {value!r}: give one positive size, or {dims} sizes for a "
                           f"{dims}D model")
    return tuple(int(t) for t in tile)


def _check(overlap: Any, batch_size: Any, what: dict[str, str], dims: int) -> Any:
    """Checks overlap and batch size; returns the overlap as a float or a tuple of pixels."""
    if isinstance(overlap, (int, float)) and not isinstance(overlap, bool):
        if not 0.0 <= float(overlap) < 1.0:
            raise CytogenError(f"{what['overlap']} is {overlap!r}; an overlap is a fraction of "
                               "the tile in [0, 1), e.g. 0.25 (or pixels per axis, or auto)")
        overlap = float(overlap)
    elif isinstance(overlap, (list, tuple)):
        px = tuple(overlap) * (dims if len(overlap) == 1 else 1)
        if len(px) != dims or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                      and v >= 0 for v in px):
            raise CytogenError(f"{what['overlap']} is {overlap!r}; give pixels >= 0, one or "
                               f"{dims} values")
        overlap = tuple(int(v) for v in px)
    elif overlap != AUTO:
        raise CytogenError(f"{what['overlap']} is {overlap!r}; give a fraction in [0, 1), "
                           "pixels per axis, or auto")
    if batch_size != AUTO and (isinstance(batch_size, bool)
                               or not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise CytogenError(f"{what['batch_size']} is {batch_size!r}; give a positive integer "
                           "or auto")
    return overlap


def _measured(model: LoadedModel) -> tuple[Any, tuple[float, str]]:
    """The model's ERF and activation bytes per pixel, measured once per loaded model."""
    cache = model.__dict__.setdefault("_auto_tiling", {})
    if "erf" not in cache:
        cache["erf"] = measure_erf(model.net, model.dims)
        cache["bpp"] = activation_bytes_per_pixel(model.net, model.dims)
    return cache["erf"], cache["bpp"]


def resolve_tiling(model: LoadedModel, *, tile: Any = None, overlap: Any = None,
                   batch_size: int | str | None = None, blend: str | None = None,
                   memory_budget: float | None = None,
                   image_shape: tuple[int, ...] | None = None) -> TilingPlan:
    """Fill each tiling setting the caller left as None from the model folder.

    Precedence per setting: the given value, the model's recipe (``predict.tile``,
    ``predict.overlap``, ``predict.batch_size``, ``predict.blend``), then cytogen's
    :class:`~cytogen.config.PredictConfig` default (``auto``), which is used only when the
    model folder has no recipe (or its recipe lacks the key) and is then named in
    :attr:`TilingPlan.notes`. An unset tile (``predict.tile: null``) is twice the training
    patch size. ``"auto"`` values are resolved as the module docstring says.

    Parameters
    ----------
    model
        From :func:`~cytogen.predict.model_folder.load_model_folder`.
    tile, overlap, batch_size, blend
        Values given by the caller (``tile``, ``overlap``, ``batch_size`` may be ``"auto"``;
        ``overlap`` a fraction or pixels per axis); None takes them from the model.
    memory_budget : float, optional
        GiB that one batch of tiles may use for activations under ``auto``; default
        :func:`~cytogen.predict.receptive.default_budget_bytes` (min(2 GiB, a quarter of the
        free memory of the model's device)).
    image_shape : tuple of int, optional
        Spatial shape of the image(s), caps an ``auto`` tile.

    Returns
    -------
    TilingPlan

    Raises
    ------
    CytogenError
        For a tile with the wrong number of axes, an overlap fraction outside ``[0, 1)``, a
        batch size below 1, an unknown blend, a damaged ``predict`` section in the model, or
        a memory budget that is not positive or has no ``auto`` setting to act on.
    """
    given = {"tile": tile, "overlap": overlap, "batch_size": batch_size, "blend": blend}
    section, rec = _recipe_section(model, frozenset(k for k, v in given.items() if v is not None))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    missing = []
    for key, value in given.items():
        if value is not None:
            values[key], sources[key] = value, GIVEN
        elif section is not None and key in section:
            values[key], sources[key] = getattr(rec, key), RECIPE
        else:
            values[key], sources[key] = getattr(PredictConfig(), key), DEFAULT
            if key != "tile":
                missing.append(key)
    where = _where(model)
    what = {k: (f"{k} (--{k.replace('_', '-')})" if sources[k] == GIVEN
                else f"{where}: predict.{k}") for k in given}
    if values["tile"] is None:
        values["tile"], sources["tile"] = tuple(2 * int(p) for p in model.meta["patch_size"]), PATCH
    if values["tile"] != AUTO:
        values["tile"] = _tile(values["tile"], model.dims, what["tile"])
    values["overlap"] = _check(values["overlap"], values["batch_size"], what, model.dims)
    if values["blend"] not in BLENDS:
        raise CytogenError(f"{what['blend']} is {values['blend']!r}; choose one of {list(BLENDS)}")
    extra = _resolve_auto(model, values, sources, memory_budget, image_shape)
    notes = list(extra.pop("notes", ()))
    if missing:
        had = "has no training recipe" if section is None else "recipe has no predict." + \
            "/".join(missing)
        notes.append(f"{where}: the model folder {had}; using cytogen's defaults "
                     + ", ".join(f"{k.replace('_', ' ')} "
                                 + ("auto: " if sources[k].startswith("auto") else "")
                                 + f"{values[k]}" for k in missing)
                     + " (choose with --" + ", --".join(k.replace('_', '-') for k in missing) + ")")
    return TilingPlan(values["tile"], values["overlap"], int(values["batch_size"]),
                      str(values["blend"]), sources, tuple(notes), **extra)


def _resolve_auto(model: LoadedModel, values: dict[str, Any], sources: dict[str, str],
                  memory_budget: float | None, image_shape: tuple[int, ...] | None
                  ) -> dict[str, Any]:
    """Replace ``"auto"`` values in place; returns the plan's margin, balance, auto and notes."""
    keys = [k for k in ("tile", "overlap", "batch_size") if values[k] == AUTO]
    if not keys:
        if memory_budget is not None:
            raise CytogenError(f"--memory-budget {memory_budget} has no effect: tile, overlap and "
                               "batch size are all fixed; add --tile auto (and --batch-size auto) "
                               "to choose them from the budget")
        return {}
    if memory_budget is not None:
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) \
                or not memory_budget > 0:
            raise CytogenError(f"memory budget (--memory-budget) is {memory_budget!r}; give a "
                               "positive number of GiB, e.g. 2")
        budget, budget_from = int(memory_budget * GIB), GIVEN
    else:
        budget = default_budget_bytes(next(model.net.parameters()).device)
        budget_from = "default: min(2 GiB, 1/4 of free memory)"
    erf, bpp = _measured(model)
    plan = auto_tiling(model.net, model.dims, budget_bytes=budget, image_shape=image_shape,
                       erf=erf, bytes_per_pixel=bpp)
    margin: Any = 0
    if values["overlap"] == AUTO:
        values["overlap"], margin = plan.overlap, plan.margin
    if values["tile"] == AUTO:
        values["tile"] = plan.tile
    if values["batch_size"] == AUTO:
        tile_bytes = plan.bytes_per_pixel * float(np.prod(values["tile"]))
        values["batch_size"] = int(max(1, min(8, budget // max(tile_bytes, 1.0))))
    for k in keys:
        sources[k] = f"auto ({sources[k]})"
    sources["memory_budget"] = budget_from
    record = {**plan.to_dict(), "margin": list(plan.margin)}
    record.update(tile=list(values["tile"]), batch_size=values["batch_size"])
    return {"margin": margin, "balance": "tile" in keys and isinstance(values["overlap"], tuple),
            "auto": record, "notes": plan.notes}
