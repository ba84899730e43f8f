"""The asset commands: `pick` (choose a slot's candidate, in SPEC.picks.yaml) and `deliver`
(make the picked images into their asset files, with no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_FAILED, ConfigError, plural
from .app import Settings, cli, each_spec, pass_settings
from .params import WAIT


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("slot", required=False)
@click.argument("candidate", required=False)
@click.option("--list", "listing", is_flag=True, help="Show every slot: candidates, pick, state.")
@click.option("--clear", is_flag=True, help="Remove SLOT's pick, rejections and note.")
@click.option(
    "--reject",
    multiple=True,
    metavar="CANDIDATE",
    help="Mark a candidate of SLOT rejected (repeatable; rejecting the pick un-picks it).",
)
@click.option("--note", help="Why: kept with SLOT's pick in the picks file.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print the slots as JSON.")
@pass_settings
def pick(
    settings: Settings,
    /,
    spec: Path,
    slot: str | None,
    candidate: str | None,
    listing: bool,
    as_json: bool,
    **decision: Any,
) -> None:
    """Choose which candidate an asset slot delivers: SPEC SLOT CANDIDATE.

    A slot is one asset of a job's `assets:` (one per value of its `per:` variables); its
    candidates are its requests' images, named by request (NAME:N for the Nth image of a
    request that makes several). The pick is written to SPEC.picks.yaml beside the lock,
    with the request's body hash and the image's sha256, so a pick whose request changes is
    reported stale instead of moving to a new image. Commit it; the next `run` (or
    `deliver`) makes the asset files. `pick SPEC --list` shows every slot.

    Exit 0; 1 on an invalid spec or picks file; 2 for an unknown slot or candidate, or a
    candidate not generated yet.
    """
    from .. import library
    from .reports import slots_text

    def work(path: Path) -> None:
        loaded = settings.load_spec(path)
        if listing or slot is None:
            found = library.assets(loaded, every=True)
            if as_json:
                click.echo(json.dumps({"specs": [_assets_json(found)]}, indent=2))
            else:
                click.echo(slots_text(found))
            return
        if not (candidate or decision["clear"] or decision["reject"] or decision["note"]):
            raise ConfigError("say what to do: a CANDIDATE, --reject, --note or --clear")
        picks = library.pick(loaded, slot, candidate, **decision)
        decided = picks.get(slot)
        said = f"picked {decided.candidate}" if decided.candidate else "no pick"
        if decision["clear"]:
            said = "cleared"
        click.echo(f"{picks.path}: slot {slot}: {said}")

    each_spec([spec], work)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite asset files changed by hand since they were delivered (or never "
    "delivered by flux-pipeline).",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Delete the asset files the spec no longer declares, if unchanged since delivered.",
)
@WAIT
@pass_settings
def deliver(settings: Settings, spec: Path, force: bool, prune: bool, wait: float) -> None:
    """Make every picked slot's asset files that are missing or out of date. No network, no
    key, no credit: for machines that only deliver (`run` delivers too, after generating).

    Each file is the picked image made into the asset's format (from its extension) and
    size (`resize`, `fit`), written atomically and recorded in the lock. A file made before
    from the same image and transform is left as it is; one changed by hand is kept, named,
    and the command exits 3, unless --force. A stale pick (its request changed since it was
    picked) delivers nothing: its files stay as they are until it is picked again.

    Exit 0 when every file is delivered; 1 on an invalid spec or picks file; 2 if another
    run holds the output folder; 3 when a file changed by hand was kept.
    """
    from .. import library

    refused = False

    def work(path: Path) -> None:
        nonlocal refused
        loaded = settings.load_spec(path)
        delivery = library.deliver(loaded, force=force, prune=prune, wait=wait)
        lines = delivery.lines()
        for line in lines:
            click.echo(f"{path}: {line}")
        if not lines:
            files = plural(len(delivery.assets.files), "asset file")
            click.echo(f"{path}: {files}, up to date")
        refused = refused or bool(delivery.refused)

    each_spec([spec], work)
    if refused:
        raise click.exceptions.Exit(EXIT_FAILED)


def _assets_json(found: Any) -> dict[str, Any]:
    return {"spec": found.spec.name, "path": str(found.spec.path), **found.as_json()}


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve on; anything but loopback lets others on the network reach the "
    "page (they still need the printed URL's token).",
)
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port (default: any free).")
@click.option("--no-open", is_flag=True, help="Print the URL; do not open a browser.")
@pass_settings
def review(settings: Settings, /, spec: Path, host: str, port: int, no_open: bool) -> None:
    """Serve a local page to compare each slot's candidates and pick with the keyboard.

    One slot per row (the spec's asset slots, or each combination's variants), candidates
    side by side with model, seed and what differs; `1`-`9` pick, `j`/`k` move between
    slots, arrows between candidates, `space` zooms, `x` rejects, `u` undoes, `?` shows the
    keys. Each choice is written at once to SPEC.picks.yaml (commit it); delivering the asset
    files stays `run`'s (or `deliver`'s) job. While a run of the spec works, its new images
    appear on the page. The URL carries a random token every request needs. Ctrl-C stops.

    Exit 0 when stopped with Ctrl-C; 1 on an invalid spec or picks file; 2 if the port is taken.
    """
    import secrets
    import socket
    import webbrowser

    import uvicorn

    from .. import library
    from ..review.server import create_app

    specs = []

    def load(path: Path) -> None:  # the spec is valid before a port is taken
        specs.append(settings.load_spec(path))
        library.validate(specs[-1])

    each_spec([spec], load)
    loaded = specs[0]
    token = secrets.token_urlsafe(24)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/?token={token}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: others on the network can reach it", err=True)
    click.echo(f"review of {spec}: {url}  (Ctrl-C stops)")
    if not no_open:
        webbrowser.open(url)
    config = uvicorn.Config(
        create_app(loaded, token=token), log_level="warning", timeout_graceful_shutdown=1
    )
    uvicorn.Server(config).run(sockets=[listener])
