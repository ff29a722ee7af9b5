"""The generator protocol: what every model built from a recipe's ``model`` section exposes.

A generator is an ``nn.Module`` mapping ``(B, in_channels, [Z,] Y, X)`` to
``(B, out_channels, [Z,] Y, X)`` with four attributes set in its constructor:

``in_channels``, ``out_channels`` : int
    Channel counts of its input and output.
``dims`` : {2, 3}
    Spatial dimensionality it was built for.
``size_multiple`` : tuple of int
    One positive integer per spatial axis, in the input's axis order (``(Y, X)`` in 2D,
    ``(Z, Y, X)`` in 3D): the spatial size along axis ``i`` must be a multiple of
    ``size_multiple[i]``. Usually ``2**n_downsamplings`` on every axis; ``1`` on an axis the
    model never pools (e.g. Z of a 3D U-Net with ``pool_z=False``), and ``(1,) * dims`` for a
    model that takes any size. A generator refuses other sizes in ``forward`` with a
    ``ValueError`` whose message says "divisible" (see :func:`check_generator_input`);
    :func:`cytogen.predict.predict_tiled` pads to it.

:func:`cytogen.models.build_model` checks every model it builds against this protocol
(:func:`check_generator`), so a new model that forgets an attribute fails at once with a
message naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from cytogen.errors import CytogenError

__all__ = ["Generator", "check_generator", "check_generator_input", "check_spatial_size"]


@runtime_checkable
class Generator(Protocol):
    """Structural type of a generator (see the module docstring for the attributes)."""

    in_channels: int
    out_channels: int
    dims: int
    size_multiple: tuple[int, ...]

    def __call__(self, x: Tensor) -> Tensor:
        """``(B, in_channels, [Z,] Y, X) -> (B, out_channels, [Z,] Y, X)``."""
        ...


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_generator(model: object, name: str, requested: Mapping[str, Any] | None = None) -> None:
    """Check that ``model`` (built as registered ``name``) satisfies :class:`Generator`.

    Parameters
    ----------
    model : object
        The built model.
    name : str
        Its registry name (for the message).
    requested : mapping, optional
        The keyword arguments it was built with; ``in_channels``, ``out_channels`` and
        ``dims`` given there must equal the model's attributes.

    Raises
    ------
    CytogenError
        If an attribute is missing or malformed, or differs from what was requested.
    """
    where = f"model {name!r} ({type(model).__module__}.{type(model).__qualname__})"
    fix = "set it in __init__ (see cytogen.models.protocol.Generator)"
    missing = [a for a in ("in_channels", "out_channels", "dims", "size_multiple")
               if not hasattr(model, a)]
    if missing:
        raise CytogenError(f"{where} does not satisfy the generator protocol: it has no "
                           f"{', '.join(missing)}; {fix}")
    if not callable(model):
        raise CytogenError(f"{where} is not callable; generators are nn.Modules")
    for attr in ("in_channels", "out_channels"):
        if not _is_count(getattr(model, attr)):
            raise CytogenError(f"{where}: {attr} must be a positive integer, got "
                               f"{getattr(model, attr)!r}; {fix}")
    dims = model.dims  # type: ignore[attr-defined]
    if dims not in (2, 3) or isinstance(dims, bool):
        raise CytogenError(f"{where}: dims must be 2 or 3, got {dims!r}; {fix}")
    multiple = model.size_multiple  # type: ignore[attr-defined]
    if (not isinstance(multiple, tuple) or len(multiple) != dims
            or not all(_is_count(m) for m in multiple)):
        raise CytogenError(f"{where}: size_multiple must be a tuple of {dims} positive integers "
                           f"(one per spatial axis), got {multiple!r}; {fix}")
    for attr, value in (requested or {}).items():
        if attr in ("in_channels", "out_channels", "dims") and getattr(model, attr) != value:
            raise CytogenError(f"{where} was built with {attr}={value!r} but reports "
                               f"{attr}={getattr(model, attr)!r}; store the argument as given")


def check_generator_input(model: Generator, x: Tensor) -> None:
    """Rank, channel count and divisibility of a generator's input, with clear messages.

    Raises
    ------
    ValueError
        If ``x`` is not ``(B, in_channels, [Z,] Y, X)`` or a spatial size is not a multiple of
        ``model.size_multiple`` on its axis (the message says "divisible").
    """
    name = type(model).__name__
    if x.ndim != model.dims + 2:
        axes = "(B, C, Y, X)" if model.dims == 2 else "(B, C, Z, Y, X)"
        raise ValueError(f"{name}(dims={model.dims}) expects a {axes} tensor, got shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"{name} expects {model.in_channels} input channel(s), got "
                         f"{x.shape[1]} (shape {tuple(x.shape)})")
    spatial = tuple(x.shape[2:])
    if any(s % m for s, m in zip(spatial, model.size_multiple)):
        raise ValueError(
            f"{name} input spatial size {spatial} must be divisible by {model.size_multiple} "
            f"per axis; pad or crop the input, or use "
            f"cytogen.predict.predict_tiled(..., size_multiple=model.size_multiple)"
        )


def check_spatial_size(model: Generator, size: Sequence[int], setting: str) -> None:
    """Refuse a configured spatial size (e.g. ``data.patch_size``) the generator cannot take.

    Parameters
    ----------
    model : Generator
        The built generator.
    size : sequence of int
        Spatial size per axis, in the input's axis order.
    setting : str
        Where the size comes from, named in the message (``"data.patch_size"``).

    Raises
    ------
    CytogenError
        If ``size`` has the wrong number of axes or is not a multiple of
        ``model.size_multiple`` on every axis; the message gives the nearest valid sizes.
    """
    size = tuple(int(s) for s in size)
    mult = model.size_multiple
    if len(size) != len(mult):
        raise CytogenError(f"{setting} {list(size)} has {len(size)} axes but the model is "
                           f"{model.dims}D; give {len(mult)} sizes")
    if any(s % m for s, m in zip(size, mult)):
        lower = [max(m, s // m * m) for s, m in zip(size, mult)]
        upper = [-(-s // m) * m for s, m in zip(size, mult)]
        raise CytogenError(f"{setting} {list(size)} is not a multiple of the model's size "
                           f"multiple {list(mult)} per axis; use e.g. {lower} or {upper}")
