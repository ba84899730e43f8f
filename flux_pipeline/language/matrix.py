"""The combinations of a job's matrix: GitHub Actions semantics, plus axes read from files.

An axis is a list of values, or `{files: GLOB}` (one value per matching file: sorted paths
relative to the spec's folder), or `{rows: FILE}` (one value per row of a CSV, YAML or JSON
file, resolved like `cases_file`). A row is the axis's value, as a mapping, and its columns
are variables of the combination too, so `include`/`exclude` entries and templates can name
them. `exclude` is strict: an entry with a key that is no axis or row column, or that matches
no combination, is an error (GitHub ignores them, and every request is still made and paid).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..defaults import MAX_SPEC_REQUESTS
from ..errors import Problem, SpecInvalid, did_you_mean, format_combo
from .spec import Job, Spec, load_yaml
from .yaml_lines import read_text

ENTRIES = ("include", "exclude")


class Row(dict[str, Any]):
    """A row of a `{rows: FILE}` axis: the axis's value, whose columns are variables too."""

    __slots__ = ()


def columns(combo: Mapping[str, Any]) -> set[str]:
    """The row columns a combination holds as variables of their own."""
    return {c for v in combo.values() if isinstance(v, Row) for c in v}


def _flatten(combo: dict[str, Any]) -> dict[str, Any]:
    """A combination with its rows' columns as variables (an axis of that name wins)."""
    if not any(isinstance(v, Row) for v in combo.values()):
        return combo
    flat: dict[str, Any] = {}
    for value in combo.values():
        if isinstance(value, Row):
            flat.update(value)
    flat.update(combo)
    return flat


def matrix_combinations(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The combinations of a matrix, exactly as GitHub Actions computes them.

    `exclude` entries remove every combination they match (a partial match is enough) and
    apply first. Each `include` entry is then added to every original combination whose
    original values it does not overwrite (values added by an earlier include may be
    overwritten); an entry that fits no combination becomes a new one.
    """
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    include = list(matrix.get("include", ()))
    exclude = list(matrix.get("exclude", ()))
    if not axes:
        return [dict(entry) for entry in include]
    names = list(axes)
    combos = [
        _flatten(dict(zip(names, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]
    combos = [c for c in combos if not any(_matches(c, e) for e in exclude)]
    originals = [dict(c) for c in combos]
    extra: list[dict[str, Any]] = []
    for entry in include:
        fitted = False
        for combo, original in zip(combos, originals, strict=True):
            if all(original[k] == v for k, v in entry.items() if k in original):
                combo.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    return combos + extra


def _matches(combo: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(k in combo and combo[k] == v for k, v in entry.items())


_INT = re.compile(r"[-+]?(0|[1-9][0-9]{0,17})")  # a leading 0 (an id like 007) stays text
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _cell(text: str) -> Any:
    """A CSV cell by a plain rule: an integer or a decimal number is a number, `true` and
    `false` are booleans, anything else (`yes`, `007`, `1e5`) is the text as written."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return _BOOLS.get(text, text)


def read_cases_file(
    path: Path, file: str, line: int, max_rows: int = MAX_SPEC_REQUESTS
) -> list[dict[str, Any]]:
    """Rows of a CSV, YAML or JSON file as mappings: a regular file of at most 5 MB, and at
    most `max_rows` rows (counted while reading). Raises SpecInvalid on a bad file."""

    def fail(message: str, at: int | None = line, where: str = file) -> SpecInvalid:
        return SpecInvalid([Problem(message, file=where, line=at, path="cases_file")])

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".yaml", ".yml", ".json"):
        raise fail(f"cases_file must be .csv, .yaml, .yml or .json, not {path.name!r}")
    too_many = f"cases_file {path} has more than {max_rows:,} rows (--max-spec-requests)"
    if suffix != ".csv":
        data = load_yaml(path, what="cases")  # JSON is YAML
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise fail(f"cases_file {path} must hold a list of mappings")
        if len(data) > max_rows:
            raise fail(too_many)
        return [dict(r) for r in data]
    try:
        text = read_text(path, what="cases")
    except SpecInvalid as exc:
        raise fail(f"cases_file {path}: {exc.problems[0].message}") from None
    try:
        return _csv_rows(text, str(path), max_rows, too_many)
    except csv.Error as exc:
        raise fail(f"cannot read cases_file {path}: {exc}") from None
    except _BadRow as exc:
        raise fail(exc.message, exc.line if exc.where else line, exc.where or file) from None


