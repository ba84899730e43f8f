"""The gallery: a static HTML page, and a PNG contact sheet, of a spec's outputs laid out on
its grid's axes (an X/Y plot: one variable across, one down, the others as sections).

The page needs no server and no external asset: inline style, relative links to the images.
It shows thumbnails (made once per image and cached by its hash under `.thumbs/` in the
output folder) that link to the full image, each with its name, seed and size, and the
prompt. It is written outside the assets by default (`OUTPUT/.flux-cache/gallery/`, the
`--changed` page to a file of its own); `self_contained` embeds the thumbnails, so a page
committed, copied or uploaded from CI shows every image wherever it is opened.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..language.assets import has_assets
from ..language.expansion import Request
from ..language.spec import Spec
from ..provider.inputs import references
from ..store.atomic import write_atomic
from ..store.delivery import Assets, assess
from ..store.lock import Output, read_lock
from ..store.writer_lock import FOLDER, THUMBS, refuse_links
from . import git
from .compare import diff_locks, diff_spec, lock_at
from .grid import Cell, Grid, down_axes, layout, natural_key

PROGRESS_EVERY = 100  # images between two progress lines
GALLERY = "gallery"  # the default page's folder, under the output folder's .flux-cache/
THUMB = 320  # longest side of a thumbnail, in pixels


@dataclass(frozen=True, slots=True)
class GalleryResult:
    """What `build_gallery` wrote: the page, the contact sheet, the grids and images shown."""

    page: Path
    sheet: Path | None
    grids: tuple[Grid, ...]
    images: int


# ----- thumbnails ------------------------------------------------------------------------------


def thumbnail(source: Path, sha256: str, folder: Path) -> Path:
    """A small JPEG of an image, made once and cached under `folder` by the image's hash."""
    target = folder / f"{sha256[:24]}.jpg"
    if target.exists():
        return target
    from PIL import Image

    with Image.open(source) as image:
        image.thumbnail((THUMB, THUMB))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=82)
    write_atomic(target, out.getvalue())
    return target


@dataclass(frozen=True, slots=True)
class _Links:
    """How the page addresses files: relative to its folder, and thumbnails either made
    beside the output folder (`.thumbs/`) or, self-contained, embedded in the page."""

    page_folder: Path
    thumbs: Path
    embed: bool = False

    def href(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.page_folder)).as_posix()

    def thumb(self, source: Path, sha256: str) -> str:
        return self.src(thumbnail(source, sha256, self.thumbs))

    def src(self, thumb: Path) -> str:
        if self.embed:
            return "data:image/jpeg;base64," + base64.b64encode(thumb.read_bytes()).decode()
        return self.href(thumb)


# ----- the page --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Figure:
    """One image as the page shows it (href None: not generated)."""

    id: str
    seed: int
    prompt: str
    href: str | None = None
    thumb: str | None = None
    size: str = ""
    inputs: tuple[_Input, ...] = ()  # an edit's input images, shown beside it
    picked: str = ""  # the asset slot this image is the pick of


@dataclass(frozen=True, slots=True)
class _Input:
    path: str
    href: str
    thumb: str


def _inputs(request: Request, spec_folder: Path, links: _Links) -> tuple[_Input, ...]:
    """The local input images of an edit that are still on disk, as the page links them."""
    shown = []
    for reference in references(request.body):
        source = spec_folder / reference.path
        if source.is_file():
            thumb = links.thumb(source, reference.sha256)
            shown.append(_Input(reference.path, links.href(source), thumb))
    return tuple(shown)


def _figure(cell: Cell, output: Output | None, base: Path, links: _Links) -> _Figure:
    request = cell.request
    prompt = str(request.body.get("prompt", ""))
    inputs = _inputs(request, base, links)
    if output is None or not (base / output.path).is_file():
        return _Figure(request.id, request.seed, prompt, inputs=inputs)
    image = base / output.path
    return _Figure(
        Path(output.path).stem,
        request.seed,
        prompt,
        links.href(image),
        links.thumb(image, output.sha256),
        f"{output.width}x{output.height}",
        inputs,
    )


def _section(grid: Grid, figure: Callable[[Cell, Output | None], _Figure]) -> dict[str, Any]:
    rows = [
        {
            "value": row,
            "cells": [
                [
                    figure(c, output)
                    for c in grid.cells.get((row, col), ())
                    for output in c.outputs or (None,)
                ]
                for col in grid.cols
            ],
        }
        for row in grid.rows
    ]
    return {
        "title": grid.title,
        "rows_var": grid.rows_var,
        "cols_var": grid.cols_var,
        "cols": grid.cols,
        "rows": rows,
    }


def _template() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flux_pipeline.review", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return environment.get_template("gallery.html.j2")


def render_page(
    spec: Spec,
    grids: Sequence[Grid],
    links: _Links,
    changes: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    assets: Assets | None = None,
) -> tuple[str, int]:
    """The gallery page's HTML (the packaged template, autoescaped) and how many generated
    images it shows (input photos are not counted; old-beside-new pairs count once);
    `progress(done, total)` is told of every `PROGRESS_EVERY` images (thumbnails are the slow
    part)."""
    base = spec.lock_path.parent
    refuse_links(spec.output)
    total = sum(len(c.outputs) or 1 for g in grids for cells in g.cells.values() for c in cells)
    counter = itertools.count(1)

    picked = {s.source.path: s.slot.name for s in (assets.slots if assets else ()) if s.source}

    def figure(cell: Cell, output: Output | None) -> _Figure:
        made = _figure(cell, output, base, links)
        if output is not None and base / output.path in picked:
            made = dataclasses.replace(made, picked=picked[base / output.path])
        done = next(counter)
        if progress is not None and (done % PROGRESS_EVERY == 0 or done == total):
            progress(done, total)
        return made

    sections = [_section(grid, figure) for grid in grids]
    shown = sum(
        figure.href is not None
        for section in sections
        for row in section["rows"]
        for figures in row["cells"]
        for figure in figures
    )
    if changes is not None:
        shown = len(changes["rows"])
    text = _template().render(
        title=spec.name,
        shown=shown,
        source=spec.path.name,
        grids=sections,
        changes=changes,
        assets=_asset_rows(spec, assets, links) if assets else [],
    )
    return text, shown


