"""Delivery: each asset slot's picked image made into its files, make-like, for no credit.

`assess` says where every slot and asset file stands against the picks and the lock: a slot
is *picked* (or has only one candidate), *unpicked*, *stale* (its pick's request changed or
left the spec: its files stay exactly as they are), or *waiting* (the picked request has not
run yet). A file is *up to date* (the lock records it made from this image with this
transform, and it still has that hash), to *deliver*, *edited* (it differs from what was
delivered, or was never delivered: never overwritten without `force`), or *held* (its slot
is stale or unpicked). `deliver` writes what is to deliver, atomically, and records every
file in the lock's `assets`. No network call is ever made here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import did_you_mean, plural
from ..language.assets import AssetFile, Slot, asset_slots
from ..language.bodies import changed_fields, field_change
from ..language.expansion import Request
from ..language.spec import Spec
from .atomic import sha256_file, write_atomic
from .cache import OutputCache
from .lock import AssetRecord, Lock, read_lock, write_lock
from .picks import Pick, Picks, read_picks


class SlotStatus(str, Enum):
    PICKED = "picked"
    ONLY = "one candidate"
    UNPICKED = "unpicked"
    STALE = "stale"
    WAITING = "waiting"  # the picked request has not run (yet)

    def __str__(self) -> str:
        return self.value


class FileStatus(str, Enum):
    UP_TO_DATE = "up to date"
    DELIVER = "to deliver"
    DELIVERED = "delivered"
    EDITED = "edited"
    HELD = "held"  # its slot has no usable pick: the file stays as it is

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Source:
    """The image a slot delivers: a candidate, and the file the lock records for it."""

    candidate: str
    request: str
    image: int
    body_sha256: str
    sha256: str
    path: Path

    def as_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "request": self.request,
            "image": self.image,
            "body_sha256": self.body_sha256,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class SlotState:
    slot: Slot
    pick: Pick
    status: SlotStatus
    reason: str = ""
    source: Source | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot.name,
            "job": self.slot.job,
            "vars": dict(self.slot.vars),
            "status": self.status.value,
            "reason": self.reason,
            "pick": self.pick.candidate,
            "rejected": list(self.pick.rejected),
            "note": self.pick.note,
            "candidates": [c.name for c in self.slot.candidates],
            "source": self.source.as_json() if self.source else None,
        }


@dataclass(frozen=True, slots=True)
class FileState:
    slot: str
    asset: AssetFile
    status: FileStatus
    reason: str = ""

    @property
    def path(self) -> str:
        return self.asset.path

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "slot": self.slot,
            "status": self.status.value,
            "reason": self.reason,
            "transform": self.asset.transform.as_json(),
        }


@dataclass(frozen=True, slots=True)
class Assets:
    """Where a spec's assets stand: its slots and files, and the lock's records of them."""

    spec: Spec
    slots: tuple[SlotState, ...]
    files: tuple[FileState, ...]
    recorded: Mapping[str, AssetRecord] = field(default_factory=dict)
    undeclared: tuple[str, ...] = ()  # recorded files the spec no longer declares

    def as_json(self) -> dict[str, Any]:
        return {
            "slots": [s.as_json() for s in self.slots],
            "assets": [f.as_json() for f in self.files],
        }

    def problems(self, allow_unpicked: bool = False) -> list[str]:
        """What `check` fails on, each with its way forward."""
        lines = []
        spec = self.spec.path
        for state in self.slots:
            if state.status is SlotStatus.UNPICKED and not allow_unpicked:
                lines.append(
                    f"slot {state.slot.name}: {plural(len(state.slot.candidates), 'candidate')}, "
                    f"no pick; `flux-pipeline pick {spec} {state.slot.name} CANDIDATE` "
                    "(`pick --list` shows them)"
                )
            elif state.status is SlotStatus.STALE:
                for asset in state.slot.files:
                    lines.append(f"{asset.path}: {state.reason}")
                if not state.slot.files:
                    lines.append(f"slot {state.slot.name}: {state.reason}")
            elif state.status is SlotStatus.WAITING:
                lines.append(f"slot {state.slot.name}: {state.reason}")
        for file in self.files:
            if file.status in (FileStatus.DELIVER, FileStatus.EDITED):
                lines.append(f"{file.path}: {file.reason}")
        return lines


def assess(
    spec: Spec,
    requests: Sequence[Request],
    lock: Lock | None,
    picks: Picks | None = None,
    slots: Sequence[Slot] | None = None,
) -> Assets:
    """Where every slot and asset file of the spec stands (nothing is written)."""
    if slots is None:
        slots = asset_slots(spec, requests)[0]
    if picks is None:
        picks = read_picks(spec, slots)
    by_id = {r.id: r for r in requests}
    recorded = dict(lock.assets) if lock else {}
    entries = lock.entries if lock else {}
    states = [_slot_state(spec, s, picks.get(s.name), by_id, entries) for s in slots]
    files = [f for state in states for f in _file_states(spec, state, recorded)]
    declared = {f.path for f in files}
    undeclared = tuple(sorted(p for p in recorded if p not in declared))
    return Assets(spec, tuple(states), tuple(files), recorded, undeclared)


def _slot_state(
    spec: Spec, slot: Slot, pick: Pick, by_id: Mapping[str, Request], entries: Mapping[str, Any]
) -> SlotState:
    if pick.candidate is None:
        if len(slot.candidates) != 1:
            return SlotState(slot, pick, SlotStatus.UNPICKED, "no pick yet")
        only = slot.candidates[0]
        return _sourced(spec, slot, pick, only.name, by_id, entries, SlotStatus.ONLY)
    candidate = slot.candidate(pick.candidate)
    if candidate is None:
        hint = did_you_mean(pick.candidate, [c.name for c in slot.candidates])
        return SlotState(
            slot,
            pick,
            SlotStatus.STALE,
            f"pick {pick.candidate} is stale (its request left the spec{hint}); pick again",
        )
    request = by_id[candidate.request]
    if request.body_sha256 != pick.body_sha256:
        entry = entries.get(request.id)
        old = entry.body if entry is not None and entry.body_sha256 == pick.body_sha256 else None
        if old is None:  # run since: the cache recorded what was asked then
            old = OutputCache(spec.output).body_of(pick.body_sha256)
        changes = changed_fields(old, request.body) if old is not None else []
        what = ", ".join(field_change(old or {}, request.body, p) for p in changes[:2])
        reason = f"pick {pick.candidate} is stale ({what or 'its request changed'}); pick again"
        return SlotState(slot, pick, SlotStatus.STALE, reason)
    return _sourced(spec, slot, pick, candidate.name, by_id, entries, SlotStatus.PICKED)


def _sourced(
    spec: Spec,
    slot: Slot,
    pick: Pick,
    name: str,
    by_id: Mapping[str, Request],
    entries: Mapping[str, Any],
    status: SlotStatus,
) -> SlotState:
    """The slot with its source image, if the lock holds it as the pick saw it."""
    candidate = slot.candidate(name)
    assert candidate is not None
    request = by_id[candidate.request]
    entry = entries.get(request.id)
    if entry is None or entry.body_sha256 != request.body_sha256:
        reason = f"{name} has not been generated yet (`run` makes it, then delivers)"
        return SlotState(slot, pick, SlotStatus.WAITING, reason)
    output = entry.outputs[candidate.image]
    if pick.image_sha256 and output.sha256 != pick.image_sha256:
        reason = f"pick {name} is stale (its image was generated again since); pick again"
        return SlotState(slot, pick, SlotStatus.STALE, reason)
    path = spec.lock_path.parent / output.path
    source = Source(name, request.id, candidate.image, request.body_sha256, output.sha256, path)
    return SlotState(slot, pick, status, source=source)


def _file_states(
    spec: Spec, state: SlotState, recorded: Mapping[str, AssetRecord]
) -> Iterable[FileState]:
    for asset in state.slot.files:
        record = recorded.get(asset.path)
        target = spec.lock_path.parent / asset.path
        actual = sha256_file(target) if target.is_file() else None
        edited = _edited(record, actual)
        if state.source is None:
            yield FileState(state.slot.name, asset, FileStatus.HELD, edited or state.reason)
        elif edited:
            yield FileState(state.slot.name, asset, FileStatus.EDITED, edited)
        elif actual is None:
            why = "missing; `run` (or `deliver`) makes it again" if record else "not delivered yet"
            yield FileState(state.slot.name, asset, FileStatus.DELIVER, why)
        elif record is not None and _made_from(record, state.source, asset):
            yield FileState(state.slot.name, asset, FileStatus.UP_TO_DATE)
        else:
            why = f"to be made again from {state.source.candidate} (`run` or `deliver`)"
            yield FileState(state.slot.name, asset, FileStatus.DELIVER, why)


def _edited(record: AssetRecord | None, actual: str | None) -> str:
    """Why a file must not be overwritten: changed since delivered, or never delivered."""
    if actual is None:
        return ""
    if record is None:
        return "exists and was not delivered by flux-pipeline; `deliver --force` overwrites it"
    if actual != record.sha256:
        return "changed by hand since it was delivered; `deliver --force` overwrites it"
    return ""


def _made_from(record: AssetRecord, source: Source, asset: AssetFile) -> bool:
    return (
        record.source.get("sha256") == source.sha256
        and record.source.get("candidate") == source.candidate
        and dict(record.transform) == asset.transform.as_json()
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """What `deliver` did: the assessment after it, and the files it wrote."""

    assets: Assets
    written: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # edited files left as they are (no --force)
    pruned: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What a run or `deliver` says of it, a line each."""
        spec = self.assets.spec.path
        said = [f"delivered {path}" for path in self.written]
        said += [f"pruned {path}: no longer declared" for path in self.pruned]
        said += [
            f"kept {f.path}: {f.reason}" for f in self.assets.files if f.status is FileStatus.EDITED
        ]
        for state in self.assets.slots:
            if state.status is SlotStatus.STALE:
                said.append(
                    f"slot {state.slot.name}: {state.reason} (its files are kept as they are)"
                )
            elif state.status is SlotStatus.WAITING:
                said.append(f"slot {state.slot.name}: {state.reason}")
            elif state.status is SlotStatus.UNPICKED:
                count = plural(len(state.slot.candidates), "candidate")
                said.append(
                    f"slot {state.slot.name}: {count}, no pick "
                    f"(`flux-pipeline pick {spec} {state.slot.name} CANDIDATE`)"
                )
        return said


