"""Build models by name with keyword arguments that a YAML recipe can hold.

Adding a generator is one file plus one registry line::

    # src/cytogen/models/mynet.py
    from cytogen.models.registry import register_model

    @register_model("mynet")
    class MyNet(nn.Module):
        def __init__(self, in_channels: int = 1, out_channels: int = 1, *, dims: int = 2): ...

    # src/cytogen/models/__init__.py  (the registry line: importing the file registers it)
    from cytogen.models import mynet  # noqa: F401

Every generator maps ``(B, C_in, [Z,] Y, X) -> (B, C_out, [Z,] Y, X)`` and sets the attributes
of :class:`cytogen.models.protocol.Generator` (``in_channels``, ``out_channels``, ``dims``,
``size_multiple``); :func:`build_model` refuses a model that does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cytogen.models.protocol import Generator, check_generator
from cytogen.registry import Registry

__all__ = ["MODELS", "Generator", "build_model", "list_models", "model_arguments",
           "register_model"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])

#: Generators: the networks built by name from a recipe's ``model`` section.
MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str) -> Callable[[_F], _F]:
    """Register a model class (or factory function) under ``name`` (see :class:`Registry`)."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


def model_arguments(name: str) -> dict[str, Any]:
    """Keyword arguments a registered model accepts, with their defaults."""
    return MODELS.arguments(name)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments.

    The result satisfies :class:`~cytogen.models.protocol.Generator` (checked here).

    Raises
    ------
    CytogenError
        If ``name`` is unknown (the message lists the available names), an argument is not
        accepted or missing (the message lists the accepted arguments), an argument value is
        invalid (the constructor raised ``ValueError``, e.g. ``dims=3`` for a 2D-only model),
        or the built model breaks the generator protocol.
    """
    model = MODELS.build(name, **kwargs)
    check_generator(model, name, kwargs)
    return model
