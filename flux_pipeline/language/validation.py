"""Validation of expanded requests: each body against its model's schema, and the names.

Names become file paths under the output folder, so a name must be relative, stay inside the
folder, use only characters that are safe on every common file system, and differ from every
other output's name even on a case-insensitive file system.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import Problem, SpecInvalid, format_combo
from ..provider.images import EXTENSIONS
from ..provider.registry import check_body, get_model
from .assets import asset_slots
from .expansion import Request, expand_collect
from .spec import Spec

MAX_NAME_CHARS = 200
SAFE_INTEGER = 2**53
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file path under the output folder, or None if it can."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"the name is {len(name)} characters long, more than {MAX_NAME_CHARS}"
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name):
        return "the name must be a relative path (no leading /, drive letter or backslash)"
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            return "the name must not contain empty, '.' or '..' path segments"
        if not _SEGMENT.fullmatch(segment):
            return (
                "the name may use only letters, digits, '.', '_', '-' and '/' between folders, "
                "and each part must start with a letter or digit (the slug filter helps)"
            )
        if _RESERVED.fullmatch(segment):
            return f"{segment!r} is a reserved file name on Windows"
    return None


def output_stems(request: Request) -> list[str]:
    """The file names (without extension) a request's images get: NAME, or NAME-K for K > 1."""
    model = get_model(request.model)
    count = model.num_images(request.body) if model else 1
    if count == 1:
        return [request.id]
    return [f"{request.id}-{k}" for k in range(1, count + 1)]


def check_requests(spec: Spec, requests: Sequence[Request]) -> list[Problem]:
    """Every problem of already rendered requests: schema errors, unsafe and clashing names."""
    file = str(spec.path)
    problems: list[Problem] = []
    owners: dict[str, list[Request]] = defaultdict(list)
    for request in requests:
        errors = check_body(request.body)
        for error in errors:
            problems.append(
                Problem(
                    error.message,
                    file,
                    request.line_of(error.path),
                    request.job,
                    request.vars,
                    error.path,
                )
            )
        reason = name_problem(request.id)
        if reason:
            problems.append(
                Problem(
                    f"{reason}: {request.id!r}",
                    file,
                    request.line,
                    request.job,
                    request.vars,
                    "name",
                )
            )
            continue
        for path, message in number_problems(request.body):
            problems.append(
                Problem(message, file, request.line_of(path), request.job, request.vars, path)
            )
        if errors:
            continue  # its file names depend on fields that are wrong already
        for stem in output_stems(request):
            owners[stem.casefold()].append(request)
    problems += _clashes(file, owners.items())
    problems += _folder_clashes(file, owners)
    return problems


def _folder_clashes(file: str, owners: Mapping[str, list[Request]]) -> list[Problem]:
    """A file that is also a folder of another name (`hero` writes hero.jpg, `hero.jpg/closeup`
    needs a folder hero.jpg): whichever comes second would fail after it was paid for."""
    folders: dict[str, str] = {}  # folder (casefolded) -> a stem under it
    for stem in owners:
        parts = stem.split("/")
        for depth in range(1, len(parts)):
            folders.setdefault("/".join(parts[:depth]), stem)
    problems = []
    for stem, users in owners.items():
        for extension in EXTENSIONS.values():
            under = folders.get(stem + extension)
            if under is not None:
                first, other = users[0], owners[under][0]
                problems.append(
                    Problem(
                        f"the image {stem}{extension} would be the folder of "
                        f"{other.id!r} (job {other.job!r}): rename one of them",
                        file,
                        first.line,
                        first.job,
                        first.vars,
                        "name",
                    )
                )
    return problems


def number_problems(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(JSON path, message) of every number JSON cannot carry: NaN, an infinity, an integer
    beyond 2^53 (parsers that read numbers as doubles change it)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, f"{value} is not a number JSON can carry")]
    if isinstance(value, int) and abs(value) > SAFE_INTEGER:
        return [(path, f"{value} is beyond JSON's safe integer range (2^53)")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in number_problems(v, f"{path}.{k}".strip("."))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in number_problems(v, f"{path}[{i}]")]
    return []


def _clashes(file: str, owners: Iterable[tuple[str, list[Request]]]) -> list[Problem]:
    problems = []
    for stem, users in owners:
        if len(users) < 2:
            continue
        first = users[0]
        listed = "; ".join(f'job "{r.job}" {format_combo(r.vars)}' for r in users)
        problems.append(
            Problem(
                f"{len(users)} requests write the file {stem!r}: {listed}",
                file,
                first.line,
                first.job,
                path="name",
            )
        )
    return problems


def check_together(specs: Sequence[Spec]) -> None:
    """Raise SpecInvalid if specs given together write one output folder: their images,
    lock paths and cache would overwrite each other's."""
    first: dict[Path, Spec] = {}
    problems = []
    for spec in specs:
        other = first.setdefault(spec.output.resolve(), spec)
        if other.path.resolve() != spec.path.resolve():
            problems.append(
                Problem(
                    f"{spec.output} is also the output folder of {other.path}: two specs in one "
                    "folder overwrite each other's images; give each its own `output:`",
                    str(spec.path),
                    spec.output_line or None,
                    path="output",
                )
            )
    if problems:
        raise SpecInvalid(problems)


def validate(spec: Spec) -> list[Request]:
    """Expand and check a spec; the requests if all is well, else SpecInvalid with every problem."""
    requests, problems = expand_collect(spec)
    problems += check_requests(spec, requests)
    problems += asset_slots(spec, requests)[1]
    if problems:
        raise SpecInvalid(problems)
    return requests
