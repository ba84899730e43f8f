"""The picks file (`SPEC.picks.yaml`): which candidate each asset slot delivers.

A decision people make, kept beside the lock and committed with it, reviewed like code: for
each slot the picked candidate (its name: the request's id, with `:N` for the Nth image of a
request that makes several), the request's body hash and the image's sha256 when it was
picked (so a pick whose request changed is *stale*, never silently moved to a new image),
optionally `rejected:` candidates and a `note:`. Sorted, no timestamps; `pick` and the review
page write it atomically, and a hand edit is checked against the spec at its line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, Problem, SpecInvalid, did_you_mean
from ..language.assets import Slot, slots_of
from ..language.expansion import Request
from ..language.spec import LineDict, Spec, load_yaml
from .atomic import write_atomic
from .lock import read_lock

PICKS_VERSION = 1
HEADER = """\
# Picks of {spec}: the candidate each asset slot delivers (`flux-pipeline pick`, the
# review page). Commit it with the lock; `run` delivers the picks, `check` verifies them.
"""
_KEYS = ("pick", "body_sha256", "image_sha256", "rejected", "note")


@dataclass(frozen=True, slots=True)
class Pick:
    """What was decided for one slot (a pick, rejections, a note: any of them)."""

    candidate: str | None = None
    body_sha256: str = ""
    image_sha256: str = ""
    rejected: tuple[str, ...] = ()
    note: str = ""
    line: int = 0  # where the slot is in the file (0: not read from one)

    def as_yaml(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.candidate is not None:
            data.update(
                pick=self.candidate, body_sha256=self.body_sha256, image_sha256=self.image_sha256
            )
        if self.rejected:
            data["rejected"] = sorted(set(self.rejected))
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True, slots=True)
class Picks:
    """Every slot's decision, by slot name."""

    path: Path
    slots: Mapping[str, Pick] = field(default_factory=dict)

    def get(self, slot: str) -> Pick:
        return self.slots.get(slot, Pick())

    def with_slot(self, slot: str, pick: Pick | None) -> Picks:
        """These picks with one slot's decision replaced (None: removed)."""
        slots = {k: v for k, v in self.slots.items() if k != slot}
        if pick is not None and pick.as_yaml():
            slots[slot] = replace(pick, line=0)
        return Picks(self.path, slots)

    def text(self, spec_file: str) -> str:
        document = {
            "version": PICKS_VERSION,
            "slots": {name: self.slots[name].as_yaml() for name in sorted(self.slots)},
        }
        body = yaml.safe_dump(  # in the order written: the version, then slots by name
            document, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
        )
        return HEADER.format(spec=spec_file) + body

    def save(self, spec: Spec) -> None:
        write_atomic(self.path, self.text(spec.path.name).encode())


def picks_path(spec: Spec) -> Path:
    return spec.path.with_name(
        spec.path.name.removesuffix(".yaml").removesuffix(".yml") + ".picks.yaml"
    )


def read_picks(spec: Spec, slots: Sequence[Slot]) -> Picks:
    """The spec's picks file (none: no picks). SpecInvalid, at the file's lines, for what
    does not fit the spec: an unknown slot or candidate (with a did-you-mean), a bad field."""
    path = picks_path(spec)
    if not path.exists():
        return Picks(path)
    doc = load_yaml(path, what="picks file")
    file = str(path)
    if doc is None:
        return Picks(path)
    if not isinstance(doc, dict) or doc.get("version") != PICKS_VERSION:
        raise SpecInvalid(
            [Problem(f"not a picks file: it needs version: {PICKS_VERSION}", file, 1)]
        )
    raw = doc.get("slots") or {}
    if not isinstance(raw, dict):
        raise SpecInvalid(
            [Problem("slots must be a mapping of slot names", file, _line(doc, "slots"))]
        )
    by_name = {slot.name: slot for slot in slots}
    problems: list[Problem] = []
    picks = {}
    for name, entry in raw.items():
        line = _line(raw, name)
        slot = by_name.get(str(name))
        if slot is None:
            hint = did_you_mean(str(name), by_name) or f" (the spec's slots: {_listed(by_name)})"
            problems.append(Problem(f"no slot {name!r} in {spec.path.name}{hint}", file, line))
            continue
        pick = _pick(file, slot, entry, line, problems)
        if pick is not None:
            picks[slot.name] = pick
    if problems:
        raise SpecInvalid(problems)
    return Picks(path, picks)


