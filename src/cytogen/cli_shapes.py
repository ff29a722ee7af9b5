"""Command line of ``cytogen evaluate shapes`` and ``cytogen evaluate positions`` (registered by :mod:`cytogen.cli`). PLACEHOLDER: being written."""

from __future__ import annotations


def add_evaluate_shapes_parser(esub) -> None:
    pass


def add_evaluate_positions_parser(esub) -> None:
    pass

