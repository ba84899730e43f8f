"""Reviewing results without the network: `check` (is the lock current?) and `diff` (what
changed between two versions of a lock)."""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LockError
from ..language.assets import has_assets
from ..language.bodies import body_changes, changed_fields, field_change
from ..language.expansion import Request
from ..language.spec import Spec
from ..language.validation import validate
from ..provider.images import EXTENSIONS
from ..store.delivery import Assets, assess
from ..store.lock import AssetRecord, Entry, Lock, parse_lock, read_lock
from ..store.output_folder import lock_name_of
from ..store.planning import RequestState, plan
from ..store.remote import Remote, in_remote
from ..store.writer_lock import FOLDER, OWN_NAMES
from . import git

REMOVED = "removed"
MISMATCH = "mismatch"
LEFTOVER = "leftover"
IMAGE_SUFFIXES = frozenset({*EXTENSIONS.values(), ".jpeg"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One request that is not up to date, and why."""

    id: str
    state: str  # new, changed, missing, corrupt, removed; mismatch (with --strict)
    reason: str


@dataclass(frozen=True, slots=True)
class CheckReport:
    spec: Spec
    requests: int
    findings: tuple[Finding, ...]
    # Up-to-date requests whose images are not as asked (kept: paid for); findings if strict.
    mismatches: tuple[Finding, ...] = ()
    # Images in the output folder no lock entry names (a run dropped their requests); a
    # warning, findings if strict.
    leftovers: tuple[str, ...] = ()
    assets: Assets | None = None  # where the spec's asset slots and files stand, if it has any
    asset_problems: tuple[str, ...] = ()  # unpicked, stale, missing or changed assets

    @property
    def ok(self) -> bool:
        return not self.findings and not self.asset_problems

    @property
    def gone(self) -> int:
        """How many findings are lock entries no longer in the spec (not requests of it)."""
        return sum(1 for f in self.findings if f.state == REMOVED)

    def as_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.name,
            "path": str(self.spec.path),
            "up_to_date": self.ok,
            "requests": self.requests,
            "stale": [{"id": f.id, "state": f.state, "reason": f.reason} for f in self.findings],
            "mismatches": [{"id": f.id, "reason": f.reason} for f in self.mismatches],
            "leftovers": list(self.leftovers),
            "asset_problems": list(self.asset_problems),
            **(self.assets.as_json() if self.assets else {"slots": [], "assets": []}),
        }


def check(
    spec: Spec,
    requests: Sequence[Request] | None = None,
    *,
    strict: bool = False,
    allow_unpicked: bool = False,
    remote: Remote | None = None,
) -> CheckReport:
    """Whether every request of the spec is in the lock with the same body and every output
    is on disk with its recorded hash; what is stale otherwise. No network. An image the API
    delivered other than asked (recorded in the lock) passes, unless `strict`. Assets: every
    slot picked (unless `allow_unpicked`), no pick stale, every file delivered as recorded.
    With a `remote`, a request whose images are missing here but in the remote says so."""
    lock = read_lock(spec.lock_path)
    if requests is None:
        requests = validate(spec)
    the_plan = plan(spec, requests, lock)
    there = in_remote(the_plan.items, remote) if remote is not None else set()
    pull = f"; the remote cache has it: `flux-pipeline pull {spec.path}` restores it"
    findings = [
        Finding(
            item.request.id,
            item.state.kind.value,
            (item.state.reason or _why(item.state.kind))
            + (pull if item.request.body_sha256 in there else ""),
        )
        for item in the_plan.items
        if not item.state.up_to_date
    ]
    findings += [
        Finding(key, REMOVED, "in the lock but no longer in the spec") for key in the_plan.gone
    ]
    entries = lock.entries if lock else {}
    mismatches = []
    for item in the_plan.items:
        outputs = entries[item.request.id].outputs if item.state.up_to_date else ()
        differences = "; ".join(o.mismatch for o in outputs if o.mismatch)
        if differences:
            mismatches.append(Finding(item.request.id, MISMATCH, differences))
    leftovers = _leftovers(spec, entries.values())
    if strict:
        findings += mismatches
        findings += [Finding(name, LEFTOVER, "no lock entry names it") for name in leftovers]
    report = CheckReport(spec, len(the_plan.items), tuple(findings), tuple(mismatches))
    assets = assess(spec, requests, lock) if has_assets(spec) else None
    problems = tuple(assets.problems(allow_unpicked)) if assets else ()
    return dataclasses.replace(
        report, leftovers=tuple(leftovers), assets=assets, asset_problems=problems
    )


def _leftovers(spec: Spec, entries: Iterable[Entry]) -> list[str]:
    """Images in the output folder (as the lock names files) that no entry names: the tool's
    own folders and another spec's output folder inside it are not looked in."""
    named = {o.path for e in entries for o in e.outputs}
    written = lock_name_of(spec.output, spec.lock_path.parent)
    found = []
    for here, folders, files in os.walk(spec.output):
        folders[:] = sorted(
            f for f in folders if f not in OWN_NAMES and not (Path(here, f, FOLDER)).is_dir()
        )
        inside = Path(os.path.relpath(here, spec.output)).as_posix()
        for name in files:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES or name.startswith("gallery."):
                continue
            relative = posixpath.normpath(f"{written}/{inside}/{name}")  # as the lock names it
            if relative not in named:
                found.append(relative)
    return sorted(found)


def _why(kind: RequestState) -> str:
    return "not in the lock" if kind is RequestState.NEW else kind.value


# ----- diff ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: Mapping[str, tuple[str, ...]]  # id -> changed fields
    # id -> each change as a user reads it, old and new values shortened
    shown: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # asset file -> what changed in its delivery: "added from C", "removed", "C1 → C2"
    assets: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.assets)

    def as_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {k: list(v) for k, v in self.changed.items()},
            "changes": {k: list(v) for k, v in self.shown.items()},
            "assets": dict(self.assets),
        }


