"""The `flux-pipeline` command group: global options, and every outcome of a command mapped
to its exit code in one place (`_Group.invoke`)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..defaults import API_KEY_ENV, MAX_SPEC_REQUESTS
from ..errors import (
    ConfigError,
    FluxPipelineError,
    LockError,
    SpecInvalid,
    Terminated,
    problem_lines,
)
from ..provider.redaction import RedactingStream, Redactor

if TYPE_CHECKING:
    from ..language.spec import Spec

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away


def _err(message: str) -> None:
    click.echo(message, err=True)


class ExitCode(Exception):
    """Raised by a command to end with a given code after printing its own output."""

    def __init__(self, code: int) -> None:
        self.code = code


#: The group's own options, accepted after the command too (`run --debug`).
GLOBAL_FLAGS = frozenset({"--debug", "--allow-output-outside"})
GLOBAL_VALUES = frozenset({"--max-spec-requests"})


def hoist_globals(args: list[str]) -> list[str]:
    """`args` with the group's options that follow the command moved before it."""
    hoisted: list[str] = []
    rest: list[str] = []
    command_seen = False
    words = iter(args)
    for word in words:
        if word == "--":
            rest += [word, *words]
            break
        name = word.split("=", 1)[0]
        takes_value = name in GLOBAL_VALUES and "=" not in word
        target = hoisted if command_seen and (name in GLOBAL_FLAGS | GLOBAL_VALUES) else rest
        target.append(word)
        if takes_value:
            target.append(next(words, ""))
        elif not word.startswith("-"):
            command_seen = True
    return hoisted + rest


class _Group(click.Group):
    """Maps every outcome of a command to its exit code, in this one place."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_globals(args))

    def invoke(self, ctx: click.Context) -> Any:
        # Everything the process prints passes the key's redactor, whatever printed it.
        redact = Redactor(os.environ.get(API_KEY_ENV, "").strip())
        streams = sys.stdout, sys.stderr
        sys.stdout = RedactingStream(sys.stdout, redact)
        sys.stderr = RedactingStream(sys.stderr, redact)
        try:
            return self._invoke(ctx)
        finally:
            sys.stdout, sys.stderr = streams

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ExitCode as exc:
            raise click.exceptions.Exit(exc.code) from None
        except KeyboardInterrupt:
            _err("interrupted; finished work is in the lock")
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except Terminated as exc:
            word = "interrupted" if exc.signum == signal.SIGINT else "terminated"
            _err(f"{word}; finished work is in the lock")
            raise click.exceptions.Exit(128 + exc.signum) from None
        except ConfigError as exc:
            _err(f"error: {exc}")
            raise click.exceptions.Exit(EXIT_USAGE) from None
        except (SpecInvalid, LockError) as exc:
            _report(exc)
            raise click.exceptions.Exit(EXIT_INVALID) from None
        except FluxPipelineError as exc:
            _err(f"error: {exc}")
            raise click.exceptions.Exit(EXIT_FAILED) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own ways out (--help, usage errors)
        except BrokenPipeError:
            # The reader went away (`plan | head`): stop quietly, as `git log | head` does.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:  # a full disk, a folder that vanished, a permission
            _err(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            raise click.exceptions.Exit(EXIT_FAILED) from None
        except Exception as exc:  # a bug: say so briefly, the traceback only on request
            if ctx.params.get("debug"):
                _err(traceback.format_exc())
            _err(f"internal error: {type(exc).__name__}: {exc}")
            _err("this is a bug in flux-pipeline; rerun with --debug for the traceback")
            raise click.exceptions.Exit(EXIT_FAILED) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="flux-pipeline")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error.")
@click.option(
    "--allow-output-outside",
    is_flag=True,
    envvar="FLUX_PIPELINE_ALLOW_OUTPUT_OUTSIDE",
    help="Let a spec's `output:` lie outside its folder and the current directory.",
)
@click.option(
    "--max-spec-requests",
    type=click.IntRange(min=1),
    default=MAX_SPEC_REQUESTS,
    show_default=True,
    envvar="FLUX_PIPELINE_MAX_SPEC_REQUESTS",
    help="Refuse a spec that makes more requests than this, before expanding it.",
)
def cli(debug: bool, allow_output_outside: bool, max_spec_requests: int) -> None:
    """Turn YAML specs into images from the FLUX text-to-image API, reproducibly.

    A spec holds Jinja prompt templates and parameter grids. `validate` checks it without the
    network, `plan` shows the requests it makes, `run` generates the images and writes
    SPEC.lock.json beside the spec. Exit codes: 0 ok, 1 invalid spec or stale, 2 bad usage
    (an unknown option, no API key), 3 some requests failed, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM).
    """


def _each_spec(
    specs: Sequence[Path],
    work: Callable[[Path], None],
    together: Callable[[], None] | None = None,
    failed: Callable[[str, SpecInvalid | LockError], None] | None = None,
) -> None:
    """Run `work` on every spec, then `together` (checks across them). Each invalid one goes
    to `failed` with its spec ("" for a problem across specs); by default it is reported and
    the command exits 1 at the end."""
    invalid = False
    steps = [(str(path), functools.partial(work, path)) for path in specs]
    for spec, step in steps + ([("", together)] if together else []):
        try:
            step()
        except (SpecInvalid, LockError) as exc:
            invalid = True
            if failed is None:
                _report(exc)
            else:
                failed(spec, exc)
    if invalid and failed is None:
        raise ExitCode(EXIT_INVALID)


def _report(exc: FluxPipelineError) -> None:
    if isinstance(exc, SpecInvalid):
        for line in problem_lines(exc.problems):
            _err(line)
        count = len(exc.problems)
        _err(f"{count} problem{'s' if count != 1 else ''} found")
    else:
        _err(f"error: {exc}")


def main() -> None:
    """Entry point of the `flux-pipeline` console script."""
    cli()


def load_spec(path: Path) -> Spec:
    """Load a spec as the command line was told to (`--allow-output-outside`,
    `--max-spec-requests`)."""
    from ..language.spec import load_spec as load

    params = click.get_current_context().find_root().params
    return load(
        path,
        allow_output_outside=bool(params.get("allow_output_outside")),
        max_requests=int(params.get("max_spec_requests") or MAX_SPEC_REQUESTS),
    )
