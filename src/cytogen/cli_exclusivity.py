"""Command line of ``cytogen evaluate exclusivity`` (registered by :mod:`cytogen.cli`). PLACEHOLDER: being written."""

from __future__ import annotations


def add_evaluate_exclusivity_parser(esub) -> None:
    pass

