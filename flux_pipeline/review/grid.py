"""The gallery's grid: which of a spec's variables go across, which down, and which make
sections (an X/Y plot), with every request's lock entry in its cell."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..language.expansion import Request
from ..language.spec import Spec
from ..store.lock import Entry, Output

MISSING = "—"


@dataclass(frozen=True, slots=True)
class Cell:
    """A request in the grid, with its lock entry if it has one."""

    request: Request
    entry: Entry | None

    @property
    def outputs(self) -> tuple[Output, ...]:
        """Every image of the request (num_images), as the lock records them."""
        return tuple(self.entry.outputs) if self.entry else ()


@dataclass(frozen=True, slots=True)
class Grid:
    """One section of the page: cells on a rows x cols grid."""

    title: str
    rows_var: str | None
    cols_var: str | None
    rows: tuple[Any, ...]
    cols: tuple[Any, ...]
    cells: Mapping[tuple[Any, Any], tuple[Cell, ...]]


def natural_key(text: Any) -> list[Any]:
    """Sorts `gear-64` before `gear-128`: digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def down_axes(spec: Spec) -> frozenset[str]:
    """The axes a spec reads from files (`{files: GLOB}`, `{rows: FILE}`): they go down the
    grid by default, one photo or row per line, as the README says they work alike."""
    return frozenset(
        axis
        for job in spec.jobs
        for axis, value in (job.matrix or {}).items()
        if isinstance(value, Mapping) and ({"files", "rows"} & set(value))
    )


def _value(combo: Mapping[str, Any], var: str | None) -> Any:
    if var is None:
        return ""
    value = combo.get(var, MISSING)
    if value is MISSING:  # a column of a row axis
        rows = [v for v in combo.values() if isinstance(v, Mapping) and var in v]
        value = rows[0][var] if rows else MISSING
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
    *,
    down: frozenset[str] = frozenset(),
) -> list[Grid]:
    """Cells grouped by job, then by the values of the axes that are neither rows nor cols
    (unless that leaves about one image per section, as rows of cases do). `down`: axes that
    go down by default (a spec's file axes, `down_axes`)."""
    grids: list[Grid] = []
    by_job: dict[str, list[Request]] = {}
    for request in requests:
        by_job.setdefault(request.job, []).append(request)
    _check_axes(by_job.values(), rows, cols)
    for members in by_job.values():
        axes = _axes(members)
        for wanted in (rows, cols):  # a row column asked for by name lays out too
            if wanted and wanted not in axes and len({_value(r.vars, wanted) for r in members}) > 1:
                axes.append(wanted)
        row_var, col_var, others = _choose(members, axes, rows, cols, down)
        if len({tuple(_value(r.vars, a) for a in others) for r in members}) * 2 > len(members):
            others = []
        sections: dict[tuple[Any, ...], list[Request]] = {}
        for request in members:
            key = tuple(_value(request.vars, a) for a in others)
            sections.setdefault(key, []).append(request)
        for key, section in sections.items():
            title = _title(section) + "".join(
                f"  ·  {a} = {v}" for a, v in zip(others, key, strict=True)
            )
            row_values = tuple(dict.fromkeys(_value(r.vars, row_var) for r in section))
            col_values = tuple(dict.fromkeys(_value(r.vars, col_var) for r in section))
            cells: dict[tuple[Any, Any], tuple[Cell, ...]] = {}
            for r in section:
                at = (_value(r.vars, row_var), _value(r.vars, col_var))
                cells[at] = (*cells.get(at, ()), Cell(r, entries.get(r.id)))
            grids.append(Grid(title, row_var, col_var, row_values, col_values, cells))
    return grids


def _choose(
    members: Sequence[Request],
    axes: list[str],
    rows: str | None,
    cols: str | None,
    down: frozenset[str] = frozenset(),
) -> tuple[str | None, str | None, list[str]]:
    """The rows, the columns and the section variables of a job's grid. A file axis (a row
    axis, whose values are mappings, or a `files:` axis) makes the rows by default; a row
    column asked for stands for its axis."""
    first = members[0].vars
    row_axes = [a for a in axes if isinstance(first.get(a), Mapping)]
    file_axes = [a for a in axes if a in down or a in row_axes]
    if file_axes and rows is None and cols is None:
        rows = file_axes[0]

    def parent(name: str | None) -> str | None:
        return next((a for a in row_axes if name is not None and name in first[a]), None)

    pool = [a for a in axes if a not in {parent(rows), parent(cols)}]
    col_var = cols if cols in pool else next((a for a in pool if a != rows), None)
    row_var = rows if rows in pool and rows != col_var else None
    row_var = row_var or next((a for a in pool if a != col_var), None)
    return row_var, col_var, [a for a in pool if a not in (col_var, row_var)]


_EXPRESSION = re.compile(r"\{\{-?\s*([^}|]+?)\s*(?:\|[^}]*)?-?\}\}")


def _title(section: Sequence[Request]) -> str:
    """A section's title: its job's name as the spec writes it, each expression shown as the
    variable it uses (`{{ photo | stem }}-{{ edit | slug }}`: `‹photo›-‹edit›`), and how
    many requests it has."""
    count = len(section)
    name = _EXPRESSION.sub(lambda m: f"‹{m.group(1).strip()}›", section[0].job)
    return f"{name} ({count} request{'s' if count != 1 else ''})"


def _check_axes(jobs: Iterable[Sequence[Request]], rows: str | None, cols: str | None) -> None:
    """ConfigError for a --rows or --cols that is no variable of any request."""
    known: dict[str, None] = {}
    for members in jobs:
        for request in members:
            known.update(dict.fromkeys(request.vars))
            for value in request.vars.values():
                if isinstance(value, Mapping):  # a row axis: its columns may lay out too
                    known.update(dict.fromkeys(value))
    for option, name in (("--rows", rows), ("--cols", cols)):
        if name is not None and name not in known:
            hint = did_you_mean(name, known)
            listed = ", ".join(known) or "none: the spec has no axes"
            raise ConfigError(f"{option} {name!r} is no axis of the spec{hint} (axes: {listed})")
