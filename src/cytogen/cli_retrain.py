"""Command line of ``cytogen retrain exclusivity`` (registered by :mod:`cytogen.cli`). PLACEHOLDER: being written."""

from __future__ import annotations


def add_retrain_parser(sub) -> None:
    pass

