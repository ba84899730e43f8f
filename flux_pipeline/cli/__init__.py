"""The command line: a thin layer over the library (`app` maps outcomes to exit codes;
`commands`, `run` and `project` parse options, call the library and print through `reports`).
The top stage: it may import every other."""

from __future__ import annotations

from . import assets, commands, project, remote, run  # noqa: F401  (they register their commands with the group)
from .app import cli, main

__all__ = ["cli", "main"]
