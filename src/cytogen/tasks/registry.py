"""The task registry: ``@register_task("name")`` makes a LightningModule a recipe's ``task``.

A task class declares what the workflow must give it instead of being special-cased there:

``paired`` (class attribute, default True)
    False when source and target patches are drawn independently (unpaired data, CycleGAN).
``generator_modules`` (class attribute)
    Names of the sub-modules that are generators (compiled by ``--compile``).
``uses`` (class attribute)
    The optional recipe settings the task reads, as ``"section.key"`` or whole ``"section"``
    names among ``gan``, ``discriminator`` and ``loss`` (default: none of them). The train
    workflow refuses a recipe that changes any other of them from its default, because the
    task would silently ignore it.

Every task is built with the same keyword arguments: ``model``, ``discriminator``, ``loss``,
``optim``, ``gan`` (the recipe sections as dicts), ``max_steps`` and ``grad_clip``.
"""

from __future__ import annotations

from typing import Any

from cytogen.registry import Registry

__all__ = ["TASKS", "register_task"]

TASKS: Registry[Any] = Registry("task")


def register_task(name: str):
    """Decorator: register a task class under ``name`` (the recipe's ``task`` value)."""
    return TASKS.register(name)
