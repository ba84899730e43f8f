"""The shared remote cache's commands: `push` (what the lock names that the remote lacks)
and `pull` (the lock's images from the remote, with no request)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_FAILED, ConfigError, plural
from .app import Settings, cli, each_spec, pass_settings
from .config import configured_remote
from .params import SPECS, WAIT, remote_options


def _progress(verb: str) -> Any:
    """A line on stderr at each tenth of the work (called from the remote's threads)."""

    def said(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            click.echo(f"{verb}: {done}/{total}", err=True)

    return said


def _remote(specs: Sequence[Path], options: dict[str, Any]) -> Any:
    remote = configured_remote(specs, options)
    if remote is None:
        raise ConfigError(
            "no remote cache: pass --remote URL, set FLUX_PIPELINE_REMOTE, or `remote` in "
            "[tool.flux-pipeline]"
        )
    return remote


@cli.command()
@SPECS
@remote_options
@pass_settings
def push(settings: Settings, /, specs: Sequence[Path], **options: Any) -> None:
    """Upload every request the specs' locks name that the remote cache lacks (its entry and
    images, create-only; looked up by key, never listed), so no other machine pays for it.

    Exit 0; 1 on an invalid spec; 2 when the remote cannot be used (or is read-only); 3 when
    some uploads failed.
    """
    from ..store.lock import read_lock
    from ..store.remote import push_entries

    remote = _remote(specs, options)
    if remote.read_only:
        raise ConfigError("--remote-read-only: push writes to the remote")
    failed = False

    def work(path: Path) -> None:
        nonlocal failed
        spec = settings.load_spec(path)
        lock = read_lock(spec.lock_path)
        entries = list(lock.entries.values()) if lock else []
        pushed, problems = push_entries(
            entries, spec.lock_path.parent, remote, 8, _progress("push")
        )
        click.echo(f"{path}: pushed {plural(pushed, 'request')} of {len(entries)} to {remote.url}")
        for problem in problems:
            click.echo(f"  failed {problem}")
        failed = failed or bool(problems)

    each_spec(specs, work)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@SPECS
@remote_options
@WAIT
@pass_settings
def pull(settings: Settings, /, specs: Sequence[Path], wait: float, **options: Any) -> None:
    """Bring the images the specs' locks name from the remote cache, with no request: a
    repository that commits only its locks gets its images back. Every image is checked
    against the lock's sha256 before it is written; images already in place are left alone.

    Exit 0 when every image is in place; 1 on an invalid spec; 2 when the remote cannot be
    used; 3 when the remote lacks some (run the spec to make them).
    """
    from ..store.remote import pull_images
    from ..store.writer_lock import hold_output_folder

    remote = _remote(specs, options)
    missing = False

    def work(path: Path) -> None:
        nonlocal missing
        spec = settings.load_spec(path)
        with hold_output_folder(
            spec.output, command="pull", spec=spec.path, lock_path=spec.lock_path, wait=wait
        ):
            pulled, lacking = pull_images(spec, remote, 8, _progress("pull"))
        click.echo(f"{path}: pulled {plural(pulled, 'image')} from {remote.url}")
        for key in lacking:
            click.echo(f"  not in the remote: {key} (`flux-pipeline run {path}` makes it)")
        for problem in remote.rejected:
            click.echo(f"  refused {problem}")
        missing = missing or bool(lacking)

    each_spec(specs, work)
    if missing:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.group()
def remote() -> None:
    """Look after the shared remote cache (`remote gc`). Exit 0."""


@remote.command()
@click.option(
    "--keep",
    "keep_locks",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="LOCK",
    help="A lock whose requests stay (repeatable).",
)
@click.option(
    "--keep-ref",
    multiple=True,
    metavar="REF",
    help="Every *.lock.json in this git revision stays (repeatable: main, a release tag).",
)
@click.option("--yes", is_flag=True, help="Delete without asking (CI).")
@remote_options
def gc(keep_locks: Sequence[Path], keep_ref: Sequence[str], yes: bool, **options: Any) -> None:
    """Delete from the remote cache every request no named lock reaches. It lists what it
    would delete first and asks, unless --yes. Only what you name is kept: name every branch
    and release whose images must stay reachable (the one place the remote is listed).

    Exit 0; 2 when the remote cannot be used or nothing is named to keep.
    """
    from ..store.remote_gc import collect_garbage, reachable

    if not keep_locks and not keep_ref:
        raise ConfigError("name what to keep: --keep LOCK or --keep-ref REF (nothing is assumed)")
    found = _remote([Path(".")], options)
    keep = reachable(keep_locks, keep_ref)
    doomed = collect_garbage(found, keep, delete=False)
    click.echo(f"{found.url}: {plural(len(keep), 'request')} kept by what you named")
    if not doomed:
        click.echo("nothing to delete")
        return
    bodies = sorted({key.split("/")[2] for key in doomed})
    for body in bodies[:20]:
        click.echo(f"  would delete {body}")
    if len(bodies) > 20:
        click.echo(f"  ... and {len(bodies) - 20} more")
    click.echo(f"{plural(len(doomed), 'object')} of {plural(len(bodies), 'request')} to delete")
    if not yes and not click.confirm("delete them?", default=False):
        raise click.exceptions.Exit(0)
    collect_garbage(found, keep, delete=True)
    click.echo(f"deleted {plural(len(doomed), 'object')}")