def _asset_rows(spec: Spec, assets: Assets, links: _Links) -> list[Any]:
    """Each asset file as the page lists it: where it is, what it was made from, its state."""
    rows = []
    states = {s.slot.name: s for s in assets.slots}
    for file in assets.files:
        target = spec.lock_path.parent / file.path
        record = assets.recorded.get(file.path)
        thumb = None
        if record is not None and target.is_file():
            thumb = links.thumb(target, record.sha256)
        slot = states[file.slot]
        rows.append(
            {
                "path": file.path,
                "href": links.href(target) if target.is_file() else None,
                "thumb": thumb,
                "slot": file.slot,
                "source": slot.source.candidate if slot.source else slot.pick.candidate,
                "state": str(file.status) if slot.source else str(slot.status),
                "reason": file.reason or slot.reason,
            }
        )
    return rows


# ----- changes since a revision ----------------------------------------------------------------


def _old_image(spec: Spec, ref: str, output: Output, thumbs: Path) -> Path | None:
    """A thumbnail of an image as it was at git revision `ref` (it may be gone from disk)."""
    cached = thumbs / f"{output.sha256[:24]}.jpg"
    if cached.exists():
        return cached
    try:
        data = git.show(spec.lock_path.parent / output.path, ref)
    except git.GitError:
        return None
    if data is None:
        return None
    source = thumbs / f".old-{output.sha256[:24]}"
    write_atomic(source, data)
    try:
        return thumbnail(source, output.sha256, thumbs)
    finally:
        source.unlink(missing_ok=True)


def changes(
    spec: Spec, ref: str, links: _Links, requests: Sequence[Request] = ()
) -> dict[str, Any]:
    """Old and new images side by side for the requests changed since `ref`; when the lock
    has not changed since, the spec's edits not run yet (old image beside the new prompt)."""
    old, new = lock_at(spec, ref), read_lock(spec.lock_path)
    diff = diff_locks(old, new)
    rows: list[dict[str, Any]] = []
    found = {"ref": ref, "rows": rows, "pending": False}
    if old is None or new is None:
        return found
    bodies = {r.id: r.body for r in requests}
    if diff.empty and requests:
        diff, found["pending"] = diff_spec(spec, old), True
    refuse_links(spec.output)
    base = spec.lock_path.parent
    for key in sorted(diff.changed, key=natural_key):
        fields = diff.changed[key]
        before = old.entries[key].outputs[0]
        then = _old_image(spec, ref, before, links.thumbs)
        after = None if found["pending"] else new.entries[key].outputs[0]
        now = links.thumb(base / after.path, after.sha256) if after else None
        prompt = (bodies.get(key) if found["pending"] else new.entries[key].body) or {}
        rows.append(
            {
                "id": key,
                "fields": ", ".join(fields),
                "before_prompt": old.entries[key].body.get("prompt", ""),
                "after_prompt": prompt.get("prompt", ""),
                "before": links.src(then) if then else None,
                "after": now,
                "href": links.href(base / after.path) if after else None,
            }
        )
    found["added"] = ", ".join(diff.added) or "none"
    found["removed"] = ", ".join(diff.removed) or "none"
    return found


# ----- the whole job ---------------------------------------------------------------------------


def build_gallery(
    spec: Spec,
    requests: Sequence[Request],
    *,
    page: Path | None = None,
    axes: tuple[str | None, str | None] = (None, None),
    png: bool = False,
    changed: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    self_contained: bool = False,
) -> GalleryResult:
    """Write the gallery page (and with `png`, a contact sheet beside it): by default
    `OUTPUT/.flux-cache/gallery/gallery.html` (`gallery-changed.html` for `changed`), never
    among the images; `axes`: the variables down and across (--rows, --cols);
    `self_contained` embeds the thumbnails in the page."""
    lock = read_lock(spec.lock_path)
    if lock is None:
        raise ConfigError(f"{spec.path}: no lock yet; run the spec first")
    name = "gallery-changed.html" if changed else "gallery.html"
    page = page or spec.output / FOLDER / GALLERY / name
    links = _Links(page.parent, spec.output / THUMBS, self_contained)
    grids = layout(requests, lock.entries, *axes, down=down_axes(spec))
    if changed:  # just the changed requests, old beside new
        text, shown = render_page(spec, [], links, changes(spec, changed, links, requests))
    else:
        assets = assess(spec, requests, lock) if has_assets(spec) else None
        text, shown = render_page(spec, grids, links, progress=progress, assets=assets)
    write_atomic(page, text.encode())
    sheet_path = None
    if png:
        sheet_path = page.with_suffix(".png")
        out = io.BytesIO()
        from .sheet import contact_sheet

        contact_sheet(spec, grids).save(out, format="PNG")
        write_atomic(sheet_path, out.getvalue())
    return GalleryResult(page, sheet_path, tuple(grids), shown)
