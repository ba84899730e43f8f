"""Option values parsed where they enter: click parameter types for rates, shards and
latencies, and the arguments and options several commands share."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConfigError

SPECS = click.argument(
    "specs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
WAIT = click.option(
    "--wait",
    default=0.0,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="If another run is writing to the output folder, wait this long for it "
    "(default: exit 2 at once, naming it).",
)


if TYPE_CHECKING:  # click's ParamType is generic for type checkers from click 8.2 on
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class _Parsed(_ParamType):
    """A value parsed by a class's `parse` (imported only when an option is given, to keep
    `--help` fast); its ConfigError becomes click's usage error (exit 2)."""

    def __init__(self, name: str, module: str, kind: str) -> None:
        self.name = name
        self._module, self._kind = module, kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        kind = getattr(importlib.import_module(self._module, __package__), self._kind)
        if isinstance(value, kind):
            return value
        try:
            return kind.parse(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def RateType() -> _Parsed:  # noqa: N802  (used as a type, like click's own)
    """`10/s` or `100/m`, as a `pacing.Rate`."""
    return _Parsed("RATE", "..provider.pacing", "Rate")


def ShardType() -> _Parsed:  # noqa: N802
    """`K/N` with 1 <= K <= N, as a `shards.Shard`."""
    return _Parsed("K/N", "..store.shards", "Shard")


class SecondsRangeType(_ParamType):
    """Seconds, fixed (`0.1`) or a range (`0.05-0.2`), as a (low, high) pair."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        low, _, high = str(value).partition("-")
        try:
            span = (float(low), float(high or low))
        except ValueError:
            self.fail(f"{value!r} is not seconds or a range like 0.05-0.2", param, ctx)
        if not 0 <= span[0] <= span[1]:
            self.fail(f"{value!r}: a range goes from low to high, both >= 0", param, ctx)
        return span


def complete_request_names(ctx: click.Context, param: Any, incomplete: str) -> list[Any]:
    """`--only` completion: the request names of the specs already on the command line."""
    from click.shell_completion import CompletionItem

    from .. import library

    names: list[str] = []
    specs = ctx.params.get("specs")
    if not specs:  # an option still waiting for its value stops click's parse of the rest
        words = os.environ.get("COMP_WORDS", "").split()
        specs = [w for w in words if w.endswith((".yaml", ".yml")) and Path(w).is_file()]
    for path in specs:
        try:
            names += [r.id for r in library.expand(library.load_spec(path))]
        except Exception:  # noqa: BLE001 - a spec with problems completes nothing
            continue
    return [CompletionItem(n) for n in dict.fromkeys(names) if n.startswith(incomplete)]


REMOTE_KEYS = ("remote_url", "no_remote", "remote_read_only", "remote_optional")


def remote_options(command: Any) -> Any:
    """The options of the commands that use the shared remote cache (run, push, pull)."""
    options = [
        click.option(
            "--remote",
            "remote_url",
            metavar="URL",
            help="The shared remote cache: s3://bucket/prefix (credentials and endpoint from "
            "the AWS_* variables), gs://, az://, file:///path. Default: FLUX_PIPELINE_REMOTE, "
            "else `remote` in [tool.flux-pipeline].",
        ),
        click.option("--no-remote", is_flag=True, help="Use no remote cache, whatever is set."),
        click.option(
            "--remote-read-only",
            is_flag=True,
            help="Read the remote cache, never write it (pull requests from forks).",
        ),
        click.option(
            "--remote-optional",
            is_flag=True,
            help="Go on without the remote when it cannot be reached (default: exit 2).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