def diff_locks(old: Lock | None, new: Lock | None) -> LockDiff:
    """Requests added, removed, or changed (with the fields that changed) from old to new."""
    before = old.entries if old else {}
    after = new.entries if new else {}
    changed, shown = {}, {}
    for key in sorted(set(before) & set(after)):
        fields = _entry_changes(before[key], after[key])
        if fields:
            changed[key] = tuple(fields)
            shown[key] = _shown(before[key].body, after[key].body, fields)
    return LockDiff(
        added=tuple(sorted(set(after) - set(before))),
        removed=tuple(sorted(set(before) - set(after))),
        changed=changed,
        shown=shown,
        assets=_asset_changes(old.assets if old else {}, new.assets if new else {}),
    )


def _asset_changes(
    before: Mapping[str, AssetRecord], after: Mapping[str, AssetRecord]
) -> dict[str, str]:
    """Each delivered asset file that came, went or was made again, as a user reads it."""
    changes = {}
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if new is None:
            changes[path] = "no longer delivered"
        elif old is None:
            changes[path] = f"delivered from {new.source['candidate']}"
        elif old.sha256 != new.sha256:
            source = (old.source["candidate"], new.source["candidate"])
            what = f"{source[0]} → {source[1]}" if source[0] != source[1] else source[0]
            if dict(old.transform) != dict(new.transform):
                what += " (transform changed)"
            changes[path] = f"made again from {what}"
    return changes


def _shown(
    old: Mapping[str, Any], new: Mapping[str, Any], fields: Sequence[str]
) -> tuple[str, ...]:
    """Each change with its values where it is a body field (`body.prompt ('a' → 'b')`)."""
    return tuple(
        "body." + field_change(old, new, f.removeprefix("body.")) if f.startswith("body.") else f
        for f in fields
    )


def diff_spec(spec: Spec, old: Lock | None) -> LockDiff:
    """What the spec asks for now (not run yet) against a lock: requests it adds, drops, and
    whose bodies changed (with the fields)."""
    the_plan = plan(spec, None, old)
    before = old.entries if old else {}
    changed, shown = {}, {}
    for item in the_plan.items:
        entry = before.get(item.request.id)
        if entry is not None and entry.body_sha256 != item.request.body_sha256:
            changes = body_changes(entry.body, item.request.body)
            fields = [f if f.startswith("input ") else f"body.{f}" for f in changes]
            changed[item.request.id] = tuple(fields)
            shown[item.request.id] = _shown(entry.body, item.request.body, fields)
    return LockDiff(
        added=tuple(sorted(i.request.id for i in the_plan.items if i.request.id not in before)),
        removed=tuple(sorted(the_plan.gone)),
        changed=changed,
        shown=shown,
    )


def _entry_changes(old: Entry, new: Entry) -> list[str]:
    changes = body_changes(old.body, new.body)
    fields = [f if f.startswith("input ") else f"body.{f}" for f in changes]
    if [o.sha256 for o in old.outputs] != [o.sha256 for o in new.outputs]:
        fields.append("outputs")
    fields += [f"vars.{f}" for f in changed_fields(old.vars, new.vars)]
    return fields


def lock_at(spec: Spec, ref: str) -> Lock | None:
    """The spec's lock as it was at a git revision `ref`, or the lock file at path `ref`."""
    as_file = Path(ref)
    if as_file.is_file():
        return read_lock(as_file)
    try:
        text = git.show(spec.lock_path, ref)
    except git.NoRepository as exc:
        raise LockError(f"{ref!r} is neither a lock file nor a git revision here: {exc}") from exc
    except git.GitError as exc:
        raise LockError(f"cannot read the lock at {ref!r}: {exc}") from exc
    if text is None:
        return None  # the lock did not exist at that revision: everything is added
    return parse_lock(text.decode("utf-8", "replace"), f"{ref}:{spec.lock_path.name}")