def deliver(
    spec: Spec,
    requests: Sequence[Request],
    *,
    force: bool = False,
    prune: bool = False,
) -> Delivery:
    """Make every asset file that is to deliver (and, with `force`, overwrite edited ones),
    and record them in the lock. The caller holds the output folder's writer lock."""
    lock = read_lock(spec.lock_path)
    assets = assess(spec, requests, lock)
    if not assets.slots and not assets.recorded:
        return Delivery(assets)
    records = {p: r for p, r in assets.recorded.items() if p not in assets.undeclared}
    written, refused = [], []
    sources = {s.slot.name: s.source for s in assets.slots}
    for file in assets.files:
        source = sources[file.slot]
        if file.status is FileStatus.EDITED and not force:
            refused.append(file.path)
            continue
        if source is None or file.status not in (FileStatus.DELIVER, FileStatus.EDITED):
            continue
        records[file.path] = _write(spec, file, source)
        written.append(file.path)
    pruned = _prune(spec, assets) if prune else ()
    if not prune:
        records.update({p: assets.recorded[p] for p in assets.undeclared})
    if records != dict(assets.recorded):
        entries = lock.entries.values() if lock else ()
        write_lock(spec.lock_path, spec.name, entries, records)
    after = assess(spec, requests, read_lock(spec.lock_path), slots=[s.slot for s in assets.slots])
    return Delivery(after, tuple(written), tuple(refused), pruned)


