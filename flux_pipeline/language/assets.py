"""Assets: what a job's images become (issue 26).

A job's `assets:` groups its requests into *slots* (one per value of the `per:` variables);
the images of a slot's requests are its *candidates*; one picked candidate (the picks file,
`store/picks.py`) is delivered as the slot's `files:`, each a rendition (format from the
extension, an optional `resize`) at a stable path inside the project. This module turns the
spec's `assets:` into slots and checks them, every problem at its spec line; making the
renditions is `store/renditions.py`'s work and delivering them `store/delivery.py`'s.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import Problem, format_combo
from ..provider.registry import get_model
from .expansion import Request
from .render import TEMPLATE_ERRORS, Renderer, describe_error, slug, template_folders
from .spec import Job, LineDict, Spec

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
MAX_SIDE = 8192
_SIZE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")
_SLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?")


@dataclass(frozen=True, slots=True)
class Transform:
    """How a rendition is made from the picked image."""

    format: str  # png, jpeg, webp
    size: tuple[int, int] | None = None
    fit: str = "cover"
    background: str | None = None
    quality: int | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": self.format}
        if self.size is not None:
            data.update(resize=f"{self.size[0]}x{self.size[1]}", fit=self.fit)
            if self.fit == "contain" and self.background:
                data["background"] = self.background
        if self.quality is not None and self.format != "png":
            data["quality"] = self.quality
        return data


@dataclass(frozen=True, slots=True)
class AssetFile:
    """One rendition of a slot: its path relative to the spec's folder (with /)."""

    path: str
    transform: Transform
    line: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """One image a slot may deliver: `request` (an id), its `image`-th output (from 0).
    Named by the request's id, with `:N` (from 1) when the request makes several images."""

    name: str
    request: str
    image: int


@dataclass(frozen=True, slots=True)
class Slot:
    """One asset: the candidates to choose from and the files the pick becomes."""

    name: str
    job: str
    vars: Mapping[str, Any]
    candidates: tuple[Candidate, ...]
    files: tuple[AssetFile, ...]
    line: int

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if c.name == name), None)


def has_assets(spec: Spec) -> bool:
    return any(job.assets is not None for job in spec.jobs)


def slots_of(spec: Spec, requests: Sequence[Request]) -> list[Slot]:
    """The slots a person picks in: the assets' where the spec declares them, else each
    combination's variants (its repeats and images), named by its first request's name."""
    if has_assets(spec):
        return asset_slots(spec, requests)[0]
    groups: dict[tuple[str, str], list[Request]] = {}
    for request in requests:
        shown = {k: v for k, v in request.vars.items() if k != "repeat"}
        groups.setdefault((request.job, repr(shown)), []).append(request)
    slots, names = [], set()
    for members in groups.values():
        first = members[0]
        name = first.id.removesuffix("-r1") if len(members) > 1 else first.id
        name = name if name not in names else first.id
        names.add(name)
        values = {k: v for k, v in first.vars.items() if k != "repeat"}
        slots.append(Slot(name, first.job, values, _candidates(members), (), first.line))
    return slots


def asset_slots(spec: Spec, requests: Sequence[Request]) -> tuple[list[Slot], list[Problem]]:
    """The slots of every job that declares `assets:`, and every problem with them."""
    slots: list[Slot] = []
    problems: list[Problem] = []
    renderer: Renderer | None = None
    for job in spec.jobs:
        if job.assets is None:
            continue
        renderer = renderer or Renderer(template_folders(spec.folder))
        found, trouble = _job_slots(spec, job, [r for r in requests if r.job == job.name], renderer)
        slots += found
        problems += trouble
    problems += _clashes(spec, slots)
    return slots, problems


