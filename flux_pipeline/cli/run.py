"""The commands that talk to an API: `run` (generate, record, keep the lock), and `emulator`
(the API's emulator in the foreground)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..defaults import API_KEY_ENV, DEFAULT_BASE_URL
from ..errors import EXIT_FAILED, Terminated
from .app import Settings, cli, each_spec, pass_settings
from .config import configured_remote, prices, project_settings
from .params import (
    REMOTE_KEYS,
    SPECS,
    WAIT,
    RateType,
    SecondsRangeType,
    ShardType,
    complete_request_names,
    remote_options,
)
from .project import hint_gitignore

if TYPE_CHECKING:
    from ..provider.pacing import Rate


@cli.command()
@SPECS
@click.option(
    "--concurrency",
    "-j",
    default=4,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Requests in flight at most; fewer while the provider answers 429 (the run adapts).",
)
@click.option(
    "--rate",
    type=RateType(),
    help="Requests per second or minute for all workers together: 10/s, 100/m.",
)
@click.option(
    "--retries",
    default=3,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Retries of a request on 408, 409, 5xx and failures to connect (429s wait instead, "
    "see --max-wait). A request sent without an answer is not resent: see --retry-timeouts.",
)
@click.option(
    "--retry-timeouts",
    is_flag=True,
    help="Also retry a request whose answer never came (a read timeout, a connection dropped "
    "after sending). The provider may have run and billed each such send.",
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
    shell_complete=complete_request_names,
    help="Run only requests whose name matches (repeatable).",
)
@click.option("--force", is_flag=True, help="Redo requests even if they are up to date.")
@click.option(
    "--force-assets",
    is_flag=True,
    help="Overwrite asset files changed by hand since they were delivered (otherwise they "
    "are kept, named, and the run exits 3).",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Delete the images of requests no longer in the spec (recorded by the lock or the "
    "cache, unchanged since, inside the output folder), and the asset files the spec no "
    "longer declares (unchanged since delivered); each is named.",
)
@click.option(
    "--max-credits",
    type=click.FloatRange(min=0),
    help="Spend at most this many credits: each request's expected cost is reserved before "
    "it is sent, so requests in flight count (see the README's budget rule).",
)
@click.option(
    "--partial-budget",
    is_flag=True,
    help="When the plan's estimate passes --max-credits, send what fits under the cap "
    "instead of stopping before the first request.",
)
@click.option(
    "--price",
    "price",
    multiple=True,
    metavar="MODEL=CREDITS",
    help="What MODEL really costs, in credits per image (repeatable; over "
    "[tool.flux-pipeline.prices] in pyproject.toml): --max-credits counts it where answers "
    "do not state their cost.",
)
@click.option(
    "--max-requests",
    type=click.IntRange(min=0),
    help="Send at most this many requests (those in flight count).",
)
@click.option("--dry-run", is_flag=True, help="Print the bodies that would be sent, send nothing.")
@click.option(
    "--repair-lock",
    is_flag=True,
    help="First drop the lock's damaged entries (their images stay in the cache).",
)
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
    type=ShardType(),
    help="Do shard K of N (chosen by request name) into a partial lock; see merge.",
)
@click.option(
    "--transport",
    type=click.Choice(["aiohttp", "httpx"]),
    default="aiohttp",
    show_default=True,
    help="HTTP transport under httpx.",
)
@click.option(
    "--max-wait",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="How long one request may be answered 429 (too many requests) before it fails; "
    "429s slow the whole run down and do not count against --retries.",
)
@WAIT
@remote_options
@click.option(
    "--drain-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="After Ctrl-C or SIGTERM, how long the requests in flight (already paid for) may "
    "take to finish and store their images; a second signal abandons them at once.",
)
@pass_settings
def run(
    settings: Settings,
    /,
    specs: Sequence[Path],
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
    failed, the lock could not be saved, or an asset file changed by hand was kept (see
    --force-assets), 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM); finished
    work is kept in every case.

    Jobs that declare `assets:` have their picked images delivered after the run, for no
    credit: each asset file made (format from its extension, `resize`) and recorded in the
    lock; one made before from the same image is left as it is (see `pick`, `deliver`).
    """
    from .. import library
    from ..language.validation import check_together
    from ..provider.redaction import clean_key
    from ..running.scope import todo, unmatched_only
    from .reports import dry_run_lines

    remote = {k: options.pop(k) for k in REMOTE_KEYS}
    run_options = _run_options(specs, options)
    loaded = []

    def load(path: Path) -> None:
        spec = settings.load_spec(path)
        loaded.append((spec, library.validate(spec)))

    each_spec(specs, load, lambda: check_together([spec for spec, _ in loaded]))
    unmatched_only(run_options.only, [r.id for _, requests in loaded for r in requests])
    if dry_run:
        for spec, requests in loaded:
            for line in dry_run_lines(todo(spec, requests, run_options)):
                click.echo(line)
        return
    key = clean_key(os.environ.get(API_KEY_ENV, ""), API_KEY_ENV)
    if _all_up_to_date(loaded, run_options):
        return  # nothing to send: no emulator, no network library
    # An emulator's images must never reach a team's cache: an emulator run only reads it.
    found = configured_remote(specs, remote, read_only=emulator)
    run_options = dataclasses.replace(run_options, remote=found)
    if emulator:
        from ..emulator import EmulatorServer

        with EmulatorServer() as server:
            _run_all(loaded, server.url, key or "emulator", run_options)
    else:
        _run_all(loaded, base_url, key, run_options)