def _write(spec: Spec, file: FileState, source: Source) -> AssetRecord:
    from PIL import Image  # only when something is delivered: a run with nothing to do is quick

    from .renditions import render

    data = render(source.path, file.asset.transform)
    target = spec.lock_path.parent / file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
    with Image.open(target) as made:
        width, height = made.size
    return AssetRecord(
        slot=file.slot,
        source=source.as_json(),
        transform=file.asset.transform.as_json(),
        sha256=sha256_file(target),
        bytes=len(data),
        width=width,
        height=height,
        format=file.asset.transform.format,
    )


def _prune(spec: Spec, assets: Assets) -> tuple[str, ...]:
    """Delete the recorded files the spec no longer declares, if unchanged since delivered."""
    pruned = []
    for path in assets.undeclared:
        target = spec.lock_path.parent / path
        record = assets.recorded[path]
        if target.is_file() and sha256_file(target) == record.sha256:
            target.unlink()
            pruned.append(posixpath.normpath(path))
    return tuple(pruned)


def deliver_when_needed(
    spec: Spec, requests: Sequence[Request], *, force: bool = False, wait: float = 0.0
) -> Delivery:
    """`deliver`, taking the output folder's writer lock only when a file is to be written:
    a run with nothing to do neither waits for another run nor writes anything."""
    from .writer_lock import hold_output_folder

    assets = assess(spec, requests, read_lock(spec.lock_path))
    edited = tuple(f.path for f in assets.files if f.status is FileStatus.EDITED)
    writes = any(f.status is FileStatus.DELIVER for f in assets.files) or (force and edited)
    if not writes:
        return Delivery(assets, refused=edited)
    with hold_output_folder(
        spec.output, command="run", spec=spec.path, lock_path=spec.lock_path, wait=wait
    ):
        return deliver(spec, requests, force=force)