class _BadRow(Exception):
    def __init__(self, message: str, line: int | None, where: str) -> None:
        self.message, self.line, self.where = message, line, where


def _csv_rows(text: str, where: str, max_rows: int, too_many: str) -> list[dict[str, Any]]:
    """A CSV's rows, each cell by the plain rule; _BadRow for a ragged row or one too many."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[dict[str, Any]] = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            message = f"row {reader.line_num} has a different number of columns than the header"
            raise _BadRow(message, reader.line_num, where)
        if len(rows) == max_rows:
            raise _BadRow(too_many, None, "")  # at the spec's line
        rows.append({k: _cell(v) for k, v in row.items()})
    return rows


MAX_GLOB_FOLDERS = 10_000  # folders a `{files: GLOB}` axis may look through


def files_axis(folder: Path, pattern: str) -> list[str]:
    """The values of a `{files: GLOB}` axis: the files the glob matches inside the spec's
    folder, as sorted POSIX paths relative to it. ValueError if it matches none.

    The tree is walked once, whatever the glob (`**` repeated costs nothing more), through at
    most MAX_GLOB_FOLDERS folders; `{jpg,png}` offers alternatives, as shells do."""
    if Path(pattern).is_absolute() or ".." in PurePosixPath(pattern).parts:
        raise ValueError(f"files: {pattern!r} must stay inside the spec's folder")
    root = folder.resolve()
    matches = glob_regex(pattern).fullmatch
    parts = PurePosixPath(pattern).parts
    fixed = list(itertools.takewhile(lambda p: not any(c in p for c in "*?[{"), parts[:-1]))
    # Only where the glob can match: below its fixed folders, no deeper than its parts.
    depth = None if "**" in parts else len(parts) - len(fixed) - 1
    start = root.joinpath(*fixed)
    found = []
    for visited, (here, folders, files) in enumerate(os.walk(start), start=1):
        if visited > MAX_GLOB_FOLDERS:
            raise ValueError(
                f"files: {pattern!r} looks through more than {MAX_GLOB_FOLDERS:,} folders; "
                "narrow it (a folder instead of **)"
            )
        base = Path(here).relative_to(root).as_posix()
        if depth is not None and len(Path(here).relative_to(start).parts) >= depth:
            folders.clear()
        for name in files:
            relative = name if base == "." else f"{base}/{name}"
            path = Path(here, name)
            if matches(relative) and path.is_file() and path.resolve().is_relative_to(root):
                found.append(relative)
    if not found:
        raise ValueError(f"files: {pattern!r} matches no file in {folder}")
    return sorted(found)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as one regular expression over POSIX paths: `*` and `?` within a name,
    `[...]` a class, `{a,b}` alternatives, a `**` part any number of folders (repeated `**`
    parts are one)."""
    parts: list[str] = []
    for part in PurePosixPath(pattern).parts:
        if part == "**":
            if not parts or parts[-1] != "**":
                parts.append("**")
        else:
            parts.append(part)
    out = ""
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            out += "(?:.*)" if last else "(?:[^/]+/)*"
        else:
            out += _name_regex(part) + ("" if last else "/")
    return re.compile(out, re.DOTALL)


def _name_regex(part: str) -> str:
    out, i = "", 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and "]" in part[i + 2 :]:
            end = part.index("]", i + 2)
            body = part[i + 1 : end].replace("\\", "\\\\")
            out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = end
        elif c == "{" and "}" in part[i:]:
            end = part.index("}", i)
            out += "(?:" + "|".join(re.escape(a) for a in part[i + 1 : end].split(",")) + ")"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return out


