"""One registry type for everything built by name from a recipe: models, discriminators, tasks.

A :class:`Registry` maps a name (as written in YAML) to a class or factory. It checks the
keyword arguments against the factory's signature before calling it, so a typo in a recipe
gives one clear error listing the accepted arguments instead of a ``TypeError`` deep inside
a constructor.

Example::

    MODELS = Registry("model")

    @MODELS.register("mynet")
    class MyNet(nn.Module): ...

    net = MODELS.build("mynet", in_channels=1, out_channels=1, dims=2)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from cytogen.errors import CytogenError

__all__ = ["Registry"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


class Registry(Generic[_T]):
    """Name -> factory table of one kind of object (``kind`` names it in error messages).

    Parameters
    ----------
    kind : str
        What is registered, e.g. ``"model"``; used in messages (``unknown model 'x'``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, Callable[..., _T]] = {}

    def register(self, name: str) -> Callable[[_F], _F]:
        """Decorator registering a class (or factory function) under ``name``.

        Raises
        ------
        ValueError
            If ``name`` is empty or already taken by a different object.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(factory: _F) -> _F:
            existing = self._table.get(name)
            if existing is not None and existing is not factory:
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered to "
                    f"{existing.__module__}.{existing.__qualname__}; choose another name"
                )
            self._table[name] = factory
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a throw-away entry)."""
        self._table.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Callable[..., _T]:
        """The factory registered as ``name``.

        Raises
        ------
        CytogenError
            If ``name`` is unknown; the message lists the available names.
        """
        try:
            return self._table[name]
        except (KeyError, TypeError):
            available = ", ".join(repr(n) for n in self.names()) or "(none)"
            raise CytogenError(f"unknown {self.kind} {name!r}; available {self.kind}s: {available}") from None

    def arguments(self, name: str) -> dict[str, Any]:
        """Keyword arguments the factory of ``name`` accepts -> default (``inspect.Parameter.empty``
        when required)."""
        sig = inspect.signature(self.get(name))
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def build(self, name: str, **kwargs: Any) -> _T:
        """Call the factory of ``name`` with ``kwargs``.

        Raises
        ------
        CytogenError
            If ``name`` is unknown, an argument is not accepted or missing (the message lists the
            accepted ones), or the factory raised ``ValueError`` for a bad value.
        """
        factory = self.get(name)
        sig = inspect.signature(factory)
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            raise CytogenError(f"bad arguments for {self.kind} {name!r}: {exc}; accepted arguments: "
                               f"{_describe(sig)}") from None
        try:
            return factory(**kwargs)
        except ValueError as exc:
            raise CytogenError(f"bad arguments for {self.kind} {name!r}: {exc}") from exc


def _describe(sig: inspect.Signature) -> str:
    parts = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts) or "(none)"