def _run_options(specs: Sequence[Path], options: dict[str, Any]) -> Any:
    """RunOptions from the command's options and the project's prices."""
    from ..running.options import RunOptions

    settings_found, source = project_settings(specs[0].parent if specs else Path("."))
    given = options.pop("price")
    found, _ = prices(settings_found, source, given)
    return RunOptions(**{**options, "only": tuple(options["only"]), "prices": found})


def _all_up_to_date(loaded: Sequence[tuple[Any, Any]], options: Any) -> bool:
    """When every spec has nothing to do, say so as a run would, and True."""
    from ..running.scope import nothing_to_do
    from .reports import run_summary

    results = [nothing_to_do(spec, requests, options) for spec, requests in loaded]
    done = [result for result in results if result is not None]
    if len(done) < len(results):
        return False
    for result in done:
        click.echo(run_summary(result))
    if not all(result.ok for result in done):  # an asset file changed by hand was kept
        raise click.exceptions.Exit(EXIT_FAILED)
    return True


def _run_all(loaded: Sequence[tuple[Any, Any]], base_url: str, key: str, options: Any) -> None:
    from ..running.runner import run as run_spec
    from ..store.writer_lock import FOLDER
    from .progress import Progress
    from .reports import run_summary

    failed = False
    hinted = False
    for spec, requests in loaded:
        fresh = not (spec.output / FOLDER).exists()
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
        click.echo(run_summary(result))
        if fresh and not hinted:
            hinted = hint_gitignore(spec.output / FOLDER)
        if result.interrupted:
            raise Terminated(result.interrupted)  # the other specs are not started
        failed = failed or not result.ok
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; loopback unless you mean otherwise.",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
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
    type=SecondsRangeType(),
    help="Seconds before each answer: fixed (0.1) or a range (0.05-0.2).",
)
@click.option(
    "--fail-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of generations answered 500/502/503/504.",
)
@click.option(
    "--rate-limit",
    type=RateType(),
    help="Generations per second before 429 with Retry-After: 5/s.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    help="Generations at once before 429, like a provider's cap on active tasks.",
)
@click.option(
    "--no-retry-after",
    "send_retry_after",
    is_flag=True,
    default=True,
    flag_value=False,
    help="Send 429s without Retry-After (clients must back off on their own).",
)
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
    help="Credit balance; 403 out of credits once spent.",
)
@click.option(
    "--price-factor",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Charge this times the price table's figure (1 credit per started megapixel), "
    "like a provider whose prices are not the table's.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the fault random source.")
@click.option("--access-log", is_flag=True, help="Log every request (slows the emulator).")
def emulator(
    host: str,
    port: int,
    latency: tuple[float, float],
    rate_limit: Rate | None,
    access_log: bool,
    **switches: Any,
) -> None:
    """Serve the emulator of the API in the foreground (Ctrl-C to stop).

    Any bearer key is accepted. Try it with curl:

    \b
      curl -s localhost:8000/v1/images/generations -H 'Authorization: Bearer x' \\
        -H 'Content-Type: application/json' -d '{"model": "flux-pro", "prompt": "a kettle"}'

    Exit 0 when stopped with Ctrl-C; 2 on bad usage.
    """
    from ..emulator import EmulatorConfig, serve_forever

    limit = rate_limit.per_second if rate_limit else None
    config = EmulatorConfig(latency=latency, rate_limit=limit, **switches)
    serve_forever(config, host, port, access_log)