def rows_axis(
    folder: Path, relative: str, file: str, line: int, max_rows: int = MAX_SPEC_REQUESTS
) -> list[Row]:
    """The values of a `{rows: FILE}` axis: the file's rows (ValueError if it has none)."""
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ValueError(f"rows: {relative!r} is outside the spec's folder")
    rows = [Row(r) for r in read_cases_file(target, file, line, max_rows)]
    if not rows:
        raise ValueError(f"rows: {relative!r} has no rows")
    return rows


def usable_matrix(spec: Spec, job: Job) -> tuple[Mapping[str, Any] | None, list[Problem]]:
    """The job's matrix with each `{files: GLOB}` and `{rows: FILE}` axis made its values,
    less any include or exclude entry that is wrong, and the problems found (at the spec's
    lines): the rest of the job can still be expanded and checked, so that one `validate`
    reports every problem. (None, problems) when an axis cannot be made at all."""
    if job.matrix is None:
        return None, []
    matrix = dict(job.matrix)
    for axis, value in job.matrix.items():
        if isinstance(value, dict) and axis not in ENTRIES:
            try:
                if "files" in value:
                    matrix[axis] = files_axis(spec.folder, value["files"])
                else:
                    at = (str(spec.path), job.line, spec.max_requests)
                    matrix[axis] = rows_axis(spec.folder, value["rows"], *at)
            except SpecInvalid as exc:  # a rows file that cannot be read
                return None, list(exc.problems)
            except ValueError as exc:
                line = job.matrix_lines.get(axis, job.line)
                where = f"matrix.{axis}"
                return None, [Problem(str(exc), str(spec.path), line, job.name, path=where)]
    wrong = list(entry_problems(matrix))
    problems = [
        Problem(
            message,
            str(spec.path),
            job.matrix_lines.get(kind, job.line),
            job.name,
            path=f"matrix.{kind}",
        )
        for kind, _, message in wrong
    ]
    dropped = {id(entry) for _, entry, _ in wrong}
    for kind in ENTRIES:
        if kind in matrix:
            matrix[kind] = [e for e in matrix[kind] if id(e) not in dropped]
    return matrix, problems


def entry_problems(matrix: Mapping[str, Any]) -> Iterable[tuple[str, Any, str]]:
    """(include|exclude, the entry, message) for each entry that names no axis or row column, or (an
    exclude) matches no combination; for include, only a key or value that is a near miss of
    one (an include may add variables and combinations: GitHub Actions semantics)."""
    axes = {k: list(v) for k, v in matrix.items() if k not in ENTRIES}
    known: dict[str, list[Any]] = {}
    for axis, values in axes.items():
        known[axis] = values
        for row in (v for v in values if isinstance(v, Row)):
            for column, cell in row.items():
                known.setdefault(column, []).append(cell)
    for kind in ENTRIES:
        for entry in matrix.get(kind, ()):
            for key, value in entry.items():
                message = _entry_key_problem(kind, key, value, known)
                if message:
                    yield kind, entry, f"{kind} {format_combo(entry)}: {message}"
                    break
            else:
                if kind == "exclude" and not _satisfiable(entry, axes):
                    yield kind, entry, f"exclude {format_combo(entry)} matches no combination"


def _entry_key_problem(kind: str, key: str, value: Any, known: Mapping[str, list[Any]]) -> str:
    if key not in known:
        hint = did_you_mean(key, known)
        if kind == "exclude" or hint:
            return f"{key!r} is no axis or row column{hint or ' (axes: ' + ', '.join(known) + ')'}"
        return ""
    if value in known[key]:
        return ""
    same_but_case = [v for v in known[key] if str(v).lower() == str(value).lower()]
    if same_but_case:
        return f"{key} has no value {value!r} (did you mean {same_but_case[0]!r}?)"
    return ""


def _satisfiable(entry: Mapping[str, Any], axes: Mapping[str, list[Any]]) -> bool:
    """Whether some combination of the axes matches `entry` (without making them all)."""
    for values in axes.values():
        rows = [v for v in values if isinstance(v, Row)]
        if rows:  # the entry's keys that are this axis's columns must fit one row
            keys = [k for k in entry if any(k in r for r in rows) and k not in axes]
            if keys and not any(all(r.get(k) == entry[k] for k in keys) for r in rows):
                return False
    return all(entry[k] in axes[k] for k in entry if k in axes)
