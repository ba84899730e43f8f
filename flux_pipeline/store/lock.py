"""The lock (`SPEC.lock.json`) as a file format: what each request sent and what it produced.

It holds only what the inputs determine (no timestamps, keys or timings), sorted, so the same
spec run twice against the same backend gives a byte-identical file. `render_lock` is a pure
function from entries to text; `write_lock` writes that text atomically; `read_lock` parses
and checks it. A request's identity is the sha256 of its body's canonical JSON (`body_hash`).
Where a request stands against its entry is planning's business (`planning.state_of`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema

from ..errors import LockError
from ..provider.compiled import compiled_validator
from .atomic import write_atomic

if TYPE_CHECKING:
    from ..language.expansion import Request

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
    # How the image differs from what was asked ("asked for 256x256, got 512x512"): a paid
    # image is kept, and the lock says what came. Written only when there is something to say.
    mismatch: str = ""

    def as_json(self) -> dict[str, Any]:
        """The output as the lock (and the cache's index) writes it."""
        data = {f: getattr(self, f) for f in Output.__dataclass_fields__}
        if not self.mismatch:
            del data["mismatch"]
        return data


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
            vars=dict(request.vars),
            body=dict(request.body),
            body_sha256=request.body_sha256,
            seed=request.seed,
            outputs=tuple(outputs),
            response=dict(response),
        )


@dataclass(frozen=True, slots=True)
class AssetRecord:
    """A delivered asset file: the picked image it was made from (`source`: candidate,
    request, image index, the request's body hash and the image's sha256), the transform, and
    the file as written (its sha256 tells a hand edit)."""

    slot: str
    source: Mapping[str, Any]
    transform: Mapping[str, Any]
    sha256: str
    bytes: int
    width: int
    height: int
    format: str

    def as_json(self) -> dict[str, Any]:
        data = {f: getattr(self, f) for f in AssetRecord.__dataclass_fields__}
        return {**data, "source": dict(self.source), "transform": dict(self.transform)}