def _pick(file: str, slot: Slot, entry: Any, line: int, problems: list[Problem]) -> Pick | None:
    if not isinstance(entry, dict):
        problems.append(
            Problem(f"slot {slot.name!r}: expected pick:, rejected: or note:", file, line)
        )
        return None
    for key in entry:
        if key not in _KEYS:
            hint = did_you_mean(str(key), _KEYS) or f" (use {', '.join(_KEYS)})"
            problems.append(
                Problem(f"slot {slot.name!r}: unknown key {key!r}{hint}", file, _line(entry, key))
            )
    names = [c.name for c in slot.candidates]
    candidate = entry.get("pick")
    rejected = entry.get("rejected") or []
    if not isinstance(rejected, list):
        rejected = [rejected]
    for chosen, key in [(candidate, "pick"), *((r, "rejected") for r in rejected)]:
        if chosen is not None and str(chosen) not in names:
            # A pick whose request left the spec is stale, not an error: `check` says so.
            if key == "pick":
                continue
            hint = did_you_mean(str(chosen), names)
            problems.append(
                Problem(
                    f"slot {slot.name!r}: {chosen!r} is no candidate{hint}", file, _line(entry, key)
                )
            )
    return Pick(
        candidate=None if candidate is None else str(candidate),
        body_sha256=str(entry.get("body_sha256", "")),
        image_sha256=str(entry.get("image_sha256", "")),
        rejected=tuple(str(r) for r in rejected),
        note=str(entry.get("note", "") or ""),
        line=line,
    )


def _line(mapping: Any, key: Any) -> int:
    return mapping.key_lines.get(key, mapping.line) if isinstance(mapping, LineDict) else 1


def _listed(names: Mapping[str, Any]) -> str:
    shown = sorted(names)[:8]
    return ", ".join(shown) + (", ..." if len(names) > 8 else "") if shown else "none"


def choose(
    spec: Spec,
    requests: Sequence[Request],
    slot_name: str,
    candidate: str | None = None,
    *,
    reject: Sequence[str] = (),
    note: str | None = None,
    clear: bool = False,
) -> Picks:
    """Change one slot's decision in the picks file: pick `candidate`, reject candidates
    (rejecting the pick un-picks it), set a note, or `clear` the slot (see `decide`)."""
    slots = slots_of(spec, requests)
    current = read_picks(spec, slots).get(slot_name)
    if clear:
        return decide(spec, requests, slot_name, None, (), "", slots=slots)
    rejected = {*current.rejected, *reject}
    if candidate is not None:
        rejected.discard(candidate)
    picked = candidate or (current.candidate if current.candidate not in rejected else None)
    said = current.note if note is None else note
    return decide(spec, requests, slot_name, picked, sorted(rejected), said, slots=slots)


def decide(
    spec: Spec,
    requests: Sequence[Request],
    slot_name: str,
    candidate: str | None,
    rejected: Sequence[str] = (),
    note: str = "",
    *,
    slots: Sequence[Slot] | None = None,
) -> Picks:
    """Set one slot's whole decision in the picks file, atomically: the pick (it must have
    been generated: its body hash and image hash are recorded), the rejected candidates and
    the note. ConfigError naming the slots or candidates for a wrong name."""
    slots = slots if slots is not None else slots_of(spec, requests)
    by_name = {s.name: s for s in slots}
    slot = by_name.get(slot_name)
    if slot is None:
        hint = did_you_mean(slot_name, by_name) or f" (its slots: {_listed(by_name)})"
        raise ConfigError(f"no slot {slot_name!r} in {spec.path}{hint}")
    picks = read_picks(spec, slots)
    for name in [*rejected, *([candidate] if candidate else [])]:
        if slot.candidate(name) is None:
            names = [c.name for c in slot.candidates]
            hint = did_you_mean(name, names) or f" (its candidates: {', '.join(names[:8])})"
            raise ConfigError(f"{name!r} is no candidate of slot {slot.name!r}{hint}")
    current = picks.get(slot.name)
    if candidate is None:
        decision = Pick(rejected=tuple(sorted(set(rejected))), note=note)
    elif candidate == current.candidate:  # kept as it was picked (a stale pick stays stale)
        decision = replace(current, rejected=tuple(sorted(set(rejected))), note=note)
    else:
        decision = replace(
            _picked(spec, requests, slot, candidate, Pick()),
            rejected=tuple(sorted(set(rejected) - {candidate})),
            note=note,
        )
    picks = picks.with_slot(slot.name, decision)
    picks.save(spec)
    return picks


def _picked(spec: Spec, requests: Sequence[Request], slot: Slot, name: str, current: Pick) -> Pick:
    chosen = slot.candidate(name)
    assert chosen is not None
    request = next(r for r in requests if r.id == chosen.request)
    lock = read_lock(spec.lock_path)
    entry = lock.entries.get(request.id) if lock else None
    if entry is None or entry.body_sha256 != request.body_sha256:
        raise ConfigError(
            f"{name} has not been generated as the spec asks now: `flux-pipeline run "
            f"{spec.path}` first, then pick"
        )
    image = entry.outputs[chosen.image].sha256
    return replace(current, candidate=name, body_sha256=request.body_sha256, image_sha256=image)
