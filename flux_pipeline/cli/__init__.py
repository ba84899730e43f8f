"""The command line: a thin layer over the library (`app` maps outcomes to exit codes;
`commands` and `run` parse options, call the library and print through `reports`)."""

from __future__ import annotations

from . import commands, project, run  # noqa: F401  (they register their commands with the group)
from .app import cli, main

__all__ = ["cli", "main"]