def _job_slots(
    spec: Spec, job: Job, requests: Sequence[Request], renderer: Renderer
) -> tuple[list[Slot], list[Problem]]:
    assets = job.assets
    assert assets is not None
    file = str(spec.path)
    lines = assets.key_lines if isinstance(assets, LineDict) else {}
    line = getattr(assets, "line", job.line)
    names = sorted({k for r in requests for k in r.vars if k != "repeat"})
    per = list(assets.get("per", names))
    unknown = [v for v in per if v not in names]
    if unknown:
        known = f"its variables are {', '.join(names)}" if names else "it has no variables"
        message = f"assets.per names {unknown[0]!r}, which is no variable of this job ({known})"
        return [], [Problem(message, file, lines.get("per", line), job.name, path="assets.per")]
    groups: dict[tuple[str, ...], list[Request]] = {}
    for request in requests:
        groups.setdefault(tuple(repr(request.vars[v]) for v in per), []).append(request)
    problems: list[Problem] = []
    transforms = [_transform(file, job, f, problems) for f in assets["files"]]
    templates = _templates(file, job, assets, renderer, problems)
    if problems or templates is None:
        return [], problems
    slots = []
    for members in groups.values():
        values = {v: members[0].vars[v] for v in per}
        slot = _slot(spec, job, values, templates, transforms, problems)
        if slot is not None:
            slots.append(replace(slot, candidates=_candidates(members)))
    return slots, problems


def _slot(
    spec: Spec,
    job: Job,
    values: Mapping[str, Any],
    templates: tuple[Any, list[Any]],
    transforms: Sequence[Transform | None],
    problems: list[Problem],
) -> Slot | None:
    """One slot's name and files, rendered for its `per:` values (candidates to be added)."""
    assets = job.assets
    assert assets is not None
    file = str(spec.path)
    line = getattr(assets, "line", job.line)
    name_line = assets.key_lines.get("name", line) if isinstance(assets, LineDict) else line
    context = {**spec.vars, **values}
    hint = f"; asset names and paths may use the spec's vars and per: {list(values)}"
    name_template, path_templates = templates
    try:
        if name_template is not None:
            name = str(name_template.render(context)).strip()
        else:
            name = "-".join(slug(v) for v in values.values()) or job.name
    except TEMPLATE_ERRORS as exc:
        problems.append(
            Problem(
                describe_error(exc, context) + hint,
                file,
                name_line,
                job.name,
                values,
                "assets.name",
            )
        )
        return None
    files = []
    for raw, template, transform in zip(assets["files"], path_templates, transforms, strict=True):
        where = getattr(raw, "line", line)
        try:
            path = str(template.render(context)).strip()
        except TEMPLATE_ERRORS as exc:
            said = describe_error(exc, context) + hint
            problems.append(Problem(said, file, where, job.name, values, "assets.files.path"))
            continue
        reason = path_problem(spec, path)
        if reason:
            problems.append(Problem(reason, file, where, job.name, values, "assets.files.path"))
        elif transform is not None:
            files.append(AssetFile(path, _with_format(transform, path), where))
    reason = _slot_name_problem(name)
    if reason:
        problems.append(Problem(reason, file, name_line, job.name, values, "assets.name"))
        return None
    return Slot(name, job.name, dict(values), (), tuple(files), line)


def _templates(
    file: str, job: Job, assets: Mapping[str, Any], renderer: Renderer, problems: list[Problem]
) -> tuple[Any, list[Any]] | None:
    lines = assets.key_lines if isinstance(assets, LineDict) else {}
    try:
        name = renderer.text_template(assets["name"]) if "name" in assets else None
    except TEMPLATE_ERRORS as exc:
        problems.append(
            Problem(
                describe_error(exc), file, lines.get("name", job.line), job.name, path="assets.name"
            )
        )
        return None
    paths = []
    for raw in assets["files"]:
        try:
            paths.append(renderer.text_template(raw["path"]))
        except TEMPLATE_ERRORS as exc:
            where = getattr(raw, "line", job.line)
            problems.append(
                Problem(describe_error(exc), file, where, job.name, path="assets.files.path")
            )
            return None
    return name, paths


