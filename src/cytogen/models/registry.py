"""Build models by name with keyword arguments that a YAML recipe can hold.

Adding a generator is one file plus one registry line::

    # src/cytogen/models/mynet.py
    from cytogen.models.registry import register_model

    @register_model("mynet")
    class MyNet(nn.Module):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2): ...

    # src/cytogen/models/__init__.py  (the registry line: importing the file registers it)
    from cytogen.models import mynet  # noqa: F401

Every generator maps ``(B, C_in, [Z,] Y, X) -> (B, C_out, [Z,] Y, X)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cytogen.errors import CytogenError

__all__ = ["build_model", "list_models", "model_arguments", "register_model"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[_F], _F]:
    """Register a model class (or factory function) under ``name``.

    Parameters
    ----------
    name : str
        Registry key, as written in recipes (case-sensitive, e.g. ``"unet"``).

    Returns
    -------
    Callable
        A decorator that registers its argument and returns it unchanged.

    Raises
    ------
    ValueError
        If ``name`` is empty or already taken by a different object.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(factory: _F) -> _F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(
                f"model name {name!r} is already registered to {existing.__module__}."
                f"{existing.__qualname__}; choose another name"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted.

    Returns
    -------
    list of str
        Names accepted by :func:`build_model`.
    """
    return sorted(_REGISTRY)


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        available = ", ".join(repr(n) for n in list_models()) or "(none)"
        raise CytogenError(
            f"unknown model {name!r}; available models: {available}"
        ) from None


def model_arguments(name: str) -> dict[str, Any]:
    """Return the keyword arguments a registered model accepts, with their defaults.

    Parameters
    ----------
    name : str
        A registered model name.

    Returns
    -------
    dict
        Argument name -> default value (``inspect.Parameter.empty`` if required).

    Raises
    ------
    CytogenError
        If ``name`` is not registered.
    """
    sig = inspect.signature(_lookup(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _describe_arguments(sig: inspect.Signature) -> str:
    parts = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts) or "(none)"


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments.

    Parameters
    ----------
    name : str
        Registered model name (see :func:`list_models`).
    **kwargs
        Passed to the model's constructor.

    Returns
    -------
    torch.nn.Module
        The new model.

    Raises
    ------
    CytogenError
        If ``name`` is unknown (the message lists the available names), an argument is
        not accepted or missing (the message lists the accepted arguments), or an
        argument value is invalid (the constructor raised ``ValueError``).
    """
    factory = _lookup(name)
    sig = inspect.signature(factory)
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        raise CytogenError(
            f"bad arguments for model {name!r}: {exc}; accepted arguments: "
            f"{_describe_arguments(sig)}"
        ) from None
    try:
        return factory(**kwargs)
    except ValueError as exc:
        raise CytogenError(f"bad arguments for model {name!r}: {exc}") from exc
