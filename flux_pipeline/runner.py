"""The run: do what the plan says, concurrently, and keep the lock current as requests finish.

Workers take the requests that are not up to date, send them through the `ApiClient`, store
their images under the output folder and record them in the lock, which a writer task saves
atomically as soon as something new finished (coalescing bursts), so a run killed at any
moment loses no finished work. A 401 or 403 stops the run at once: no further request is sent.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fnmatch
import json
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from .cache import OutputCache
from .client import ApiClient, Attempt, Generation, RetryPolicy, make_http_client
from .errors import ConfigError, RequestFailed, RunStopped, Terminated
from .expansion import Request
from .files import sweep_temp_files, write_atomic
from .lock import Entry, Output, assemble_lock, entry_text
from .models import get_model
from .planning import Plan, PlanItem, plan
from .shards import current_lock, in_shard, shard_lock_path
from .spec import Spec
from .validation import output_stems

JOURNAL = ".journal.jsonl"
T = TypeVar("T")
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@dataclass(frozen=True, slots=True)
class Rate:
    """Requests per second shared by all workers, parsed from `10/s` or `100/m`."""

    per_second: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*", text)
        if not match or float(match.group(1)) <= 0:
            raise ConfigError(f"--rate must look like 10/s or 100/m, not {text!r}")
        value = float(match.group(1))
        return cls(value if match.group(2).startswith("s") else value / 60)


@dataclass(frozen=True, slots=True)
class RunOptions:
    concurrency: int = 4
    rate: Rate | None = None
    retries: int = 3
    timeout: float = 120.0
    only: tuple[str, ...] = ()
    force: bool = False
    prune: bool = False
    max_credits: float | None = None
    max_requests: int | None = None
    transport: str = "aiohttp"
    shard: tuple[int, int] | None = None  # (K, N): do shard K of N, into a partial lock


# ----- results and events ------------------------------------------------------------------

DONE = "done"
RESTORED = "restored"  # put back from the cache of earlier outputs, without a request
SKIPPED = "skipped"
FAILED = "failed"
NOT_SENT = "not sent"


@dataclass(frozen=True, slots=True)
class RequestResult:
    id: str
    status: str  # done, skipped, failed, not sent
    reason: str = ""
    credits: float | None = None
    attempts: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RunResult:
    spec: Spec
    results: tuple[RequestResult, ...]
    seconds: float
    stopped: str | None = None  # why the run stopped sending, if it did

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def credits(self) -> float:
        return sum(r.credits or 0 for r in self.results)

    @property
    def ok(self) -> bool:
        return self.stopped is None and not any(
            r.status in (FAILED, NOT_SENT) for r in self.results
        )


#: Called with each request's result as it finishes (for progress displays).
Listener = Callable[[RequestResult], None]


# ----- pacing ------------------------------------------------------------------------------


class Pacer:
    """Spaces request starts evenly at a shared rate; `None` means no limit."""

    def __init__(
        self,
        rate: Rate | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = 1 / rate.per_second if rate else 0.0
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    async def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)


# ----- the lock keeper ---------------------------------------------------------------------


class LockKeeper:
    """Holds the run's lock entries and saves them whenever something new finished.

    Each entry's text is rendered once and the ids are kept sorted, so a save only joins
    texts; it writes the lock atomically and durably. Saves are at least `interval` apart,
    and further for a lock that is slow to write (a burst of finished requests makes one
    save). A run that changed nothing writes nothing.
    """

    def __init__(
        self,
        spec: Spec,
        path: Path,
        entries: Mapping[str, Entry],
        changed: bool,
        interval: float = 0.05,
    ) -> None:
        self._spec = spec
        self._path = path
        self.entries = dict(entries)
        self._order = sorted(self.entries)
        self._fragments: dict[str, str] = {}
        self._interval = interval
        self._dirty = asyncio.Event()
        self._changed = changed
        self._version = self._written = 0
        self._write_lock = threading.Lock()

    def record(self, entry: Entry) -> None:
        if entry.id not in self.entries:
            bisect.insort(self._order, entry.id)
        self.entries[entry.id] = entry
        self._fragments[entry.id] = entry_text(entry)
        self._changed = True
        self._dirty.set()

    def _snapshot(self) -> tuple[int, str]:
        """The lock's text as of now (taken on the event loop, where entries change)."""
        self._changed = False
        for key, entry in self.entries.items():
            if key not in self._fragments:
                self._fragments[key] = entry_text(entry)
        text = assemble_lock(self._spec.name, [self._fragments[k] for k in self._order])
        self._version += 1
        return self._version, text

    def _write(self, version: int, text: str) -> None:
        """Write a snapshot unless a newer one is on disk already (saves may overlap)."""
        with self._write_lock:
            if version <= self._written:
                return
            write_atomic(self._path, text.encode())
            self._written = version

    def save(self) -> None:
        """Save now, in this thread: at the end of a run, however it ends. A snapshot that
        the saver task took but never wrote (it was cancelled) is taken again."""
        if self._changed or self._version > self._written:
            self._write(*self._snapshot())

    async def keep(self) -> None:
        """Save after every change, coalescing changes that arrive during a save."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self._changed:
                started = time.monotonic()
                try:
                    await asyncio.to_thread(self._write, *self._snapshot())
                except OSError:
                    return  # the final save, at the end of the run, raises it
                # A large lock costs more to write (and fsync): space the saves so that
                # writing it takes at most a fifth of the run's time.
                await asyncio.sleep(max(self._interval, 4 * (time.monotonic() - started)))


# ----- the run -----------------------------------------------------------------------------


def plan_for(spec: Spec, requests: Sequence[Request] | None, options: RunOptions) -> Plan:
    """The plan a run of these options works from (a shard's against its partial lock too)."""
    return plan(spec, requests, current_lock(spec, options.shard))


def todo(spec: Spec, requests: Sequence[Request] | None, options: RunOptions) -> list[PlanItem]:
    """What a run with these options would send (`run --dry-run`)."""
    return select(plan_for(spec, requests, options).items, options)


def select(items: Iterable[PlanItem], options: RunOptions) -> list[PlanItem]:
    """The plan items this run must do: in its shard, matching --only, and not up to date
    (or all, with --force)."""
    chosen = []
    for item in items:
        if not in_shard(item.request.id, options.shard):
            continue
        if options.only and not any(fnmatch.fnmatchcase(item.request.id, g) for g in options.only):
            continue
        if options.force or not item.state.up_to_date:
            chosen.append(item)
    return chosen


@dataclass
class _Run:
    spec: Spec
    client: ApiClient
    keeper: LockKeeper
    options: RunOptions
    journal: IO[str]
    listener: Listener | None
    folder: OutputFolder
    delivery_slots: asyncio.Semaphore
    cache: OutputCache
    stopped: str | None = None
    sent: int = 0
    credits: float = 0.0
    results: list[RequestResult] = field(default_factory=list)
    deliveries: set[asyncio.Future[None]] = field(default_factory=set)

    def finish(self, result: RequestResult, attempts: Sequence[Attempt] = ()) -> None:
        self.results.append(result)
        if self.listener:
            self.listener(result)
        line = (
            json.dumps(
                {
                    "event": "request",
                    "id": result.id,
                    "status": result.status,
                    "reason": result.reason,
                    "seconds": round(result.seconds, 4),
                    "attempts": [
                        {"status": a.status, "seconds": round(a.seconds, 4), "error": a.error}
                        for a in attempts
                    ],
                }
            )
            + "\n"
        )
        # The journal is for diagnosis: a disk too full for it must not stop the run (the
        # lock and the images say what matters). Successes are written in batches.
        with contextlib.suppress(OSError):
            self.journal.write(line)
            if result.status == FAILED:
                self.journal.flush()

    def may_start(self) -> str | None:
        """Why no new request may start now, or None if one may."""
        if self.stopped:
            return self.stopped
        limit = self.options.max_requests
        if limit is not None and self.sent >= limit:
            return f"--max-requests {limit} reached"
        budget = self.options.max_credits
        if budget is not None and self.credits >= budget:
            return f"--max-credits {budget:g} reached"
        return None

    async def worker(self, queue: deque[PlanItem], delay: float = 0.0) -> None:
        """Send generations one after another; each one's images are fetched by a task of
        their own, so this --concurrency slot is free for the next generation at once (image
        downloads go to a CDN, not the generation API). Deliveries in flight are bounded."""
        await asyncio.sleep(delay)
        while queue:
            item = queue.popleft()
            reason = self.may_start()
            if reason:
                self.finish(RequestResult(item.request.id, NOT_SENT, reason))
                continue
            self.sent += 1
            attempts: list[Attempt] = []
            started = time.monotonic()
            try:
                # Where the images will go is checked before a credit is spent on them.
                stems = [self.folder.path(stem) for stem in output_stems(item.request)]
                if not self.options.force and await self.restore(item, stems, started):
                    self.sent -= 1
                    continue
                generation = await self.client.generate(
                    item.request.id, item.request.body, attempts
                )
            except (RunStopped, RequestFailed) as exc:
                self.failed(item, exc, attempts, started)
                continue
            self.credits += generation.credits or 0
            await self.delivery_slots.acquire()
            task = asyncio.ensure_future(self.deliver(item, generation, attempts, started))
            self.deliveries.add(task)
            task.add_done_callback(self.deliveries.discard)

    async def restore(self, item: PlanItem, stems: list[Path], started: float) -> bool:
        """Put the request's images back from the cache of earlier outputs, if it has them."""
        request = item.request
        if not self.cache.has(request.body_sha256):
            return False
        try:
            restored = await asyncio.to_thread(
                self.cache.restore, request.body_sha256, stems, self.folder.lock_path
            )
        except OSError:
            return False  # the cache is a saving, never a reason to fail
        if restored is None:
            return False
        outputs, response = restored
        self.keeper.record(Entry.of(request, outputs, response))
        seconds = time.monotonic() - started
        self.finish(RequestResult(request.id, RESTORED, "from the cache", None, 0, seconds))
        return True

    async def deliver(
        self, item: PlanItem, generation: Generation, attempts: list[Attempt], started: float
    ) -> None:
        """Store a generation's images and record it in the lock."""
        try:
            outputs = await self.store(item, generation)
        except (RequestFailed, OSError) as exc:
            self.failed(item, exc, attempts, started)
            return
        finally:
            self.delivery_slots.release()
        request = item.request
        self.keeper.record(Entry.of(request, outputs, generation.summary()))
        seconds = time.monotonic() - started
        self.finish(
            RequestResult(request.id, DONE, "", generation.credits, len(attempts), seconds),
            attempts,
        )

    def failed(
        self, item: PlanItem, exc: Exception, attempts: Sequence[Attempt], started: float
    ) -> None:
        status = FAILED
        if isinstance(exc, RunStopped):
            if self.stopped is None:
                self.stopped = str(exc)
            status = NOT_SENT if exc.status == 0 else FAILED  # 0: stopped before sending
            reason = str(exc)
        elif isinstance(exc, RequestFailed):
            reason = exc.reason
        else:
            reason = f"cannot write the image: {getattr(exc, 'strerror', None) or exc}"
            if getattr(exc, "errno", None) in DISK_ERRORS and self.stopped is None:
                # Every further image would be paid for and lost the same way.
                self.stopped = f"the output folder cannot take more images: {reason}"
        seconds = time.monotonic() - started
        self.finish(
            RequestResult(item.request.id, status, reason, None, len(attempts), seconds), attempts
        )

    async def store(self, item: PlanItem, generation: Generation) -> list[Output]:
        request = item.request
        model = get_model(request.model)
        assert model is not None  # validated
        stems = output_stems(request)
        if len(generation.images) != len(stems):
            raise RequestFailed(
                request.id,
                f"expected {len(stems)} images, the API returned {len(generation.images)}",
            )
        expected = model.output_format(request.body)
        outputs = []
        for stem, delivery in zip(stems, generation.images, strict=True):
            # The extension follows the image's own format (checked against the one asked
            # for, when the model lets the request choose).
            target, info, sha256, size = await self.client.fetch(
                request.id, delivery, self.folder.path(stem), expected, (item.width, item.height)
            )
            outputs.append(
                Output(
                    path=self.folder.lock_path(target),
                    sha256=sha256,
                    bytes=size,
                    width=info.width,
                    height=info.height,
                    format=info.format,
                )
            )
        return outputs


class OutputFolder:
    """Paths inside the run's output folder. A path whose folder (symlinks resolved) lies
    outside is refused; each folder is resolved once per run, not once per image."""

    def __init__(self, root: Path, lock_folder: Path) -> None:
        self.root = root.resolve()
        self._lock_folder = lock_folder.resolve()
        self._folders: dict[str, Path] = {"": self.root}
        self._relative: dict[Path, str] = {}  # folder -> its path from the lock's folder

    def path(self, relative: str) -> Path:
        head, _, name = relative.rpartition("/")
        folder = self._folders.get(head)
        if folder is None:
            folder = (self.root / head).resolve()
            if not folder.is_relative_to(self.root):
                raise RequestFailed(
                    relative, f"refusing to write outside the output folder: {relative}"
                )
            self._folders[head] = folder
        return folder / name

    def lock_path(self, path: Path) -> str:
        """How the lock names a file: relative to the lock's folder, with `/`."""
        folder = self._relative.get(path.parent)
        if folder is None:
            folder = Path(os.path.relpath(path.parent, self._lock_folder)).as_posix()
            self._relative[path.parent] = folder
        return path.name if folder == "." else f"{folder}/{path.name}"


async def run_async(
    spec: Spec,
    the_plan: Plan,
    http: httpx.AsyncClient,
    *,
    base_url: str,
    api_key: str,
    options: RunOptions = RunOptions(),
    listener: Listener | None = None,
) -> RunResult:
    """Do a plan with an HTTP client the caller owns. The lock is saved however this ends."""
    started = time.monotonic()
    old = current_lock(spec, options.shard)
    in_spec = {item.request.id for item in the_plan.items}
    if options.prune and old:
        _prune(spec, [e for k, e in old.entries.items() if k not in in_spec])
    lock_path = spec.lock_path
    if options.shard:
        mine = tuple(i for i in the_plan.items if in_shard(i.request.id, options.shard))
        the_plan = replace(the_plan, items=mine)
        lock_path = shard_lock_path(spec, options.shard)
    wanted = {item.request.id for item in the_plan.items}
    # Requests gone from the spec leave the lock; the others keep their entry until redone.
    entries = {k: v for k, v in (old.entries if old else {}).items() if k in wanted}
    changed = old is None or len(entries) != len(old.entries) or bool(options.shard)
    keeper = LockKeeper(spec, lock_path, entries, changed=changed)
    todo = select(the_plan.items, options)
    chosen = {item.request.id for item in todo}
    skipped = [i for i in the_plan.items if i.request.id not in chosen]
    pacer = Pacer(options.rate)
    spec.output.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(spec.output)
    sweep_temp_files(lock_path.parent, below=False)  # a lock write cut short
    journal = (spec.output / JOURNAL).open("a", encoding="utf-8")  # fails early if read-only
    cache = OutputCache(spec.output)
    with contextlib.suppress(OSError):
        cache.remember(old.entries.values() if old else ())
    try:
        journal.write(
            json.dumps(
                {"event": "run", "spec": spec.name, "requests": len(todo), "time": time.time()}
            )
            + "\n"
        )
        state = _Run(
            spec,
            ApiClient(
                http,
                base_url,
                api_key,
                RetryPolicy(retries=options.retries),
                download_timeout=options.timeout,
            ),
            keeper,
            options,
            journal,
            listener,
            OutputFolder(spec.output, spec.lock_path.parent),
            asyncio.Semaphore(2 * max(1, options.concurrency)),
            cache,
        )
        state.client.keep = cache.keep_file

        async def before_send() -> None:
            if state.stopped:
                raise RunStopped(0, state.stopped)
            await pacer.wait()

        state.client.before_send = before_send
        for item in skipped:
            state.finish(RequestResult(item.request.id, SKIPPED))
        saver = asyncio.ensure_future(keeper.keep())
        try:
            queue = deque(todo)
            # Workers start a little apart (1 ms, a tenth of a second in all at most): the
            # first wave reaches the API spread out rather than in one instant, and the
            # answers come back spread out too, so none waits while a burst is handled.
            count = max(1, min(options.concurrency, len(todo)))
            step = min(0.001, 0.1 / count)
            workers = [asyncio.ensure_future(state.worker(queue, k * step)) for k in range(count)]
            await asyncio.gather(*workers)
            while state.deliveries:
                await asyncio.gather(*list(state.deliveries))
        finally:
            for task in [*state.deliveries, saver]:
                task.cancel()
            try:
                # Let cancelled deliveries remove their temporary files before the lock is
                # saved; a second interruption (Ctrl-C twice) cuts this wait short, not the save.
                await asyncio.gather(*state.deliveries, return_exceptions=True)
            finally:
                keeper.save()
                with contextlib.suppress(OSError):  # a cache, best effort
                    cache.remember(keeper.entries.values())
    finally:
        with contextlib.suppress(OSError):  # the journal is best effort (see _Run.finish)
            journal.close()
    return RunResult(spec, tuple(state.results), time.monotonic() - started, state.stopped)


def _prune(spec: Spec, gone: Iterable[Entry]) -> None:
    base = spec.lock_path.parent
    for entry in gone:
        for output in entry.outputs:
            path = base / output.path
            if path.resolve().is_relative_to(spec.output.resolve()):
                path.unlink(missing_ok=True)


def run(
    spec: Spec,
    *,
    base_url: str,
    api_key: str,
    options: RunOptions = RunOptions(),
    listener: Listener | None = None,
    requests: Sequence[Request] | None = None,
) -> RunResult:
    """Plan and run a spec against an API (or emulator) at `base_url`."""
    if not api_key:
        raise ConfigError("no API key: set AIMLAPI_KEY, or use --emulator to run offline")
    the_plan = plan_for(spec, requests, options)

    terminated = False

    async def main() -> RunResult:
        # SIGTERM ends the run the way Ctrl-C does: the work is cancelled, the lock saved.
        nonlocal terminated
        task = asyncio.current_task()
        assert task is not None

        def terminate() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
        async with make_http_client(
            options.concurrency, options.timeout, options.transport
        ) as http:
            return await run_async(
                spec,
                the_plan,
                http,
                base_url=base_url,
                api_key=api_key,
                options=options,
                listener=listener,
            )

    try:
        return run_event_loop(main())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated(signal.SIGTERM) from None
        raise


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it exists: its socket handling halves the client's CPU per
    request (bench/runner.py)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
