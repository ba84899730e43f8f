"""Loading a spec file: the spec language's schema, and `Spec` (the YAML with line numbers
is `yaml_lines`'s)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..defaults import MAX_SPEC_REQUESTS
from ..errors import Problem, SpecInvalid, did_you_mean
from ..provider.compiled import compiled_validator
from ..provider.registry import DEFAULT_MODEL
from ..provider.schema_errors import error_parts
from .yaml_lines import LineDict, line_of, load_yaml

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

MAX_REPEAT = 1000

__all__ = ["Job", "LineDict", "Spec", "line_of", "load_spec", "load_yaml", "spec_schema_json"]


# ----- the spec language -------------------------------------------------------------------

_REQUEST = {
    "type": "object",
    "description": "Fields of the API request body; string values are Jinja templates.",
}
_ROWS = {"type": "array", "items": {"type": "object"}}
FITS = ("cover", "contain", "stretch")
_ASSETS: dict[str, Any] = {
    "type": "object",
    "description": "What the job's images become: one slot per value of the `per:` "
    "variables, its picked image delivered as `files:` (renditions at stable paths).",
    "additionalProperties": False,
    "required": ["files"],
    "properties": {
        "per": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "The variables that make one slot (default: every variable of the "
            "job's combinations, so a slot's candidates are its repeats and images).",
        },
        "name": {
            "type": "string",
            "minLength": 1,
            "description": "The slot's name, a template over the `per:` variables "
            "(default: their values, slugged, joined by '-').",
        },
        "files": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path"],
                "properties": {
                    "path": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Where the rendition goes, relative to the spec's "
                        "folder (a template over the slot's variables); .png, .jpg or .webp.",
                    },
                    "resize": {
                        "type": ["string", "integer"],
                        "description": "WxH (256x256), or N for NxN.",
                    },
                    "fit": {
                        "enum": list(FITS),
                        "description": "cover (crop to fill, the default), contain (pad with "
                        "`background`) or stretch.",
                    },
                    "background": {
                        "type": "string",
                        "description": "Padding colour of `fit: contain`: #rrggbb or "
                        "#rrggbbaa (default: transparent, or white for JPEG).",
                    },
                    "quality": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 100,
                        "description": "JPEG and WebP quality (default 90).",
                    },
                },
            },
        },
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://github.com/flux-pipeline/flux-pipeline/spec-v1.json",
    "title": "flux-pipeline spec (version 1)",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "jobs"],
    "properties": {
        "version": {"const": 1, "description": "The spec language version; always 1."},
        "name": {
            "type": "string",
            "minLength": 1,
            "description": "Spec name, used in seeds and the default output folder. "
            "Default: the file's stem.",
        },
        "model": {"type": "string", "description": "Default model. Default: flux-pro."},
        "output": {
            "type": "string",
            "description": "Image folder, relative to the spec file. Default: out/NAME.",
        },
        "vars": {"type": "object", "description": "Variables visible to every template."},
        "defaults": {**_REQUEST, "description": "Request fields applied to every job."},
        "jobs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "oneOf": [{"required": ["prompt"]}, {"required": ["prompt_file"]}],
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Request id and file stem (a template); unique in the spec.",
                    },
                    "prompt": {"type": "string", "description": "Prompt template."},
                    "prompt_file": {
                        "type": "string",
                        "description": "Prompt template file, in the spec's folder or templates/.",
                    },
                    "matrix": {
                        "type": "object",
                        "description": "Axes whose cartesian product gives the combinations "
                        "(GitHub Actions semantics, with include and exclude).",
                        "properties": {"include": _ROWS, "exclude": _ROWS},
                        "additionalProperties": {
                            "oneOf": [
                                {"type": "array", "minItems": 1},
                                {
                                    "type": "object",
                                    "description": "One value per file the glob matches "
                                    "(sorted, relative to the spec's folder).",
                                    "required": ["files"],
                                    "additionalProperties": False,
                                    "properties": {"files": {"type": "string", "minLength": 1}},
                                },
                                {
                                    "type": "object",
                                    "description": "One value per row of a CSV, YAML or JSON "
                                    "file; the row's columns are variables too.",
                                    "required": ["rows"],
                                    "additionalProperties": False,
                                    "properties": {"rows": {"type": "string", "minLength": 1}},
                                },
                            ]
                        },
                    },
                    "cases": {**_ROWS, "description": "Explicit combinations."},
                    "cases_file": {
                        "type": "string",
                        "description": "CSV, YAML or JSON file of explicit combinations.",
                    },
                    "repeat": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_REPEAT,
                        "description": "Variants of each combination, each with its own seed.",
                    },
                    "seed_from": {
                        "type": "array",
                        "items": {"type": "string"},
                        "uniqueItems": True,
                        "description": "The variables a derived seed depends on (with the "
                        "spec's name and the repeat), instead of the request's name: requests "
                        "that differ only in other variables (a model axis) share a seed.",
                    },
                    "request": _REQUEST,
                    "assets": _ASSETS,
                },
            },
        },
    },
}


@functools.cache
def _spec_is_valid() -> Callable[[Any], Any]:
    """The spec schema's yes-or-no check (fastjsonschema, compiled once); jsonschema explains
    a no (`_structure_problems`), so a valid spec never imports it."""
    return compiled_validator(SPEC_SCHEMA, use_default=False)


def _structure_problems(file: str, doc: Any) -> list[Problem]:
    """Every way `doc` breaks the spec language's schema, at its line."""
    import fastjsonschema

    try:
        _spec_is_valid()(doc)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    from jsonschema import Draft7Validator

    errors = sorted(
        Draft7Validator(SPEC_SCHEMA).iter_errors(doc), key=lambda e: list(map(str, e.path))
    )
    unique = {str(p): p for p in (_structure_problem(file, doc, e) for e in errors)}
    return sorted(unique.values(), key=Problem.sort_key)


