"""Splitting a run across machines: `run --shard K/N` does a stable share of the requests
(chosen by name, so adding a request never moves the others) and writes a partial lock beside
the spec; `merge` combines the partial locks into the spec's lock."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LockError
from .lock import Entry, Lock, read_lock, write_lock
from .spec import Spec
from .validation import validate
from .writer_lock import hold_output_folder


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


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What `merge` combined."""

    merged: tuple[Path, ...]  # the partial locks combined (and removed)
    requests: int


def merge(spec: Spec, *, wait: float = 0.0) -> MergeResult:
    """Combine every partial lock beside the spec into its lock, then remove them, holding
    the output folder's writer lock (a run of the spec may be writing the lock).

    Entries of requests no longer in the spec are dropped. Two partial locks that record the
    same request differently are a conflict: nothing is written and LockError lists them."""
    with hold_output_folder(spec.output, command="merge", spec=spec.path, wait=wait):
        return _merge(spec)


def _merge(spec: Spec) -> MergeResult:
    paths = partial_locks(spec)
    if not paths:
        raise ConfigError(f"no partial locks to merge beside {spec.path} (run --shard K/N first)")
    wanted = {r.id for r in validate(spec)}
    main = read_lock(spec.lock_path)
    entries = {k: v for k, v in (main.entries if main else {}).items() if k in wanted}
    owners: dict[str, tuple[Path, Entry]] = {}
    conflicts = []
    for path in paths:
        lock = read_lock(path)
        for key, entry in (lock.entries if lock else {}).items():
            seen = owners.get(key)
            if seen is not None and seen[1] != entry:
                conflicts.append(f"{key} ({seen[0].name} and {path.name})")
            owners[key] = (path, entry)
    if conflicts:
        raise LockError(
            f"{len(conflicts)} requests differ between partial locks: " + "; ".join(conflicts)
        )
    entries.update({k: e for k, (_, e) in owners.items() if k in wanted})
    write_lock(spec.lock_path, spec.name, entries.values())
    _remove(paths)
    return MergeResult(tuple(paths), len(entries))


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
