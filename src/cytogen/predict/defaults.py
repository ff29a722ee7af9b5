"""Where the tiling settings of a prediction come from: the caller, the model's recipe, or defaults.

A model folder keeps the recipe it was trained with (``model.json`` -> ``recipe``), and its
``predict`` section (``tile``, ``overlap``, ``batch_size``, ``blend``) holds the tiling the run
was meant to be applied with. :func:`resolve_tiling` gives each setting the value the caller
passed, else the recipe's, else (for model folders without a recipe) the
:class:`~cytogen.config.PredictConfig` default, and records which one was used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cytogen.config import PredictConfig, recipe_from_dict
from cytogen.errors import CytogenError
from cytogen.predict.model_folder import LoadedModel
from cytogen.predict.tiling import BLENDS

__all__ = ["TilingPlan", "resolve_tiling"]

#: Labels of :attr:`TilingPlan.sources`.
GIVEN, RECIPE, DEFAULT, PATCH = "given", "recipe", "default", "2 x training patch size"


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
        ``"2 x training patch size"`` (the recipe leaves ``predict.tile`` unset).
    notes : tuple of str
        What the user should know, e.g. that defaults stood in for a missing recipe.
    """

    tile: tuple[int, ...]
    overlap: float | tuple[int, ...]
    batch_size: int
    blend: str
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def kwargs(self) -> dict[str, Any]:
        """``tile``, ``overlap``, ``batch_size``, ``blend`` as keyword arguments."""
        return {"tile": self.tile, "overlap": self.overlap, "batch_size": self.batch_size,
                "blend": self.blend}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``runtime.json``): the values and ``from`` per setting."""
        overlap = self.overlap if isinstance(self.overlap, float) else list(self.overlap)
        return {"tile": list(self.tile), "overlap": overlap, "batch_size": self.batch_size,
                "blend": self.blend, "from": dict(self.sources)}

    def describe(self) -> str:
        """One line for the prediction log."""
        s = self.sources
        return (f"tiling: tile {'x'.join(map(str, self.tile))} ({s['tile']}), overlap "
                f"{self.overlap} ({s['overlap']}), batch size {self.batch_size} "
                f"({s['batch_size']}), blend {self.blend} ({s['blend']})")


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


def _check(overlap: Any, batch_size: Any, what: dict[str, str]) -> None:
    if isinstance(overlap, (int, float)) and not isinstance(overlap, bool):
        if not 0.0 <= float(overlap) < 1.0:
            raise CytogenError(f"{what['overlap']} is {overlap!r}; an overlap is a fraction of "
                               "the tile in [0, 1), e.g. 0.25")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1):
        raise CytogenError(f"{what['batch_size']} is {batch_size!r}; give a positive integer")


def resolve_tiling(model: LoadedModel, *, tile: Any = None, overlap: Any = None,
                   batch_size: int | None = None, blend: str | None = None) -> TilingPlan:
    """Fill each tiling setting the caller left as None from the model folder.

    Precedence per setting: the given value, the model's recipe (``predict.tile``,
    ``predict.overlap``, ``predict.batch_size``, ``predict.blend``), then cytogen's
    :class:`~cytogen.config.PredictConfig` default, which is used only when the model folder
    has no recipe (or its recipe lacks the key) and is then named in
    :attr:`TilingPlan.notes`. An unset tile (``predict.tile: null``) is twice the training
    patch size.

    Parameters
    ----------
    model
        From :func:`~cytogen.predict.model_folder.load_model_folder`.
    tile, overlap, batch_size, blend
        Values given by the caller; None takes them from the model.

    Returns
    -------
    TilingPlan

    Raises
    ------
    CytogenError
        For a tile with the wrong number of axes, an overlap fraction outside ``[0, 1)``, a
        batch size below 1, an unknown blend, or a damaged ``predict`` section in the model.
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
    values["tile"] = _tile(values["tile"], model.dims, what["tile"])
    _check(values["overlap"], values["batch_size"], what)
    if values["blend"] not in BLENDS:
        raise CytogenError(f"{what['blend']} is {values['blend']!r}; choose one of {list(BLENDS)}")
    if isinstance(values["overlap"], (int, float)) and not isinstance(values["overlap"], bool):
        values["overlap"] = float(values["overlap"])
    notes = []
    if missing:
        had = "has no training recipe" if section is None else "recipe has no predict." + \
            "/".join(missing)
        notes.append(f"{where}: the model folder {had}; using cytogen's defaults "
                     + ", ".join(f"{k.replace('_', ' ')} {values[k]}" for k in missing)
                     + " (choose with --" + ", --".join(k.replace('_', '-') for k in missing) + ")")
    return TilingPlan(values["tile"], values["overlap"], int(values["batch_size"]),
                      str(values["blend"]), sources, tuple(notes))