def spec_schema_json() -> str:
    """The JSON Schema of the spec language, for editors (`flux-pipeline schema`)."""
    return json.dumps(SPEC_SCHEMA, indent=2) + "\n"


def _structure_problem(file: str, doc: Any, error: ValidationError) -> Problem:
    path = list(error.absolute_path)
    where = ".".join(str(p) for p in path)
    schema, instance = error_parts(error)
    if error.validator == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        extra = sorted(set(instance) - set(allowed), key=str)
        word = str(extra[0]) if extra else ""
        return Problem(
            f"unknown key {word!r}{did_you_mean(word, allowed)}",
            file=file,
            line=line_of(doc, [*path, word]),
            path=where,
        )
    if error.validator == "oneOf" and isinstance(instance, dict):
        both = "prompt" in instance and "prompt_file" in instance
        message = (
            "give either prompt or prompt_file, not both"
            if both
            else ("a job needs a prompt or a prompt_file")
        )
        return Problem(message, file=file, line=line_of(doc, path), path=where)
    if error.validator == "required":
        missing = [k for k in cast(list[str], error.validator_value) if k not in instance]
        return Problem(
            f"missing required key {missing[0]!r}", file=file, line=line_of(doc, path), path=where
        )
    return Problem(error.message, file=file, line=line_of(doc, path), path=where)


# ----- the loaded spec ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One entry of `jobs`, as written (templates are not rendered yet)."""

    position: int
    name: str
    line: int
    prompt: str | None
    prompt_file: str | None
    prompt_line: int
    matrix: Mapping[str, Any] | None
    cases: Sequence[Mapping[str, Any]]
    cases_file: str | None
    cases_line: int
    repeat: int
    request: Mapping[str, Any]
    request_lines: Mapping[str, int]
    seed_from: tuple[str, ...] | None = None  # the variables a derived seed depends on
    matrix_lines: Mapping[str, int] = field(default_factory=dict)  # axis (or entries) -> line
    assets: Mapping[str, Any] | None = None  # as written, with its lines (language/assets.py)


@dataclass(frozen=True, slots=True)
class Spec:
    """A spec file, loaded and structurally valid."""

    path: Path
    name: str
    model: str
    output: Path
    vars: Mapping[str, Any]
    defaults: Mapping[str, Any]
    defaults_lines: Mapping[str, int]
    jobs: tuple[Job, ...]
    output_line: int = 0  # the line of `output:`, if the spec has one
    max_requests: int = MAX_SPEC_REQUESTS  # more is refused before anything is expanded

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(
            self.path.name.removesuffix(".yaml").removesuffix(".yml") + ".lock.json"
        )


