"""The run's lock entries, saved to the lock file whenever something new finished."""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..store.atomic import write_atomic
from ..store.lock import AssetRecord, Entry, ShardStamp, assemble_lock, entry_text


class LockKeeper:
    """Holds the run's lock entries and saves them whenever something new finished.

    Each entry's text is rendered once and the ids are kept sorted, so a save only joins
    texts; it writes the lock atomically and durably. Saves are at least `interval` apart,
    and further for a lock that is slow to write (a burst of finished requests makes one
    save). A run that changed nothing writes nothing. A save that fails is never swallowed:
    `keep_saved`'s `on_failure` is told (the run stops sending) and the final `save` raises it.
    """

    def __init__(
        self,
        spec_name: str,
        path: Path,
        entries: Mapping[str, Entry],
        *,
        changed: bool,
        interval: float = 0.5,
        shard: ShardStamp | None = None,
        assets: Mapping[str, AssetRecord] | None = None,
        on_record: Callable[[Entry], None] | None = None,
    ) -> None:
        self._spec_name = spec_name
        self._shard = shard  # a partial lock says which shard of which requests it holds
        self._assets = dict(assets or {})  # delivered assets: kept as they are (delivery's)
        self.path = path
        self.entries = dict(entries)
        self._order = sorted(self.entries)
        self._fragments: dict[str, str] = {}
        self._interval = interval
        self._dirty = asyncio.Event()
        self._changed = changed
        self._version = self._written = 0
        self._write_lock = threading.Lock()
        self._on_record = on_record  # told of each entry as it is recorded (a remote's push)

    def record(self, entry: Entry) -> None:
        if entry.id not in self.entries:
            bisect.insort(self._order, entry.id)
        self.entries[entry.id] = entry
        self._fragments[entry.id] = entry_text(entry)
        self._changed = True
        self._dirty.set()
        if self._on_record is not None:
            self._on_record(entry)

    def _snapshot(self) -> tuple[int, str]:
        """The lock's text as of now (taken on the event loop, where entries change)."""
        self._changed = False
        for key, entry in self.entries.items():
            if key not in self._fragments:
                self._fragments[key] = entry_text(entry)
        fragments = [self._fragments[k] for k in self._order]
        text = assemble_lock(self._spec_name, fragments, self._shard, self._assets)
        self._version += 1
        return self._version, text

    def _write(self, version: int, text: str) -> None:
        """Write a snapshot unless a newer one is on disk already (saves may overlap)."""
        with self._write_lock:
            if version <= self._written:
                return
            write_atomic(self.path, text.encode())
            self._written = version

    @property
    def saved(self) -> bool:
        """Whether every entry recorded so far is in the lock file."""
        return not self._changed and self._version <= self._written

    def save(self) -> None:
        """Save now, in this thread: at the end of a run, however it ends. A snapshot that
        the saver task took but never wrote (it was cancelled) is taken again. Raises
        OSError if the lock cannot be written."""
        if not self.saved:
            self._write(*self._snapshot())

    async def keep_saved(self, on_failure: Callable[[str], None] = lambda reason: None) -> None:
        """Save after every change, coalescing changes that arrive during a save; a save that
        fails is told to `on_failure` (the run stops sending)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self.saved:
                started = time.monotonic()
                try:
                    await asyncio.to_thread(self._write, *self._snapshot())
                except OSError as exc:
                    on_failure(f"cannot save the lock {self.path}: {exc.strerror or exc}")
                    return  # the final save, at the end of the run, raises it
                # The write-ahead record keeps every answer safe; the lock is saved for its
                # readers (a review, `git diff`) at most twice a second, and a large lock
                # (slow to render and fsync) so that saving takes at most a tenth of the time.
                await asyncio.sleep(max(self._interval, 9 * (time.monotonic() - started)))
