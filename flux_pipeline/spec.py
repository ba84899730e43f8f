"""Loading a spec file: safe YAML with line numbers, the spec language's schema, and `Spec`.

The YAML loader is PyYAML's safe loader (the C one when available) with three changes:
mappings and sequences remember the line of every key and item, duplicate keys are errors, and
a document whose aliases would expand past a fixed size (a "billion laughs") is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from .errors import Problem, SpecInvalid, did_you_mean
from .registry import DEFAULT_MODEL, error_parts

MAX_SPEC_BYTES = 5 * 1024 * 1024
MAX_NODES = 1_000_000  # values in the document once every alias is expanded
MAX_REPEAT = 1000


class LineDict(dict[Any, Any]):
    """A YAML mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}


class LineList(list[Any]):
    """A YAML sequence that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe loader that records lines and rejects duplicate keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    data = LineDict()
    data.line = node.start_mark.line + 1
    yield data
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.setdefault(key, line)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if first != line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Any:
    data = LineList()
    data.line = node.start_mark.line + 1
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values `value` holds once aliases are expanded (shared objects count each time)."""
    if not isinstance(value, dict | list):
        return 1
    known = memo.get(id(value))
    if known is not None:
        return known
    children = value.values() if isinstance(value, dict) else value
    total = 1
    for child in children:
        total += _expanded_size(child, memo)
        if total > MAX_NODES:
            break
    memo[id(value)] = total
    return total


def load_yaml(path: Path, *, what: str = "spec") -> Any:
    """Parse one YAML file safely, raising SpecInvalid with the file and line on any problem."""
    file = str(path)

    def fail(message: str, line: int | None = None) -> SpecInvalid:
        return SpecInvalid([Problem(message, file=file, line=line)])

    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise fail(f"{what} file is {size:,} bytes, more than the {MAX_SPEC_BYTES:,} allowed")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail(f"{what} file not found") from None
    except OSError as exc:
        raise fail(f"cannot read {what} file: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(
            f"not UTF-8 text (byte {exc.start})", raw[: exc.start].count(b"\n") + 1
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        if "nesting depth" in message:  # newer PyYAML parsers have a limit of their own
            raise fail("YAML is nested too deeply", mark.line + 1 if mark else None) from None
        raise fail(f"YAML error: {message}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise fail(f"YAML error: {exc}") from None
    except RecursionError:
        raise fail("YAML is nested too deeply") from None
    try:
        if _expanded_size(data, {}) > MAX_NODES:
            raise fail(f"YAML aliases expand to more than {MAX_NODES:,} values")
    except RecursionError:
        raise fail("YAML is nested too deeply") from None
    return data


def line_of(doc: Any, path: Sequence[Any]) -> int | None:
    """The line of the deepest part of `path` inside a loaded document that has one."""
    line: int | None = getattr(doc, "line", None)
    node = doc
    for part in path:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


# ----- the spec language -------------------------------------------------------------------

_REQUEST = {
    "type": "object",
    "description": "Fields of the API request body; string values are Jinja templates.",
}
_ROWS = {"type": "array", "items": {"type": "object"}}

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
                        "additionalProperties": {"type": "array", "minItems": 1},
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
                    "request": _REQUEST,
                },
            },
        },
    },
}

_SPEC_VALIDATOR = Draft7Validator(SPEC_SCHEMA)


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


def load_spec(path: str | Path) -> Spec:
    """Read and check one spec file. Raises SpecInvalid listing every structural problem."""
    path = Path(path)
    file = str(path)
    doc = load_yaml(path)
    if doc is None:
        raise SpecInvalid([Problem("the spec is empty", file=file)])
    if not isinstance(doc, dict):
        kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
        kind = next((v for t, v in kinds.items() if isinstance(doc, t)), type(doc).__name__)
        raise SpecInvalid([Problem(f"the spec must be a mapping, not a {kind}", file=file, line=1)])
    errors = sorted(_SPEC_VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    if errors:
        unique = {str(p): p for p in (_structure_problem(file, doc, e) for e in errors)}
        raise SpecInvalid(sorted(unique.values(), key=Problem.sort_key))

    name = doc.get("name", path.name.removesuffix(".yaml").removesuffix(".yml"))
    output = path.parent / doc.get("output", f"out/{name}")
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
    )


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
        request=dict(raw.get("request", {})),
        request_lines=_lines(raw.get("request")),
    )