def _lines(mapping: Any) -> dict[str, int]:
    return dict(mapping.key_lines) if isinstance(mapping, LineDict) else {}


def load_spec(
    path: str | Path,
    *,
    allow_output_outside: bool = False,
    max_requests: int = MAX_SPEC_REQUESTS,
) -> Spec:
    """Read and check one spec file. Raises SpecInvalid listing every structural problem.

    `output:` must lie inside the spec's folder tree or the current directory's (a spec from
    a pull request must not write, or prune, elsewhere), unless `allow_output_outside`. A spec
    that would make more than `max_requests` requests is refused when it is expanded."""
    path = Path(path)
    file = str(path)
    doc = load_yaml(path)
    if doc is None:
        raise SpecInvalid([Problem("the spec is empty", file=file)])
    if not isinstance(doc, dict):
        kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
        kind = next((v for t, v in kinds.items() if isinstance(doc, t)), type(doc).__name__)
        raise SpecInvalid([Problem(f"the spec must be a mapping, not a {kind}", file=file, line=1)])
    problems = _structure_problems(file, doc)
    if problems:
        raise SpecInvalid(problems)

    name = doc.get("name", path.name.removesuffix(".yaml").removesuffix(".yml"))
    output = path.parent / doc.get("output", f"out/{name}")
    if not allow_output_outside:
        _confine(file, doc, output)
    jobs = tuple(_job(i, j) for i, j in enumerate(doc["jobs"]))
    return Spec(
        path=path,
        name=name,
        model=doc.get("model", DEFAULT_MODEL),
        output=output,
        vars=dict(doc.get("vars", {})),
        defaults=dict(doc.get("defaults", {})),
        # A top-level `model` is a default like the others; errors in it point at its line.
        defaults_lines={
            **{k: v for k, v in _lines(doc).items() if k == "model"},
            **_lines(doc.get("defaults")),
        },
        jobs=jobs,
        output_line=_lines(doc).get("output", 0),
        max_requests=max_requests,
    )


def _confine(file: str, doc: Mapping[str, Any], output: Path) -> None:
    """SpecInvalid, at the `output:` line, if the output folder lies outside the spec's
    folder tree and the current directory's (as written: `..` and absolute paths count), or
    starts with `~`."""
    written = str(doc.get("output", ""))
    line = _lines(doc).get("output")
    problem = None
    if written.startswith("~"):
        problem = "`~` is not expanded here: write the folder relative to the spec"
    else:
        # Lexically, as written: a symlinked output folder set up by the user is followed
        # (issue 13: the lock keeps its link's name).
        written_path = Path(os.path.abspath(output))
        roots = (Path(os.path.abspath(Path(file).parent)), Path(os.path.abspath(Path.cwd())))
        if not any(written_path.is_relative_to(root) for root in roots):
            problem = (
                f"{written} is outside the spec's folder and the current directory; a spec may "
                "only write below them (pass --allow-output-outside to allow it)"
            )
    if problem:
        raise SpecInvalid([Problem(problem, file, line, path="output")])


def _job(position: int, raw: Any) -> Job:
    lines = raw.key_lines if isinstance(raw, LineDict) else {}
    line = getattr(raw, "line", 0)
    return Job(
        position=position,
        name=raw["name"],
        line=line,
        prompt=raw.get("prompt"),
        prompt_file=raw.get("prompt_file"),
        prompt_line=lines.get("prompt", lines.get("prompt_file", line)),
        matrix=raw.get("matrix"),
        cases=tuple(raw.get("cases", ())),
        cases_file=raw.get("cases_file"),
        cases_line=lines.get("cases_file", line),
        repeat=raw.get("repeat", 1),
        seed_from=tuple(raw["seed_from"]) if "seed_from" in raw else None,
        matrix_lines=_lines(raw.get("matrix")),
        request=dict(raw.get("request", {})),
        request_lines=_lines(raw.get("request")),
        assets=raw.get("assets"),
    )
