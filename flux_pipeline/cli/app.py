"""The `flux-pipeline` command group: global options, and every outcome of a command mapped
to its exit code in one place (`_Group.invoke`): the package's errors carry their own exit
code and report (`errors.py`)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..defaults import API_KEY_ENV, MAX_SPEC_REQUESTS
from ..errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    FluxPipelineError,
    LockError,
    SpecInvalid,
    Terminated,
)
from ..provider.redaction import RedactingStream, Redactor

if TYPE_CHECKING:
    from ..language.spec import Spec

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away


def _err(message: str) -> None:
    click.echo(message, err=True)


@dataclass(frozen=True, slots=True)
class Settings:
    """The group's options, for every command: `ctx.obj`, handed over by `pass_settings`."""

    debug: bool = False
    allow_output_outside: bool = False
    max_spec_requests: int = MAX_SPEC_REQUESTS

    def load_spec(self, path: Path) -> Spec:
        """Load a spec as the command line was told to (`--allow-output-outside`,
        `--max-spec-requests`)."""
        from ..language.spec import load_spec

        return load_spec(
            path,
            allow_output_outside=self.allow_output_outside,
            max_requests=self.max_spec_requests,
        )


pass_settings = click.make_pass_decorator(Settings, ensure=True)

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
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own ways out (--help, usage errors)
        except KeyboardInterrupt:
            raise _exit(Terminated(signal.SIGINT)) from None
        except FluxPipelineError as exc:
            raise _exit(exc) from None
        except BrokenPipeError:
            # The reader went away (`plan | head`): stop quietly, as `git log | head` does.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:  # a full disk, a folder that vanished, a permission
            message = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
            raise _exit(FluxPipelineError(message)) from None
        except Exception as exc:  # a bug: say so briefly, the traceback only on request
            if ctx.params.get("debug"):
                _err(traceback.format_exc())
            _err(f"internal error: {type(exc).__name__}: {exc}")
            _err("this is a bug in flux-pipeline; rerun with --debug for the traceback")
            raise click.exceptions.Exit(EXIT_FAILED) from None


def _exit(error: FluxPipelineError) -> click.exceptions.Exit:
    """Report `error` and end with its exit code."""
    for line in error.report():
        _err(line)
    return click.exceptions.Exit(error.exit_code)


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
@click.pass_context
def cli(
    ctx: click.Context, debug: bool, allow_output_outside: bool, max_spec_requests: int
) -> None:
    """Turn YAML specs into images from the FLUX image API (text-to-image and image editing),
    reproducibly.

    A spec holds Jinja prompt templates and parameter grids. `validate` checks it without the
    network, `plan` shows the requests it makes, `run` generates the images and writes
    SPEC.lock.json beside the spec. Exit codes: 0 ok, 1 invalid spec or stale, 2 bad usage
    (an unknown option, no API key), 3 some requests failed, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM).
    """
    ctx.obj = Settings(debug, allow_output_outside, max_spec_requests)


def each_spec(
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
                for line in exc.report():
                    _err(line)
            else:
                failed(spec, exc)
    if invalid and failed is None:
        raise click.exceptions.Exit(EXIT_INVALID)


def main() -> None:
    """Entry point of the `flux-pipeline` console script."""
    cli()
