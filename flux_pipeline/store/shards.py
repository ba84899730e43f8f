"""Splitting a run across machines: `run --shard K/N` does a stable share of the requests
(chosen by name, so adding a request never moves the others) and writes a partial lock beside
the spec; `merge` combines the partial locks into the spec's lock."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, LockError
from ..language.assets import has_assets
from ..language.expansion import Request
from ..language.spec import Spec
from ..language.validation import validate
from .lock import Entry, Lock, ShardStamp, read_lock, write_lock
from .writer_lock import hold_output_folder

if TYPE_CHECKING:
    from .delivery import Delivery


def shard_of(request_id: str, count: int) -> int:
    """The shard (1..count) a request belongs to: from its name's hash, not its position."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (`run --shard K/N`)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise ConfigError(f"--shard must be K/N with 1 <= K <= N, like 2/4, not {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __contains__(self, request_id: str) -> bool:
        return shard_of(request_id, self.count) == self.index

    def lock_path(self, spec: Spec) -> Path:
        """Where this shard's partial lock goes, beside the spec's lock."""
        stem = spec.lock_path.name.removesuffix(".lock.json")
        return spec.lock_path.with_name(f"{stem}.lock.shard-{self.index}-of-{self.count}.json")


def partial_locks(spec: Spec) -> list[Path]:
    stem = spec.lock_path.name.removesuffix(".lock.json")
    return sorted(spec.lock_path.parent.glob(f"{stem}.lock.shard-*-of-*.json"))


def current_lock(spec: Spec, shard: Shard | None) -> Lock | None:
    """The lock a run plans against: the spec's, with the shard's own partial lock (from an
    earlier, unmerged run of the same shard) over it."""
    main = read_lock(spec.lock_path)
    if shard is None:
        return main
    partial = read_lock(shard.lock_path(spec))
    if partial is None:
        return main
    return Lock(spec.name, {**(main.entries if main else {}), **partial.entries})


def made_from(shard: Shard, requests: Iterable[Request]) -> ShardStamp:
    """What a partial lock records of the spec it was made from: its shard, and a hash of the
    shard's expanded requests (each name and body hash), which `merge` compares with the
    spec's now."""
    lines = sorted(f"{r.id} {r.body_sha256}\n" for r in requests if r.id in shard)
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    return ShardStamp(shard.index, shard.count, digest)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What `merge` combined: each partial lock with its number of requests, the total, and
    the shards it merged without (with `--partial`)."""

    merged: tuple[tuple[Path, int], ...]
    requests: int
    missing: tuple[int, ...] = ()
    delivery: Delivery | None = None  # the assets delivered once the lock is whole


def merge(spec: Spec, *, wait: float = 0.0, partial: bool = False) -> MergeResult:
    """Combine every partial lock beside the spec into its lock, then remove them, holding
    the output folder's writer lock (a run of the spec may be writing the lock).

    Refused, with nothing written (LockError): a partial lock made from another version of
    the spec than the one now (its shard's requests differ), partial locks of different
    shard counts, a shard without its partial lock (unless `partial`), and two partial locks
    that record the same request differently. Entries of requests no longer in the spec are
    dropped; an entry never replaces one that matches the spec with one that does not."""
    with hold_output_folder(
        spec.output, command="merge", spec=spec.path, lock_path=spec.lock_path, wait=wait
    ):
        return _merge(spec, partial)


def _merge(spec: Spec, partial: bool) -> MergeResult:
    paths = partial_locks(spec)
    if not paths:
        raise ConfigError(f"no partial locks to merge beside {spec.path} (run --shard K/N first)")
    requests = validate(spec)
    bodies = {r.id: r.body_sha256 for r in requests}
    locks = {path: read_lock(path) or Lock(spec.name, {}) for path in paths}
    missing = _refusals(spec, requests, locks, partial)
    main = read_lock(spec.lock_path)
    entries = {k: v for k, v in (main.entries if main else {}).items() if k in bodies}
    for key, entry in _combined(locks).items():
        current = entries.get(key)
        fits = entry.body_sha256 == bodies.get(key)
        if key in bodies and (fits or current is None or current.body_sha256 != bodies[key]):
            entries[key] = entry
    write_lock(spec.lock_path, spec.name, entries.values(), main.assets if main else None)
    _remove(paths)
    merged = tuple((path, len(lock.entries)) for path, lock in locks.items())
    # Shards deliver nothing (each holds part of the images): the merged lock does.
    delivered = None
    if has_assets(spec):
        from .delivery import deliver

        delivered = deliver(spec, requests)
    return MergeResult(merged, len(entries), missing, delivered)


def _refusals(
    spec: Spec, requests: list[Request], locks: dict[Path, Lock], partial: bool
) -> tuple[int, ...]:
    """Raise LockError listing why the partial locks cannot be merged; the shards missing
    (allowed with `partial`)."""
    problems, shards = [], []
    for path, lock in locks.items():
        stamp = lock.shard
        if stamp is None:
            problems.append(
                f"{path.name} does not say which spec it was made from (an older "
                "flux-pipeline wrote it): run its shard again"
            )
            continue
        shard = Shard(stamp.index, stamp.count)
        shards.append(shard)
        if stamp != made_from(shard, requests):
            problems.append(
                f"{path.name} was made from another version of {spec.path.name} (the requests "
                f"of shard {shard.index}/{shard.count} have changed since): run --shard "
                f"{shard.index}/{shard.count} again"
            )
    counts = sorted({s.count for s in shards})
    missing: tuple[int, ...] = ()
    if len(counts) > 1:
        problems.append(f"the partial locks split the spec {' and '.join(map(str, counts))} ways")
    elif counts:
        missing = tuple(sorted(set(range(1, counts[0] + 1)) - {s.index for s in shards}))
        if missing and not partial:
            names = ", ".join(f"{k}/{counts[0]}" for k in missing)
            problems.append(f"no partial lock of shard {names}: run it, or merge with --partial")
    if problems:
        raise LockError("nothing merged:\n  " + "\n  ".join(problems))
    return missing


def _combined(locks: dict[Path, Lock]) -> dict[str, Entry]:
    """The entries of all partial locks; LockError if two record a request differently."""
    owners: dict[str, tuple[Path, Entry]] = {}
    conflicts = []
    for path, lock in locks.items():
        for key, entry in lock.entries.items():
            seen = owners.get(key)
            if seen is not None and seen[1] != entry:
                conflicts.append(f"{key} ({seen[0].name} and {path.name})")
            owners[key] = (path, entry)
    if conflicts:
        raise LockError(
            f"{len(conflicts)} requests differ between partial locks: " + "; ".join(conflicts)
        )
    return {k: e for k, (_, e) in owners.items()}


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