def _transform(
    file: str, job: Job, raw: Mapping[str, Any], problems: list[Problem]
) -> Transform | None:
    """The file's transform (its format is set from its path later), or None with a problem."""
    line = getattr(raw, "line", job.line)
    size = None
    if "resize" in raw:
        written = raw["resize"]
        if isinstance(written, int) and not isinstance(written, bool):
            written = f"{written}x{written}"
        match = _SIZE.fullmatch(str(written).strip())
        if match is None or max(int(match[1]), int(match[2])) > MAX_SIDE:
            problems.append(
                Problem(
                    f"resize {raw['resize']!r} is not WxH with sides from 1 to {MAX_SIDE} "
                    "(e.g. 256x256)",
                    file,
                    line,
                    job.name,
                    path="assets.files.resize",
                )
            )
            return None
        size = (int(match[1]), int(match[2]))
    background = raw.get("background")
    if background is not None and not _COLOUR.fullmatch(background):
        problems.append(
            Problem(
                f"background {background!r} is not a colour #rrggbb or #rrggbbaa",
                file,
                line,
                job.name,
                path="assets.files.background",
            )
        )
        return None
    if ("fit" in raw or background is not None) and size is None:
        problems.append(
            Problem(
                "fit and background need resize: WxH", file, line, job.name, path="assets.files"
            )
        )
        return None
    return Transform("png", size, raw.get("fit", "cover"), background, raw.get("quality"))


def _with_format(transform: Transform, path: str) -> Transform:
    fmt = FORMATS[os.path.splitext(path)[1].lower()]
    quality = transform.quality if fmt != "png" else None
    if fmt != "png" and quality is None:
        quality = 90
    return Transform(fmt, transform.size, transform.fit, transform.background, quality)


def path_problem(spec: Spec, path: str) -> str | None:
    """Why an asset path cannot be written, or None: relative with /, '..' only at the start,
    inside the spec's folder or the current directory (lexically, as `output:` is confined),
    a known image extension, not in `.flux-cache`."""
    if not path:
        return "the asset path is empty"
    if path.startswith(("/", "~")) or "\\" in path or re.match(r"[A-Za-z]:", path):
        return f"asset path {path!r} must be relative to the spec's folder, with /"
    parts = path.split("/")
    inner = parts[sum(1 for _ in itertools.takewhile(lambda p: p == "..", parts)) :]
    if not inner or any(p in ("", ".", "..") for p in inner):
        return f"asset path {path!r} must name a file, with '..' only at its start"
    if ".flux-cache" in parts:
        return f"asset path {path!r} is inside a cache folder"
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        known = ", ".join(FORMATS)
        return (
            f"asset path {path!r}: unknown image extension {extension or '(none)'!r}; use {known}"
        )
    target = Path(os.path.abspath(spec.folder / path))
    roots = (Path(os.path.abspath(spec.folder)), Path(os.path.abspath(Path.cwd())))
    if not any(target.is_relative_to(root) for root in roots):
        return f"asset path {path!r} is outside the spec's folder and the current directory"
    return None


def _slot_name_problem(name: str) -> str | None:
    if not _SLOT_NAME.fullmatch(name):
        return (
            f"the slot name {name!r} may use only letters, digits, '.', '_', '-' and '/', "
            "starting with a letter or digit (set assets.name, the slug filter helps)"
        )
    return None


def _candidates(requests: Sequence[Request]) -> tuple[Candidate, ...]:
    found = []
    for request in requests:
        model = get_model(request.model)
        count = model.num_images(request.body) if model else 1
        if count == 1:
            found.append(Candidate(request.id, request.id, 0))
        else:
            found += [
                Candidate(f"{request.id}:{k}", request.id, k - 1) for k in range(1, count + 1)
            ]
    return tuple(found)


def _clashes(spec: Spec, slots: Sequence[Slot]) -> list[Problem]:
    """Two slots of one name, or two files of one path (compared as a case-insensitive file
    system would)."""
    file = str(spec.path)
    problems = []
    names: dict[str, Slot] = {}
    paths: dict[str, tuple[Slot, AssetFile]] = {}
    for slot in slots:
        first = names.setdefault(slot.name, slot)
        if first is not slot:
            problems.append(
                Problem(
                    f"two slots are named {slot.name!r} ({format_combo(first.vars)} of job "
                    f"{first.job!r} too): set assets.name",
                    file,
                    slot.line,
                    slot.job,
                    slot.vars,
                    "assets.name",
                )
            )
        for asset in slot.files:
            owner = paths.setdefault(asset.path.casefold(), (slot, asset))
            if owner[1] is not asset:
                problems.append(
                    Problem(
                        f"slot {owner[0].name!r} writes {asset.path!r} too (line "
                        f"{owner[1].line}): each asset needs its own path",
                        file,
                        asset.line,
                        slot.job,
                        slot.vars,
                        "assets.files.path",
                    )
                )
    return problems