@dataclass(frozen=True, slots=True)
class ShardStamp:
    """What a partial lock records of the spec it was made from: its shard (`index` of
    `count`) and the sha256 of the shard's expanded requests (each name and body hash)."""

    index: int
    count: int
    requests_sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "index": self.index, "requests_sha256": self.requests_sha256}

    @classmethod
    def from_json(cls, data: Any) -> ShardStamp | None:
        """The stamp `data` holds, or None (none, or an older flux-pipeline's)."""
        try:
            return cls(int(data["index"]), int(data["count"]), str(data["requests_sha256"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Lock:
    """A lock file's content: the spec's name, an entry per request id and, for a partial
    lock, the shard it was made from."""

    spec: str
    entries: Mapping[str, Entry]
    shard: ShardStamp | None = None
    assets: Mapping[str, AssetRecord] = field(default_factory=dict)  # by path


def render_lock(
    spec_name: str,
    entries: Iterable[Entry],
    shard: ShardStamp | None = None,
    assets: Mapping[str, AssetRecord] | None = None,
) -> str:
    """The lock's text: sorted keys and requests, two-space indent, a final newline.

    Exactly `json.dumps(lock, indent=2, sort_keys=True)`, but built from one fragment per
    request (`entry_text`) so that a run that keeps the lock current re-renders only what
    changed (see `assemble_lock`)."""
    by_id = {e.id: entry_text(e) for e in entries}
    return assemble_lock(spec_name, [by_id[key] for key in sorted(by_id)], shard, assets)


def entry_text(entry: Entry) -> str:
    """One request's part of the lock text, indented to sit under `requests`."""
    body = json.dumps(
        entry_json(entry), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False
    )
    return "    " + json.dumps(entry.id, ensure_ascii=False) + ": " + body.replace("\n", "\n    ")


def assemble_lock(
    spec_name: str,
    fragments: Sequence[str],
    shard: ShardStamp | None = None,
    assets: Mapping[str, AssetRecord] | None = None,
) -> str:
    """The lock's text from `entry_text` fragments, in the order of their request ids (and,
    for a partial lock, the shard it was made from; the delivered assets, if any)."""
    requests = "{\n" + ",\n".join(fragments) + "\n  }" if fragments else "{}"
    spec = json.dumps(spec_name, ensure_ascii=False)
    made_from = ""
    if shard is not None:
        made_from = (
            '  "shard": '
            + json.dumps(shard.as_json(), indent=2, sort_keys=True).replace("\n", "\n  ")
            + ",\n"
        )
    delivered = ""
    if assets:
        table = {path: record.as_json() for path, record in assets.items()}
        text = json.dumps(table, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        delivered = '  "assets": ' + text.replace("\n", "\n  ") + ",\n"
    return (
        f'{{\n{delivered}  "lock_version": {LOCK_VERSION},\n  "requests": {requests},\n'
        f'{made_from}  "spec": {spec}\n}}\n'
    )


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as the lock writes it (a JSON object)."""
    data = {f: getattr(entry, f) for f in Entry.__dataclass_fields__}
    data["vars"] = dict(entry.vars)
    data["body"] = dict(entry.body)
    data["response"] = dict(entry.response)
    data["outputs"] = [o.as_json() for o in entry.outputs]
    return data


def entry_from_json(raw: Mapping[str, Any]) -> Entry:
    """An entry from its JSON object; raises ValueError, KeyError or TypeError if damaged."""
    outputs = tuple(Output(**o) for o in raw["outputs"])
    return Entry(**{**raw, "outputs": outputs})


def write_lock(
    path: Path,
    spec_name: str,
    entries: Iterable[Entry],
    assets: Mapping[str, AssetRecord] | None = None,
) -> None:
    write_atomic(path, render_lock(spec_name, entries, assets=assets).encode())


def read_lock(path: Path) -> Lock | None:
    """The lock at `path`, or None if there is none. Raises LockError if it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"{path}: cannot read the lock: {exc}") from exc
    return parse_lock(text, str(path))


REPAIR = (
    "run `flux-pipeline run --repair-lock SPEC` to drop the damaged entries (their images "
    "stay recoverable from the cache), or restore the lock from git"
)


@functools.cache
def lock_schema() -> dict[str, Any]:
    """The lock's JSON Schema (`data/lock.schema.json`, `flux-pipeline schema --lock`)."""
    text = (
        resources.files("flux_pipeline.store").joinpath("data/lock.schema.json").read_text("utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator(part: str) -> Callable[[Any], Any]:
    """The schema compiled (fastjsonschema: a 10,000-entry lock in 0.1 s, where jsonschema
    takes 1.3 s), for the whole lock or (`part="entry"`) one entry."""
    schema = lock_schema()
    if part in ("entry", "asset"):
        schema = {"$ref": f"#/definitions/{part}", "definitions": schema["definitions"]}
    return compiled_validator(schema)


def _damage(path: str, data: Any, exc: fastjsonschema.JsonSchemaValueException) -> LockError:
    """'the lock is damaged: entry 12 ('a/b', outputs[0].path): ...' and the way forward."""
    where = list(exc.path or [])[1:]  # after "data"
    what = (exc.message or "").split(" must match pattern ")[0]
    if (exc.rule or "") == "pattern" and where and where[-1] == "path":
        what += " must be a relative path with /, inside the lock's folder"
    elif (exc.rule or "") == "pattern":
        what += " must be a lower-case hex sha256"
    what = what.removeprefix("data.").replace("data", "the lock")
    if len(where) >= 2 and where[0] == "requests":
        number = list(data["requests"]).index(where[1]) + 1
        field = "".join(f"[{p}]" if str(p).isdigit() else f".{p}" for p in where[2:]).lstrip(".")
        place = f"entry {number} ({where[1]!r}{', ' + field if field else ''})"
        what = f"{place}: {what.split('.', 2)[-1] if field else what}"
    return LockError(f"{path}: the lock is damaged: {what}; {REPAIR}")


def parse_lock(text: str, path: str) -> Lock:
    """A lock from its text; `path` names it in errors. Raises LockError if it is damaged:
    not JSON, not the lock's schema, or an entry filed under another request's name."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LockError(
            f"{path}: the lock is damaged: not JSON ({exc}); restore it from git or delete it"
        ) from None
    if isinstance(data, dict) and data.get("lock_version") != LOCK_VERSION:
        raise LockError(f"{path}: unknown lock_version {data.get('lock_version')!r}")
    try:
        _validator("lock")(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _damage(path, data, exc) from None
    entries = {}
    for key, raw in data["requests"].items():
        if raw["id"] != key:
            raise LockError(f"{path}: request {key!r} records the id {raw['id']!r}; {REPAIR}")
        entries[key] = entry_from_json(raw)
    assets = {path: AssetRecord(**raw) for path, raw in data.get("assets", {}).items()}
    shard = ShardStamp.from_json(data.get("shard"))
    return Lock(spec=data["spec"], entries=entries, shard=shard, assets=assets)


def repair_lock(path: Path) -> list[str]:
    """Drop the entries of a lock that do not match its schema (or are filed under another
    name), rewriting it; the ids dropped. LockError if what is left is not a lock at all."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LockError(f"{path}: cannot repair the lock: {exc}") from None
    requests = data.get("requests") if isinstance(data, dict) else None
    if not isinstance(requests, dict):
        raise LockError(f"{path}: cannot repair the lock: it holds no 'requests' object")
    kept, dropped = [], []
    for key, raw in requests.items():
        try:
            _validator("entry")(raw)
            if raw["id"] != key:
                raise ValueError(key)
            kept.append(entry_from_json(raw))
        except (fastjsonschema.JsonSchemaValueException, ValueError):
            dropped.append(str(key))
    spec = data.get("spec") if isinstance(data.get("spec"), str) else path.name
    shard = ShardStamp.from_json(data.get("shard"))
    assets = _sound_assets(data.get("assets"))
    if dropped or data.get("lock_version") != LOCK_VERSION:
        write_atomic(path, render_lock(str(spec), kept, shard, assets).encode())
    return dropped


def _sound_assets(raw: Any) -> dict[str, AssetRecord]:
    """The asset records of a damaged lock that still match the schema (a repair keeps them:
    they tell a hand-edited asset from a delivered one)."""
    if not isinstance(raw, dict):
        return {}
    check = _validator("asset")
    sound = {}
    for path, record in raw.items():
        try:
            check(record)
        except fastjsonschema.JsonSchemaValueException:
            continue
        sound[str(path)] = AssetRecord(**record)
    return sound


def mismatch_warning(outputs: Sequence[Output]) -> str:
    """What a result says of images that are not as asked (kept: they are paid for)."""
    differences = sorted({o.mismatch for o in outputs if o.mismatch})
    if not differences:
        return ""
    return f"not as asked ({'; '.join(differences)}): kept, and the lock records it"
