"""jsonschema's errors made precise for a request body: each unknown field named (with a
"did you mean"), every failing part of an `anyOf` branch of the value's type (width and
height both), and messages that say what was wrong in the user's words."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema is imported only to explain a body that fails
    from jsonschema.exceptions import ValidationError

from ..errors import did_you_mean


@dataclass(frozen=True, slots=True)
class FieldError:
    """A request body's field that breaks its model's schema."""

    path: str
    message: str


def error_order(error: ValidationError) -> tuple[str, ...]:
    return tuple(str(p) for p in error.absolute_path)


def _json_path(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path)


def error_parts(error: ValidationError) -> tuple[dict[str, Any], Any]:
    """The failing schema and instance of a jsonschema error, typed for use."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    return dict(schema), error.instance


def explain(error: ValidationError) -> list[FieldError]:
    """Make jsonschema's message precise: name each unknown field, and look inside `anyOf`
    (every failing part of the branch of the value's type: width and height both)."""
    schema, instance = error_parts(error)
    if error.validator == "anyOf" and error.context:
        kind = _json_type(instance)
        branches = schema.get("anyOf", [])
        matching = {i for i, b in enumerate(branches) if b.get("type") == kind}
        inner = [e for e in error.context if e.schema_path and e.schema_path[0] in matching]
        if inner:
            return [f for e in sorted(inner, key=error_order) for f in explain(e)]
        kinds = " or ".join(_describe(b) for b in branches)
        return [FieldError(_json_path(error), f"{instance!r} is not {kinds}")]
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        path = _json_path(error)
        return [
            FieldError(
                ".".join(filter(None, [path, str(word)])),
                "unknown field"
                + (did_you_mean(str(word), allowed) or f" (allowed: {', '.join(allowed)})"),
            )
            for word in sorted(set(instance) - set(allowed), key=str)
        ]
    return [_plain(error)]


def _plain(error: ValidationError) -> FieldError:
    _, instance = error_parts(error)
    if error.validator == "multipleOf":
        return FieldError(
            _json_path(error), f"{instance} is not a multiple of {error.validator_value}"
        )
    if error.validator == "maxLength":
        return FieldError(
            _json_path(error),
            f"is {len(instance)} characters long, more than {error.validator_value}",
        )
    message = error.message
    if len(message) > 200:
        message = message[:200] + "..."
    return FieldError(_json_path(error), message)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def _describe(branch: Mapping[str, Any]) -> str:
    if "enum" in branch:
        return "one of " + ", ".join(map(str, branch["enum"]))
    if branch.get("type") == "object":
        return "an object with " + ", ".join(branch.get("properties", {}))
    return f"a {branch.get('type', 'value')}"
