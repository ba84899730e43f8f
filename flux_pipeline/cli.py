"""The command line: a thin layer over the library. Errors become exit codes in `main` only."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import ConfigError, FluxPipelineError, LockError, SpecInvalid

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130

SPECS = click.argument(
    "specs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)


def _err(message: str) -> None:
    click.echo(message, err=True)


class ExitCode(Exception):
    """Raised by a command to end with a given code after printing its own output."""

    def __init__(self, code: int) -> None:
        self.code = code


class _Group(click.Group):
    """Maps every outcome of a command to its exit code, in this one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ExitCode as exc:
            raise click.exceptions.Exit(exc.code) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except ConfigError as exc:
            _err(f"error: {exc}")
            raise click.exceptions.Exit(EXIT_USAGE) from None
        except (SpecInvalid, LockError) as exc:
            _report(exc)
            raise click.exceptions.Exit(EXIT_INVALID) from None
        except FluxPipelineError as exc:
            _err(f"error: {exc}")
            raise click.exceptions.Exit(EXIT_FAILED) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="flux-pipeline")
def cli() -> None:
    """Turn YAML specs into images from the FLUX text-to-image API, reproducibly.

    A spec holds Jinja prompt templates and parameter grids. `validate` checks it without the
    network, `plan` shows the requests it makes, `run` generates the images and writes
    SPEC.lock.json beside the spec. Exit codes: 0 ok, 1 invalid spec or stale, 3 some requests
    failed, 130 interrupted.
    """


def _each_spec(specs: Sequence[Path], work: Callable[[Path], None]) -> None:
    """Run `work` on every spec, report every invalid one, and exit 1 if any was."""
    failed = False
    for path in specs:
        try:
            work(path)
        except (SpecInvalid, LockError) as exc:
            failed = True
            _report(exc)
    if failed:
        raise ExitCode(EXIT_INVALID)


def _report(exc: FluxPipelineError) -> None:
    if isinstance(exc, SpecInvalid):
        for problem in exc.problems:
            _err(f"error: {problem}")
        count = len(exc.problems)
        _err(f"{count} problem{'s' if count != 1 else ''} found")
    else:
        _err(f"error: {exc}")


@cli.command()
@SPECS
def validate(specs: Sequence[Path]) -> None:
    """Load, expand and validate specs against the API schema. No network.

    Exit 0 when every spec is valid, 1 when any is not; every problem is listed with its
    file:line, job, combination and field.
    """
    from . import api

    def work(path: Path) -> None:
        spec = api.load_spec(path)
        requests = api.validate(spec)
        click.echo(f"{path}: valid, {len(requests)} request{'s' if len(requests) != 1 else ''}")

    _each_spec(specs, work)


@cli.command()
@SPECS
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan(specs: Sequence[Path], as_json: bool) -> None:
    """Show the requests specs make: size, seed, images, and state against the lock.

    States: new (not in the lock), changed (request differs from the lock), missing or corrupt
    (an output file is gone or altered), up to date. Credits are estimated from what the lock
    recorded for the same model and size, else "unknown".
    """
    from . import api
    from .report import plan_table

    plans: list[dict[str, Any]] = []

    def work(path: Path) -> None:
        result = api.plan(api.load_spec(path))
        if as_json:
            plans.append(result.as_json())
        else:
            click.echo(plan_table(result))

    try:
        _each_spec(specs, work)
    finally:
        if as_json:
            click.echo(json.dumps(plans if len(specs) > 1 else (plans or [None])[0], indent=2))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the spec language (for editors and yaml-language-server)."""
    from .spec import spec_schema_json

    click.echo(spec_schema_json(), nl=False)


def main() -> None:
    """Entry point of the `flux-pipeline` console script."""
    cli()
