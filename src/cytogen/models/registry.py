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

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cytogen.registry import Registry

__all__ = ["MODELS", "build_model", "list_models", "model_arguments", "register_model"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])

#: Generators (and any other network built by name from a recipe's ``model`` section).
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

    Raises
    ------
    CytogenError
        If ``name`` is unknown (the message lists the available names), an argument is not
        accepted or missing (the message lists the accepted arguments), or an argument value is
        invalid (the constructor raised ``ValueError``).
    """
    return MODELS.build(name, **kwargs)
