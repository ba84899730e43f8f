"""The lock (`SPEC.lock.json`): what each request sent and what it produced.

It holds only what the inputs determine (no timestamps, keys or timings), sorted, so the same
spec run twice against the same backend gives a byte-identical file. `render_lock` is a pure
function from entries to text; `write_lock` writes that text atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LockError
from .expansion import Request
from .files import HashIndex, sha256_file, write_atomic
from .models import body_hash, canonical_json

LOCK_VERSION = 1


@dataclass(frozen=True, slots=True)
class Output:
    """One image file a request produced, with its path relative to the lock's folder."""

    path: str
    sha256: str
    bytes: int
    width: int
    height: int
    format: str


@dataclass(frozen=True, slots=True)
class Entry:
    """What the lock records about one finished request."""

    id: str
    job: str
    vars: Mapping[str, Any]
    body: Mapping[str, Any]
    body_sha256: str
    seed: int
    outputs: tuple[Output, ...]
    response: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, request: Request, outputs: Iterable[Output], response: Mapping[str, Any]) -> Entry:
        return cls(
            id=request.id,
            job=request.job,
            vars=dict(request.combo),
            body=dict(request.body),
            body_sha256=request.body_sha256,
            seed=request.seed,
            outputs=tuple(outputs),
            response=dict(response),
        )


@dataclass(frozen=True, slots=True)
class Lock:
    spec: str
    entries: Mapping[str, Entry]


def render_lock(spec_name: str, entries: Iterable[Entry]) -> str:
    """The lock's text: sorted keys and requests, two-space indent, a final newline.

    Exactly `json.dumps(lock, indent=2, sort_keys=True)`, but built from one fragment per
    request (`entry_text`) so that a run that keeps the lock current re-renders only what
    changed (see `assemble_lock`)."""
    by_id = {e.id: entry_text(e) for e in entries}
    return assemble_lock(spec_name, [by_id[key] for key in sorted(by_id)])


def entry_text(entry: Entry) -> str:
    """One request's part of the lock text, indented to sit under `requests`."""
    body = json.dumps(entry_json(entry), indent=2, sort_keys=True, ensure_ascii=False)
    return "    " + json.dumps(entry.id, ensure_ascii=False) + ": " + body.replace("\n", "\n    ")


def assemble_lock(spec_name: str, fragments: Sequence[str]) -> str:
    """The lock's text from `entry_text` fragments, in the order of their request ids."""
    requests = "{\n" + ",\n".join(fragments) + "\n  }" if fragments else "{}"
    spec = json.dumps(spec_name, ensure_ascii=False)
    return (
        f'{{\n  "lock_version": {LOCK_VERSION},\n  "requests": {requests},\n  "spec": {spec}\n}}\n'
    )


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as the lock writes it (a JSON object)."""
    data = {f: getattr(entry, f) for f in Entry.__dataclass_fields__}
    data["vars"] = dict(entry.vars)
    data["body"] = dict(entry.body)
    data["response"] = dict(entry.response)
    data["outputs"] = [
        {f: getattr(o, f) for f in Output.__dataclass_fields__} for o in entry.outputs
    ]
    return data


def entry_from_json(raw: Mapping[str, Any]) -> Entry:
    """An entry from its JSON object; raises ValueError, KeyError or TypeError if damaged."""
    outputs = tuple(Output(**o) for o in raw["outputs"])
    return Entry(**{**raw, "outputs": outputs})


def write_lock(path: Path, spec_name: str, entries: Iterable[Entry]) -> None:
    write_atomic(path, render_lock(spec_name, entries).encode())


def read_lock(path: Path) -> Lock | None:
    """The lock at `path`, or None if there is none. Raises LockError if it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"{path}: cannot read the lock: {exc}") from exc
    return parse_lock(text, str(path))


def parse_lock(text: str, path: str) -> Lock:
    """A lock from its text; `path` names it in errors. Raises LockError if it is damaged."""
    try:
        data = json.loads(text)
        if data.get("lock_version") != LOCK_VERSION:
            raise LockError(f"{path}: unknown lock_version {data.get('lock_version')!r}")
        entries = {}
        for key, raw in data["requests"].items():
            entry = entry_from_json(raw)
            if entry.id != key:
                raise LockError(f"{path}: request {key!r} records the id {entry.id!r}")
            entries[key] = entry
        return Lock(spec=str(data["spec"]), entries=entries)
    except LockError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LockError(
            f"{path}: the lock is damaged ({type(exc).__name__}: {exc}); "
            "restore it from git or delete it to start over"
        ) from exc


# ----- states ------------------------------------------------------------------------------

NEW = "new"
CHANGED = "changed"
MISSING = "missing"
CORRUPT = "corrupt"
UP_TO_DATE = "up to date"


@dataclass(frozen=True, slots=True)
class State:
    """Where a request stands against the lock, and why."""

    state: str
    reason: str = ""

    @property
    def up_to_date(self) -> bool:
        return self.state == UP_TO_DATE


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


def state_of(
    request: Request, entry: Entry | None, lock_folder: Path, hashes: HashIndex | None = None
) -> State:
    """Compare one request with its lock entry and its files on disk (hashed through
    `hashes`, if given, so that unchanged files are not read again)."""
    sha256 = hashes.sha256 if hashes is not None else sha256_file
    if entry is None:
        return State(NEW)
    if entry.body_sha256 != request.body_sha256:
        fields = changed_fields(entry.body, request.body)
        return State(CHANGED, "changed: " + ", ".join(fields) if fields else "body changed")
    if body_hash(entry.body) != entry.body_sha256:
        return State(CORRUPT, "the lock entry was edited: its body does not match its hash")
    for output in entry.outputs:
        path = lock_folder / output.path
        try:
            if path.stat().st_size != output.bytes or sha256(path) != output.sha256:
                return State(CORRUPT, f"{output.path} does not match its recorded hash")
        except FileNotFoundError:
            return State(MISSING, f"{output.path} is missing")
        except OSError as exc:
            return State(MISSING, f"{output.path} cannot be read: {exc.strerror}")
    return State(UP_TO_DATE)
