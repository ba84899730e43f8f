"""The gallery: a static HTML page, and a PNG contact sheet, of a spec's outputs laid out on
its grid's axes (an X/Y plot: one variable across, one down, the others as sections).

The page is self-contained: inline style, relative links to the images, no server and no
external assets. It shows thumbnails (made once per image and cached by its hash under
`.thumbs/` in the output folder) that link to the full image, lazily loaded, each with its
name, seed and size, and the prompt on hover and below.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import git
from .atomic import write_atomic
from .compare import diff_locks, lock_at
from .errors import ConfigError
from .expansion import Request
from .inputs import references
from .lock import Entry, Output, read_lock
from .spec import Spec

THUMB = 320  # longest side of a thumbnail, in pixels
SHEET_CELL = 256
MISSING = "—"


@dataclass(frozen=True, slots=True)
class Cell:
    """A request in the grid, with its lock entry if it has one."""

    request: Request
    entry: Entry | None

    @property
    def output(self) -> Output | None:
        return self.entry.outputs[0] if self.entry and self.entry.outputs else None


@dataclass(frozen=True, slots=True)
class Grid:
    """One section of the page: cells on a rows x cols grid."""

    title: str
    rows_var: str | None
    cols_var: str | None
    rows: tuple[Any, ...]
    cols: tuple[Any, ...]
    cells: Mapping[tuple[Any, Any], tuple[Cell, ...]]


@dataclass(frozen=True, slots=True)
class GalleryResult:
    """What `build_gallery` wrote: the page, the contact sheet, the grids and images shown."""

    page: Path
    sheet: Path | None
    grids: tuple[Grid, ...]
    images: int


def _value(combo: Mapping[str, Any], var: str | None) -> Any:
    if var is None:
        return ""
    value = combo.get(var, MISSING)
    if isinstance(value, Mapping):  # a row of a {rows: FILE} axis: its cells
        return " · ".join(map(str, value.values()))
    return value if isinstance(value, str | int | float | bool) else str(value)


def _axes(members: Sequence[Request]) -> list[str]:
    """The variables every request of a job has and that take more than one value, in the
    order the spec gives them (an include's extra variable is a detail, not an axis)."""
    names = dict.fromkeys(k for r in members for k in r.vars)
    return [
        name
        for name in names
        if all(name in r.vars for r in members) and len({_value(r.vars, name) for r in members}) > 1
    ]


def layout(
    requests: Sequence[Request],
    entries: Mapping[str, Entry],
    rows: str | None = None,
    cols: str | None = None,
) -> list[Grid]:
    """Cells grouped by job, then by the values of the axes that are neither rows nor cols
    (unless that leaves about one image per section, as rows of cases do)."""
    grids: list[Grid] = []
    by_job: dict[str, list[Request]] = {}
    for request in requests:
        by_job.setdefault(request.job, []).append(request)
    for job, members in by_job.items():
        axes = _axes(members)
        # A row axis (its values are mappings) makes the rows; the next axis the columns.
        row_axes = [a for a in axes if isinstance(members[0].vars.get(a), Mapping)]
        if row_axes and rows is None and cols is None:
            rows = row_axes[0]
            cols = next((a for a in axes if a != rows), None)
        col_var = cols if cols in axes else (axes[0] if axes else None)
        rest = [a for a in axes if a != col_var]
        row_var = rows if rows in rest else (rest[0] if rest else None)
        others = [a for a in axes if a not in (col_var, row_var)]
        if len({tuple(_value(r.vars, a) for a in others) for r in members}) * 2 > len(members):
            others = []
        sections: dict[tuple[Any, ...], list[Request]] = {}
        for request in members:
            key = tuple(_value(request.vars, a) for a in others)
            sections.setdefault(key, []).append(request)
        for key, section in sections.items():
            title = job + "".join(f"  ·  {a} = {v}" for a, v in zip(others, key, strict=True))
            row_values = tuple(dict.fromkeys(_value(r.vars, row_var) for r in section))
            col_values = tuple(dict.fromkeys(_value(r.vars, col_var) for r in section))
            cells: dict[tuple[Any, Any], tuple[Cell, ...]] = {}
            for r in section:
                at = (_value(r.vars, row_var), _value(r.vars, col_var))
                cells[at] = (*cells.get(at, ()), Cell(r, entries.get(r.id)))
            grids.append(Grid(title, row_var, col_var, row_values, col_values, cells))
    return grids


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


@dataclass(frozen=True, slots=True)
class _Input:
    path: str
    href: str
    thumb: str


def _inputs(
    request: Request, spec_folder: Path, page_folder: Path, thumbs: Path
) -> tuple[_Input, ...]:
    """The local input images of an edit that are still on disk, as the page links them."""
    shown = []
    for reference in references(request.body):
        source = spec_folder / reference.path
        if source.is_file():
            thumb = thumbnail(source, reference.sha256, thumbs)
            shown.append(
                _Input(reference.path, _href(source, page_folder), _href(thumb, page_folder))
            )
    return tuple(shown)


def _href(path: Path, page_folder: Path) -> str:
    return Path(os.path.relpath(path, page_folder)).as_posix()


def _figure(cell: Cell, base: Path, page_folder: Path, thumbs: Path) -> _Figure:
    request, output = cell.request, cell.output
    prompt = str(request.body.get("prompt", ""))
    inputs = _inputs(request, base, page_folder, thumbs)
    if output is None or not (base / output.path).is_file():
        return _Figure(request.id, request.seed, prompt, inputs=inputs)
    image = base / output.path
    thumb = thumbnail(image, output.sha256, thumbs)
    return _Figure(
        request.id,
        request.seed,
        prompt,
        _href(image, page_folder),
        _href(thumb, page_folder),
        f"{output.width}x{output.height}",
        inputs,
    )


def _section(grid: Grid, base: Path, page_folder: Path, thumbs: Path) -> dict[str, Any]:
    rows = [
        {
            "value": row,
            "cells": [
                [_figure(c, base, page_folder, thumbs) for c in grid.cells.get((row, col), ())]
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
        loader=jinja2.PackageLoader("flux_pipeline", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return environment.get_template("gallery.html.j2")


def render_page(
    spec: Spec, grids: Iterable[Grid], page: Path, changes: dict[str, Any] | None = None
) -> tuple[str, int]:
    """The gallery page's HTML (the packaged template, autoescaped) and how many images it
    shows."""
    base = spec.lock_path.parent
    thumbs = spec.output / ".thumbs"
    sections = [_section(grid, base, page.parent, thumbs) for grid in grids]
    shown = sum(
        figure.href is not None
        for section in sections
        for row in section["rows"]
        for figures in row["cells"]
        for figure in figures
    )
    text = _template().render(
        title=spec.name, shown=shown, source=spec.path.name, grids=sections, changes=changes
    )
    return text, shown


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


def changes(spec: Spec, ref: str, page: Path) -> dict[str, Any]:
    """Old and new images side by side for the requests changed since `ref`."""
    old, new = lock_at(spec, ref), read_lock(spec.lock_path)
    diff = diff_locks(old, new)
    rows: list[dict[str, Any]] = []
    found = {"ref": ref, "rows": rows}
    if diff.empty or old is None or new is None:
        return found
    thumbs = spec.output / ".thumbs"
    base = spec.lock_path.parent
    for key, fields in diff.changed.items():
        before, after = old.entries[key].outputs[0], new.entries[key].outputs[0]
        then = _old_image(spec, ref, before, thumbs)
        now = thumbnail(base / after.path, after.sha256, thumbs)
        rows.append(
            {
                "id": key,
                "fields": ", ".join(fields),
                "before": _href(then, page.parent) if then else None,
                "after": _href(now, page.parent),
                "href": _href(base / after.path, page.parent),
            }
        )
    found["added"] = ", ".join(diff.added) or "none"
    found["removed"] = ", ".join(diff.removed) or "none"
    return found


# ----- the contact sheet -----------------------------------------------------------------------


def contact_sheet(spec: Spec, grids: Sequence[Grid]) -> Any:
    """One labelled PNG of every grid: a title band, column labels, then rows of cells."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    label_w, title_h, head_h, caption_h = 160, 32, 24, 22
    width = label_w + SHEET_CELL * max((len(g.cols) for g in grids), default=1)
    height = sum(title_h + head_h + len(g.rows) * (SHEET_CELL + caption_h) for g in grids)
    sheet = Image.new("RGB", (width, max(height, 1)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    base = spec.lock_path.parent
    y = 0
    for grid in grids:
        draw.rectangle((0, y, width, y + title_h), fill=(40, 40, 40))
        draw.text((8, y + 8), grid.title, fill=(255, 255, 255), font=font)
        y += title_h
        for i, col in enumerate(grid.cols):
            label = f"{grid.cols_var} = {col}" if grid.cols_var else ""
            draw.text((label_w + i * SHEET_CELL + 6, y + 4), label, fill=(30, 30, 30), font=font)
        y += head_h
        for row in grid.rows:
            if grid.rows_var:
                draw.text((6, y + 6), f"{grid.rows_var} = {row}", fill=(30, 30, 30), font=font)
            for i, col in enumerate(grid.cols):
                here = grid.cells.get((row, col), ())
                cell = here[0] if here else None
                x = label_w + i * SHEET_CELL
                output = cell.output if cell else None
                if cell and output and (base / output.path).is_file():
                    with Image.open(base / output.path) as image:
                        image.thumbnail((SHEET_CELL - 8, SHEET_CELL - 8))
                        sheet.paste(image.convert("RGB"), (x + 4, y + 4))
                elif cell:
                    draw.rectangle(
                        (x + 4, y + 4, x + SHEET_CELL - 4, y + SHEET_CELL - 4), fill=(225, 225, 225)
                    )
                if cell:
                    draw.text(
                        (x + 6, y + SHEET_CELL + 2),
                        cell.request.id[:30],
                        fill=(60, 60, 60),
                        font=font,
                    )
            y += SHEET_CELL + caption_h
    return sheet


# ----- the whole job ---------------------------------------------------------------------------


def build_gallery(
    spec: Spec,
    requests: Sequence[Request],
    *,
    page: Path | None = None,
    rows: str | None = None,
    cols: str | None = None,
    png: bool = False,
    changed: str | None = None,
) -> GalleryResult:
    """Write the gallery page (and with `png`, a contact sheet beside it)."""
    lock = read_lock(spec.lock_path)
    if lock is None:
        raise ConfigError(f"{spec.path}: no lock yet; run the spec first")
    page = page or spec.output / "gallery.html"
    grids = layout(requests, lock.entries, rows, cols)
    if changed:  # just the changed requests, old beside new
        text, shown = render_page(spec, [], page, changes(spec, changed, page))
    else:
        text, shown = render_page(spec, grids, page)
    write_atomic(page, text.encode())
    sheet_path = None
    if png:
        sheet_path = page.with_suffix(".png")
        out = io.BytesIO()
        contact_sheet(spec, grids).save(out, format="PNG")
        write_atomic(sheet_path, out.getvalue())
    return GalleryResult(page, sheet_path, tuple(grids), shown)
