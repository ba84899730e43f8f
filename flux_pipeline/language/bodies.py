"""Request bodies as data: their one JSON text, their hash (a request's identity in the lock
and the cache), and the fields in which two of them differ."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..provider.inputs import IMAGE_FIELDS, input_change


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 kept as is; strict JSON
    (ValueError on NaN or an infinity, which validation refuses first)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def body_hash(body: Mapping[str, Any]) -> str:
    """The sha256 of a request body's canonical JSON: its identity in the lock."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The JSON paths of the fields that differ between two request bodies."""
    paths = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            paths += changed_fields(a, b, path + ".")
        elif canonical_json(a) != canonical_json(b):
            paths.append(path)
    return paths


def body_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two bodies as a user reads it: the changed fields' paths, with
    an input image field whose local file changed said as "input photos/mug.jpg changed"."""
    fields = changed_fields(old, new)
    inputs = [f for f in fields if f.split(".")[0] in IMAGE_FIELDS]
    said = input_change(old, new) if inputs else None
    if said is None:
        return fields
    return [f for f in fields if f not in inputs] + [said]


def field_change(old: Mapping[str, Any], new: Mapping[str, Any], path: str, width: int = 40) -> str:
    """One changed field as a user reads it: `prompt ('a red fox' → 'a blue fox')`, each value
    shortened to `width` characters; `(none)` where a body has no such field."""

    def at(body: Mapping[str, Any]) -> str:
        value: Any = body
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return "(none)"
            value = value[part]
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    return f"{path} ({at(old)} → {at(new)})"
