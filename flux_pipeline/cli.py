"""The command line: a thin layer over the library. Errors become exit codes in `main` only."""

from __future__ import annotations

import json
import os
import signal
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .defaults import API_KEY_ENV, DEFAULT_BASE_URL
from .errors import ConfigError, FluxPipelineError, LockError, SpecInvalid, Terminated

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130

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
        except OSError as exc:  # a full disk, a folder that vanished, a permission
            _err(_redact(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")))
            raise click.exceptions.Exit(EXIT_FAILED) from None
        except Exception as exc:  # a bug: say so briefly, the traceback only on request
            if ctx.params.get("debug"):
                _err(_redact(traceback.format_exc()))
            _err(_redact(f"internal error: {type(exc).__name__}: {exc}"))
            _err("this is a bug in flux-pipeline; rerun with --debug for the traceback")
            raise click.exceptions.Exit(EXIT_FAILED) from None


def _redact(text: str) -> str:
    """The text without the API key, wherever it came from."""
    key = os.environ.get(API_KEY_ENV, "")
    return text.replace(key, "[redacted]") if len(key) >= 4 else text


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="flux-pipeline")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error.")
def cli(debug: bool) -> None:
    """Turn YAML specs into images from the FLUX text-to-image API, reproducibly.

    A spec holds Jinja prompt templates and parameter grids. `validate` checks it without the
    network, `plan` shows the requests it makes, `run` generates the images and writes
    SPEC.lock.json beside the spec. Exit codes: 0 ok, 1 invalid spec or stale, 2 bad usage
    (an unknown option, no API key), 3 some requests failed, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM).
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
    from . import library

    def work(path: Path) -> None:
        spec = library.load_spec(path)
        requests = library.validate(spec)
        click.echo(f"{path}: valid, {len(requests)} request{'s' if len(requests) != 1 else ''}")

    _each_spec(specs, work)


@cli.command()
@SPECS
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan(specs: Sequence[Path], as_json: bool) -> None:
    """Show the requests specs make: size, seed, images, and state against the lock.

    States: new (not in the lock), changed (request differs from the lock), missing or corrupt
    (an output file is gone or altered), up to date. Credits are estimated from what the lock
    recorded for the same model and size, else "unknown"; a request whose images the cache of
    earlier outputs holds costs nothing ("0 (cache)"). Lock entries no longer in the spec are
    counted: the next run drops them from the lock.
    """
    from . import library
    from .report import plan_table

    plans: list[dict[str, Any]] = []

    def work(path: Path) -> None:
        result = library.plan(library.load_spec(path))
        if as_json:
            plans.append(result.as_json())
        else:
            click.echo(plan_table(result))

    try:
        _each_spec(specs, work)
    finally:
        if as_json:
            click.echo(json.dumps(plans if len(specs) > 1 else next(iter(plans), None), indent=2))


@cli.command()
@SPECS
@click.option(
    "--concurrency",
    "-j",
    default=4,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Requests in flight at once.",
)
@click.option("--rate", help="Requests per second or minute for all workers together: 10/s, 100/m.")
@click.option(
    "--retries",
    default=3,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Retries of a request on 408, 409, 429, 5xx, timeouts and connection errors.",
)
@click.option(
    "--timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for one HTTP answer.",
)
@click.option(
    "--only",
    multiple=True,
    metavar="GLOB",
    help="Run only requests whose name matches (repeatable).",
)
@click.option("--force", is_flag=True, help="Redo requests even if they are up to date.")
@click.option(
    "--prune", is_flag=True, help="Delete the images of requests that are no longer in the spec."
)
@click.option(
    "--max-credits",
    type=click.FloatRange(min=0),
    help="Stop sending once this many credits are spent.",
)
@click.option("--max-requests", type=click.IntRange(min=0), help="Send at most this many requests.")
@click.option("--dry-run", is_flag=True, help="Print the bodies that would be sent, send nothing.")
@click.option(
    "--emulator",
    is_flag=True,
    help="Run against the built-in emulator on loopback (offline, no key needed).",
)
@click.option(
    "--base-url",
    envvar="FLUX_PIPELINE_BASE_URL",
    show_envvar=True,
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="The API's base URL.",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Do shard K of N (chosen by request name) into a partial lock; see merge.",
)
@click.option(
    "--transport",
    type=click.Choice(["aiohttp", "httpx"]),
    default="aiohttp",
    show_default=True,
    help="HTTP transport under httpx.",
)
@WAIT
@click.option(
    "--drain-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="After Ctrl-C or SIGTERM, how long the requests in flight (already paid for) may "
    "take to finish and store their images; a second signal abandons them at once.",
)
def run(
    specs: Sequence[Path],
    rate: str | None,
    emulator: bool,
    base_url: str,
    dry_run: bool,
    **options: Any,
) -> None:
    """Generate the images of specs and record them in SPEC.lock.json.

    Only requests that are new or changed (or whose files are missing or altered) are sent;
    each result is made durable before it is reported done. One run at a time writes to an
    output folder. Ctrl-C (or SIGTERM) stops sending and lets the requests already paid for
    finish; a second one abandons them (the next run fetches their images without paying).
    The key comes from AIMLAPI_KEY and is never printed. Exit 0 when all are done, 1 on an
    invalid spec, 2 on bad usage (no API key, the output folder busy), 3 when some requests
    failed or the lock could not be saved, 130 when interrupted (Ctrl-C), 143 when
    terminated (SIGTERM); finished work is kept in every case.
    """
    from . import library
    from .runner import Rate, RunOptions, todo
    from .shards import parse_shard

    options["only"] = tuple(options["only"])
    options["shard"] = parse_shard(options["shard"]) if options["shard"] else None
    run_options = RunOptions(rate=Rate.parse(rate) if rate else None, **options)
    loaded = []

    def load(path: Path) -> None:
        spec = library.load_spec(path)
        loaded.append((spec, library.validate(spec)))

    _each_spec(specs, load)
    if dry_run:
        for spec, requests in loaded:
            for item in todo(spec, requests, run_options):
                click.echo(
                    json.dumps(
                        {"id": item.request.id, "body": item.request.body}, ensure_ascii=False
                    )
                )
        return
    key = os.environ.get(API_KEY_ENV, "")
    if emulator:
        from .emulator import EmulatorServer

        with EmulatorServer() as server:
            _run_all(loaded, server.url, key or "emulator", run_options)
    else:
        _run_all(loaded, base_url, key, run_options)


def _run_all(loaded: Sequence[tuple[Any, Any]], base_url: str, key: str, options: Any) -> None:
    from .progress import Progress
    from .runner import run as run_spec

    failed = False
    for spec, requests in loaded:
        with Progress(spec, requests) as progress:
            result = run_spec(
                spec,
                base_url=base_url,
                api_key=key,
                options=options,
                listener=progress.update,
                notify=progress.notice,
                requests=requests,
            )
        click.echo(progress.summary(result))
        if result.interrupted:
            raise Terminated(result.interrupted)  # the other specs are not started
        failed = failed or not result.ok
    if failed:
        raise ExitCode(EXIT_FAILED)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; loopback unless you mean otherwise.",
)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--shape",
    type=click.Choice(["data", "images"]),
    default="data",
    show_default=True,
    help="Response shape: data[] + meta.usage, or images[] + seed + nsfw flags.",
)
@click.option(
    "--delivery",
    type=click.Choice(["url", "b64"]),
    default="url",
    show_default=True,
    help="Images by URL (served under /files/) or inline base64.",
)
@click.option(
    "--latency",
    default="0",
    show_default=True,
    help="Seconds before each answer: fixed (0.1) or a range (0.05-0.2).",
)
@click.option(
    "--fail-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of generations answered 500/502/503/504.",
)
@click.option("--rate-limit", help="Generations per second before 429 with Retry-After: 5/s.")
@click.option(
    "--truncate-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of downloads cut short under a full Content-Length.",
)
@click.option(
    "--slow-download",
    default=0.0,
    type=click.FloatRange(min=0),
    help="Seconds each download trickles over.",
)
@click.option(
    "--credits",
    type=click.FloatRange(min=0),
    help="Credit balance; 403 out of credits once spent (1 credit per megapixel).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the fault random source.")
@click.option("--access-log", is_flag=True, help="Log every request (slows the emulator).")
def emulator(
    host: str,
    port: int,
    latency: str,
    rate_limit: str | None,
    access_log: bool,
    **switches: Any,
) -> None:
    """Serve the emulator of the API in the foreground (Ctrl-C to stop).

    Any bearer key is accepted. Try it with curl:

    \b
      curl -s localhost:8000/v1/images/generations -H 'Authorization: Bearer x' \\
        -H 'Content-Type: application/json' -d '{"model": "flux-pro", "prompt": "a kettle"}'
    """
    from .emulator import EmulatorConfig, serve_forever
    from .runner import Rate

    low, _, high = latency.partition("-")
    try:
        span = (float(low), float(high or low))
    except ValueError:
        raise click.BadParameter(
            f"{latency!r} is not seconds or a range like 0.05-0.2", param_hint="--latency"
        ) from None
    limit = Rate.parse(rate_limit).per_second if rate_limit else None
    config = EmulatorConfig(latency=span, rate_limit=limit, **switches)
    serve_forever(config, host, port, access_log)


@cli.command()
@SPECS
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def check(specs: Sequence[Path], as_json: bool) -> None:
    """CI gate: is every request in the lock, unchanged, with its files intact? No network.

    Exit 0 when every spec is up to date; 1 when any request is new, changed (with the fields
    that changed), missing, corrupt, or in the lock but no longer in the spec.
    """
    from . import library
    from .compare import check as check_spec

    reports: list[Any] = []
    stale = False

    def work(path: Path) -> None:
        nonlocal stale
        report = check_spec(library.load_spec(path))
        stale = stale or not report.ok
        if as_json:
            reports.append(report.as_json())
            return
        if report.ok:
            click.echo(f"{path}: up to date ({report.requests} requests)")
            return
        summary = f"{len(report.findings) - report.gone} of {report.requests} requests are stale"
        if report.gone:
            summary += f"; {report.gone} in the lock no longer in the spec"
        click.echo(f"{path}: {summary}")
        for finding in report.findings:
            click.echo(f"  {finding.state:8}  {finding.id}: {finding.reason}")

    try:
        _each_spec(specs, work)
    finally:
        if as_json:
            first = next(iter(reports), None)
            click.echo(json.dumps(reports if len(specs) > 1 else first, indent=2))
    if stale:
        raise ExitCode(EXIT_INVALID)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--against",
    "ref",
    required=True,
    metavar="REF",
    help="A git revision (HEAD~1, main, a tag) or another lock file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff(spec: Path, ref: str, as_json: bool) -> None:
    """What changed in the spec's lock since REF: requests added, removed, and changed
    (with the fields that changed)."""
    from . import library
    from .compare import diff_locks, lock_at

    loaded = library.load_spec(spec)
    result = diff_locks(lock_at(loaded, ref), library.read_lock(loaded.lock_path))
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    if result.empty:
        click.echo(f"{loaded.lock_path}: no changes since {ref}")
        return
    for key in result.added:
        click.echo(f"added    {key}")
    for key in result.removed:
        click.echo(f"removed  {key}")
    for key, fields in result.changed.items():
        click.echo(f"changed  {key}: {', '.join(fields)}")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@WAIT
def merge(spec: Path, wait: float) -> None:
    """Combine the partial locks of `run --shard K/N` into the spec's lock.

    Exit 1 (and write nothing) when two partial locks record the same request differently;
    exit 2 when there is nothing to merge or a run holds the output folder.
    """
    from . import library
    from .shards import merge as merge_shards

    result = merge_shards(library.load_spec(spec), wait=wait)
    click.echo(f"{spec}: merged {len(result.merged)} partial locks, {result.requests} requests")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the page goes. Default: gallery.html in the output folder.",
)
@click.option("--rows", metavar="VAR", help="The variable down the grid.")
@click.option("--cols", metavar="VAR", help="The variable across the grid.")
@click.option("--png", is_flag=True, help="Also write a labelled contact sheet (PNG) beside it.")
@click.option(
    "--changed",
    metavar="REF",
    help="Show only requests changed since git revision REF, old beside new.",
)
def gallery(
    spec: Path,
    output: Path | None,
    rows: str | None,
    cols: str | None,
    png: bool,
    changed: str | None,
) -> None:
    """Write a static HTML page of the spec's images laid out on its grid's axes.

    One variable goes across (--cols), one down (--rows); the others become sections. Each
    image links to the full size and shows its name, seed, size and prompt. The page has no
    external assets and links to the images relatively: open it from disk or publish the
    folder as a CI artifact.
    """
    from . import library
    from .gallery import build_gallery

    loaded = library.load_spec(spec)
    result = build_gallery(
        loaded,
        library.validate(loaded),
        page=output,
        rows=rows,
        cols=cols,
        png=png,
        changed=changed,
    )
    click.echo(f"{result.page}: {result.images} images")
    if result.sheet:
        click.echo(f"{result.sheet}: contact sheet")


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the spec language, for editors.

    Save it beside your specs and name it on a spec's first line, and editors with the YAML
    language server complete and check the spec as you type:

    \b
      flux-pipeline schema > spec.schema.json
      # yaml-language-server: $schema=spec.schema.json
    """
    from .spec import spec_schema_json

    click.echo(spec_schema_json(), nl=False)


def main() -> None:
    """Entry point of the `flux-pipeline` console script."""
    cli()
