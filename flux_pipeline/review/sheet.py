"""The gallery's contact sheet: one labelled PNG of every grid, labels wrapped to fit; each
row as tall as its tallest image (no gap under wide images), an edit's input photo inset."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..language.spec import Spec
from ..provider.inputs import references
from ..store.lock import Output
from .grid import Cell, Grid

SHEET_CELL = 256  # pixels of a cell, an image in it
INSET = 64  # longest side of an edit's input photo, inset in its image's corner
#: Characters of the default font at size 14 that fit a cell, and the row labels' column.
CELL_CHARS = 34
LABEL_CHARS = 20
LINE_H = 17


def _lines(text: str, width: int, most: int = 3) -> list[str]:
    """`text` wrapped to `width` characters, at most `most` lines (the last one marked cut)."""
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=True) or [""]
    if len(lines) > most:
        lines = [*lines[: most - 1], lines[most - 1][: width - 1] + "…"]
    return lines


def contact_sheet(spec: Spec, grids: Sequence[Grid]) -> Any:
    """One labelled PNG of every grid: a title band, column labels, then rows of cells, each
    cell every image of its requests side by side; labels wrap instead of being cut."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    label_w, title_h, caption_h = 160, 32, 3 * LINE_H + 4

    def span(grid: Grid, col: Any) -> int:  # images across, the most of any row
        return (
            max(
                (sum(len(c.outputs) or 1 for c in grid.cells.get((r, col), ())) for r in grid.rows),
                default=1,
            )
            or 1
        )

    widths = [label_w + SHEET_CELL * sum(span(g, c) for c in g.cols) for g in grids]
    head_h = [
        LINE_H * max((len(_col_label(g, c, span(g, c))) for c in g.cols), default=1) + 8
        for g in grids
    ]
    height = sum(
        title_h + h + sum(_row_height(g, r) + caption_h for r in g.rows)
        for g, h in zip(grids, head_h, strict=True)
    )
    width = max(widths, default=label_w + SHEET_CELL)
    sheet = Image.new("RGB", (width, max(height, 1)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    base = spec.lock_path.parent
    y = 0
    for grid, head in zip(grids, head_h, strict=True):
        draw.rectangle((0, y, width, y + title_h), fill=(40, 40, 40))
        draw.text((8, y + 8), grid.title, fill=(255, 255, 255), font=font)
        y += title_h
        x = label_w
        for col in grid.cols:
            for k, line in enumerate(_col_label(grid, col, span(grid, col))):
                draw.text((x + 6, y + 4 + k * LINE_H), line, fill=(30, 30, 30), font=font)
            x += SHEET_CELL * span(grid, col)
        y += head
        for row in grid.rows:
            tall = _row_height(grid, row)
            _draw_row(sheet, draw, font, grid, row, (label_w, y, tall), base, span)
            y += tall + caption_h
    return sheet


def _thumb_size(width: int, height: int) -> tuple[int, int]:
    """The size an image of `width` x `height` takes in a cell (fitted, aspect kept)."""
    scale = min((SHEET_CELL - 8) / max(width, 1), (SHEET_CELL - 8) / max(height, 1), 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _row_height(grid: Grid, row: Any) -> int:
    """A row's height: its tallest image, as the lock records sizes (a box if none)."""
    heights = [
        _thumb_size(o.width, o.height)[1]
        for col in grid.cols
        for cell in grid.cells.get((row, col), ())
        for o in cell.outputs
    ]
    return max(heights, default=SHEET_CELL - 8) + 8


def _draw_row(
    sheet: Any,
    draw: Any,
    font: Any,
    grid: Grid,
    row: Any,
    at: tuple[int, int, int],
    base: Path,
    span: Callable[[Grid, Any], int],
) -> None:
    """One row of the sheet (`at`: x, y, its height): its label, then every image of each of
    its cells."""
    start, y, tall = at
    if grid.rows_var:
        label = _lines(f"{grid.rows_var} = {row}", LABEL_CHARS, most=12)
        for k, line in enumerate(label):
            draw.text((6, y + 6 + k * LINE_H), line, fill=(30, 30, 30), font=font)
    for col in grid.cols:
        x = start
        for cell in grid.cells.get((row, col), ()):
            for output in cell.outputs or (None,):
                _paste(sheet, draw, font, (x, y, tall), cell, output, base)
                x += SHEET_CELL
        start += SHEET_CELL * span(grid, col)


def _paste(
    sheet: Any,
    draw: Any,
    font: Any,
    at: tuple[int, int, int],
    cell: Cell,
    output: Output | None,
    base: Path,
) -> None:
    """One image of a cell (a grey box if it is missing), an edit's input photo inset in its
    corner, and its name right below, wrapped."""
    from PIL import Image

    x, y, tall = at
    if output is not None and (base / output.path).is_file():
        with Image.open(base / output.path) as image:
            image.thumbnail((SHEET_CELL - 8, SHEET_CELL - 8))
            sheet.paste(image.convert("RGB"), (x + 4, y + 4))
    else:
        draw.rectangle((x + 4, y + 4, x + SHEET_CELL - 4, y + tall - 4), fill=(225, 225, 225))
    for reference in references(cell.request.body)[:1]:
        if (base / reference.path).is_file():
            with Image.open(base / reference.path) as photo:
                photo.thumbnail((INSET, INSET))
                draw.rectangle(
                    (x + 6, y + 6, x + 9 + photo.width, y + 9 + photo.height), fill="white"
                )
                sheet.paste(photo.convert("RGB"), (x + 8, y + 8))
    name = Path(output.path).stem if output else cell.request.id
    for k, line in enumerate(_lines(name, CELL_CHARS)):
        draw.text((x + 6, y + tall + 2 + k * LINE_H), line, fill=(60, 60, 60), font=font)


def _col_label(grid: Grid, col: Any, span: int) -> list[str]:
    if not grid.cols_var:
        return [""]
    return _lines(f"{grid.cols_var} = {col}", CELL_CHARS * span)
