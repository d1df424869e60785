"""The ``fedloom`` command line (:mod:`fedloom.cli.main`)."""

from fedloom.cli.main import main

__all__ = ["main"]
