"""The commands that read specs and locks without the network: validate, plan, check, diff,
merge, gallery and schema. Each parses its options, calls one library function and prints
its result (`reports`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_INVALID, LockError, SpecInvalid, plural
from .app import Settings, cli, each_spec, pass_settings
from .config import configured_remote, prices, project_settings
from .params import SPECS, WAIT, remote_options


@cli.command()
@SPECS
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print every spec's result and problems (file, line, job, combo, path, message) as "
    "JSON on stdout, for editors and CI annotations.",
)
@pass_settings
def validate(settings: Settings, specs: Sequence[Path], as_json: bool) -> None:
    """Load, expand and validate specs against the API schema. No network.

    Exit 0 when every spec is valid, 1 when any is not; every problem is listed with its
    file:line, job, combination and field.
    """
    from .. import library
    from ..language.validation import check_together

    loaded = []
    report: list[dict[str, Any]] = []

    def work(path: Path) -> None:
        stem = path.name.removesuffix(".yaml").removesuffix(".yml")
        report.append(
            {"spec": stem, "path": str(path), "valid": False, "requests": 0, "problems": []}
        )
        spec = settings.load_spec(path)
        report[-1]["spec"] = spec.name
        requests = library.validate(spec)
        loaded.append(spec)
        report[-1].update(valid=True, requests=len(requests))
        if not as_json:
            click.echo(f"{path}: valid, {plural(len(requests), 'request')}")

    if not as_json:
        each_spec(specs, work, lambda: check_together(loaded))
        return
    problems: list[dict[str, Any]] = []

    def failed(spec: str, exc: SpecInvalid | LockError) -> None:
        if isinstance(exc, SpecInvalid):
            problems.extend(
                {"spec": spec, **asdict(p), "combo": dict(p.combo)} for p in exc.problems
            )
        else:
            problems.append({"spec": spec, "file": spec, "line": None, "message": str(exc)})

    each_spec(specs, work, lambda: check_together(loaded), failed)
    for entry in report:
        entry["problems"] = [
            {k: v for k, v in p.items() if k != "spec"}
            for p in problems
            if p["spec"] in (entry["path"], "")
        ]
        entry["valid"] = entry["valid"] and not entry["problems"]
    click.echo(json.dumps({"specs": report, "problems": len(problems)}, indent=2))
    if problems:
        raise click.exceptions.Exit(EXIT_INVALID)


@cli.command()
@SPECS
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
@click.option(
    "--max-credits",
    type=click.FloatRange(min=0),
    help="Mark the requests a run under this cap would not send (with --partial-budget).",
)
@remote_options
@pass_settings
def plan(
    settings: Settings,
    /,
    specs: Sequence[Path],
    as_json: bool,
    max_credits: float | None,
    **options: Any,
) -> None:
    """Show the requests specs make: size, seed, images, and state against the lock.

    States: new (not in the lock), changed (request differs from the lock), missing or corrupt
    (an output file is gone or altered), moved (`output:` changed: the run moves the images),
    unusable (billed before for an answer with no image: `run --force` sends it again), up to
    date. Credits are estimated from your prices ([tool.flux-pipeline.prices] in
    pyproject.toml) or the price table, scaled by what the lock recorded for the same model;
    a figure no recorded answer backs is marked "(estimate)". A request whose images the
    cache of earlier outputs holds, verified, costs nothing ("0 (cache)"), as does one the
    shared remote cache has, when one is configured ("0 (remote)": a lookup by key each).
    Lock entries no longer in the spec are counted: the next run drops them from the lock. A
    size marked "?" is not stated by the documents: the image's own is recorded.

    Exit 0 (stale requests are not a failure: `check` is the gate); 1 on an invalid spec.
    """
    from .. import library
    from ..running.scope import over_budget
    from ..store.remote import with_remote
    from .reports import assets_table, plan_table

    plans: list[dict[str, Any]] = []
    remote = configured_remote(specs, options)

    def work(path: Path) -> None:
        found, source = project_settings(path.parent)
        known, _ = prices(found, source, ())
        result = library.plan(settings.load_spec(path), prices=known)
        if remote is not None:
            result = with_remote(result, remote)
        over = frozenset(over_budget(result.items, max_credits) if max_credits is not None else ())
        assets = library.assets(result.spec, [i.request for i in result.items])
        if as_json:
            plans.append({**result.as_json(), **assets.as_json(), "over_budget": sorted(over)})
        else:
            click.echo(plan_table(result, over))
            if assets.slots:
                click.echo(assets_table(assets))

    try:
        each_spec(specs, work)
    finally:
        if as_json:
            click.echo(json.dumps({"specs": plans}, indent=2))


@cli.command()
@SPECS
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--strict",
    is_flag=True,
    help="Fail too on images the API delivered other than asked (another size or format; "
    "kept and recorded in the lock), and on images in the output folder no lock entry names.",
)
@click.option(
    "--allow-unpicked",
    is_flag=True,
    help="Pass asset slots that have candidates but no pick yet (a repository still "
    "exploring); stale picks and changed asset files still fail.",
)
@remote_options
@pass_settings
def check(
    settings: Settings,
    /,
    specs: Sequence[Path],
    as_json: bool,
    strict: bool,
    allow_unpicked: bool,
    **options: Any,
) -> None:
    """CI gate: is every request in the lock, unchanged, with its files intact, and every
    asset picked and delivered? No network.

    Exit 0 when every spec is up to date; 1 when any request is new, changed (with the fields
    that changed), missing, corrupt, or in the lock but no longer in the spec (with --strict,
    also when an image is not as asked, or an image in the output folder is named by no lock
    entry: a warning without it); 1 too for an asset slot with candidates but no pick
    (unless --allow-unpicked), a stale pick (its request changed since it was picked), and
    an asset file missing or changed since it was delivered.
    """
    from ..review.compare import check as check_spec
    from .reports import check_text

    reports: list[Any] = []
    stale = False
    remote = configured_remote(specs, options)

    def work(path: Path) -> None:
        nonlocal stale
        report = check_spec(
            settings.load_spec(path), strict=strict, allow_unpicked=allow_unpicked, remote=remote
        )
        stale = stale or not report.ok
        if as_json:
            reports.append(report.as_json())
        else:
            click.echo(check_text(report))

    try:
        each_spec(specs, work)
    finally:
        if as_json:
            up_to_date = all(r["up_to_date"] for r in reports) and len(reports) == len(specs)
            click.echo(json.dumps({"specs": reports, "up_to_date": up_to_date}, indent=2))
    if stale:
        raise click.exceptions.Exit(EXIT_INVALID)


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
@pass_settings
def diff(settings: Settings, spec: Path, ref: str, as_json: bool) -> None:
    """What changed in the spec's lock since REF: requests added, removed, and changed
    (with the fields that changed; "input photos/mug.jpg changed" for an edited input). When
    the lock has not changed since REF, what the spec asks for now (edits not run yet) is
    compared with REF's lock instead; the first line says which is compared.

    Exit 0 (differences are not a failure); 1 on an invalid spec or an unreadable lock or REF.
    """
    from .. import library
    from ..review.compare import diff_locks, diff_spec, lock_at
    from .reports import diff_text

    loaded = settings.load_spec(spec)
    before = lock_at(loaded, ref)
    result = diff_locks(before, library.read_lock(loaded.lock_path))
    compared = "lock"
    if result.empty:  # not run since REF: what the spec asks for now, against REF's lock
        result, compared = diff_spec(loaded, before), "spec"
    if as_json:
        where = {"spec": loaded.name, "path": str(spec), "against": ref, "compared": compared}
        click.echo(json.dumps({**where, **result.as_json()}, indent=2))
    else:
        what = str(loaded.lock_path) if compared == "lock" else f"{spec} (not run yet)"
        click.echo(f"comparing {what} with {ref}")
        click.echo(diff_text(result, what, ref))


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@WAIT
@click.option("--partial", is_flag=True, help="Merge even if some shards have no partial lock yet.")
@pass_settings
def merge(settings: Settings, spec: Path, wait: float, partial: bool) -> None:
    """Combine the partial locks of `run --shard K/N` into the spec's lock.

    Each partial lock records the requests its shard was made from. Exit 0 when merged
    (each partial lock is listed, then removed). Exit 1, and write
    nothing, when one was made from another version of the spec, when a shard has no partial
    lock (unless --partial), or when two record the same request differently; exit 2 when
    there is nothing to merge or a run holds the output folder.
    """
    from ..store.shards import merge as merge_shards

    result = merge_shards(settings.load_spec(spec), wait=wait, partial=partial)
    merged = plural(len(result.merged), "partial lock")
    click.echo(f"{spec}: merged {merged}, {plural(result.requests, 'request')}")
    for path, count in result.merged:
        click.echo(f"  {path.name}: {plural(count, 'request')}")
    if result.missing:
        shards = ", ".join(map(str, result.missing))
        click.echo(f"  without shard {shards} (--partial): their requests are not in the lock")
    for line in result.delivery.lines() if result.delivery else ():
        click.echo(f"  {line}")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the page goes. Default: OUTPUT/.flux-cache/gallery/gallery.html (or "
    "gallery-changed.html with --changed), away from the images you commit.",
)
@click.option("--rows", metavar="VAR", help="The variable down the grid.")
@click.option("--cols", metavar="VAR", help="The variable across the grid.")
@click.option("--png", is_flag=True, help="Also write a labelled contact sheet (PNG) beside it.")
@click.option(
    "--self-contained",
    is_flag=True,
    help="Embed the thumbnails in the page: committed, copied or uploaded from CI, it shows "
    "every image wherever it is opened (the full-size links need the images beside it).",
)
@click.option(
    "--changed",
    metavar="REF",
    help="Show only requests changed since git revision REF, old beside new.",
)
@pass_settings
def gallery(
    settings: Settings,
    /,
    spec: Path,
    output: Path | None,
    rows: str | None,
    cols: str | None,
    png: bool,
    changed: str | None,
    self_contained: bool,
) -> None:
    """Write a static HTML page of the spec's images laid out on its grid's axes.

    One variable goes across (--cols), one down (--rows; by default a `files:` or `rows:`
    axis); the others become sections, one per job. Each image links to the full size and
    shows its name, seed, size and prompt; an asset slot's pick is marked and the asset files
    are listed. The page has no external assets and links to the images relatively; with
    --self-contained it carries its thumbnails and works anywhere.

    Exit 0; 1 on an invalid spec; 2 when the spec has no lock yet, or --rows/--cols names no
    axis of the spec.
    """
    from .. import library
    from ..review.gallery import build_gallery

    loaded = settings.load_spec(spec)
    result = build_gallery(
        loaded,
        library.validate(loaded),
        page=output,
        axes=(rows, cols),
        png=png,
        changed=changed,
        self_contained=self_contained,
        progress=lambda done, total: click.echo(f"gallery: {done}/{total} images", err=True),
    )
    click.echo(f"{result.page}: {result.images} images")
    if result.sheet:
        click.echo(f"{result.sheet}: contact sheet")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print each model's request schema as JSON.")
def models(as_json: bool) -> None:
    """List the FLUX models the tool knows: sizes, input images, request fields.

    Every model is read from the provider's OpenAPI document shipped with the tool, with the
    rules the documents state only in prose (sizes in multiples of 32, preset sizes, input
    image counts); `validate` checks each request against exactly this.

    Exit 0.
    """
    from ..provider.registry import registry
    from .reports import models_table

    if as_json:
        schemas = {name: m.request_schema for name, m in registry().items()}
        click.echo(json.dumps(schemas, indent=2))
        return
    click.echo(models_table(registry().values()))
    click.echo(f"{len(registry())} models")


@cli.command()
@click.option("--lock", "of_lock", is_flag=True, help="Print the lock file's schema instead.")
def schema(of_lock: bool) -> None:
    """Print the JSON Schema of the spec language, for editors (or of the lock, --lock).

    Save it beside your specs and name it on a spec's first line, and editors with the YAML
    language server complete and check the spec as you type:

    \b
      flux-pipeline schema > spec.schema.json
      # yaml-language-server: $schema=spec.schema.json

    Exit 0.
    """
    if of_lock:
        from ..store.lock import lock_schema

        click.echo(json.dumps(lock_schema(), indent=2))
        return
    from ..language.spec import spec_schema_json

    click.echo(spec_schema_json(), nl=False)
