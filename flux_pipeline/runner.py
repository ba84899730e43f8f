"""The run: do what the plan says, concurrently, treating every request as a transaction.

A request is billed when the provider receives it, so the run guards what was paid for:

- it holds the output folder's writer lock (`writer_lock`) from start to end;
- an answer is written to the run's write-ahead record (`recovery`) before its images are
  fetched, and a finished request's entry is fsynced there (in groups) before it is reported
  done; the lock file is saved from the entries as they finish (coalescing bursts);
- the first SIGINT or SIGTERM stops sending and lets the requests in flight finish (they
  are paid for) for up to `drain_timeout` seconds; a second one abandons them (their answers
  stay in the record for the next run);
- a 401 or 403, a disk that cannot take more images, or a lock that cannot be saved stop the
  run: no further request is sent.

Reading from `run()` down: hold the folder, plan, then `run_async`: open the run (`_open`),
let workers send requests and deliveries store images, and close it (`_close`) however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import json
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .atomic import sweep_temp_files
from .cache import OutputCache
from .client import ApiClient, Attempt, Generation, RetryPolicy, make_http_client
from .errors import ConfigError, RequestFailed, RunError, RunStopped, SendingStopped, Terminated
from .expansion import Request
from .fetcher import ImageFetcher, StoredImage
from .keeper import LockKeeper
from .lock import Entry, Lock, Output
from .output_folder import OutputFolder
from .pacing import Pacer, Rate
from .planning import Plan, PlanItem, plan
from .recovery import (
    FILE_NAME,
    WriteAhead,
    answer_line,
    done_line,
    generation_from_json,
    generation_json,
    read_pending,
    rewrite,
    sound,
)
from .registry import get_model
from .shards import current_lock, in_shard, shard_lock_path
from .spec import Spec
from .validation import output_stems
from .writer_lock import FOLDER, hold_output_folder

__all__ = ["Rate", "RunOptions", "RunResult", "RequestResult", "run", "run_async"]

JOURNAL = ".journal.jsonl"
T = TypeVar("T")
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run sends its requests; the CLI's `run` options, parsed."""

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
    wait: float = 0.0  # seconds to wait for another writer of the output folder
    drain_timeout: float = 120.0  # seconds the requests in flight may take after a signal


# ----- results and events ------------------------------------------------------------------

DONE = "done"
RESTORED = "restored"  # put back from the cache or an interrupted run, without a request
SKIPPED = "skipped"
FAILED = "failed"
NOT_SENT = "not sent"


@dataclass(frozen=True, slots=True)
class RequestResult:
    """How one request of the run ended."""

    id: str
    status: str  # done, restored, skipped, failed, not sent
    reason: str = ""
    credits: float | None = None
    attempts: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: each request's result, and why it stopped sending, if it did."""

    spec: Spec
    results: tuple[RequestResult, ...]
    seconds: float
    stopped: str | None = None  # why the run stopped sending, if it did
    interrupted: int | None = None  # the signal that stopped it (the requests in flight ended)

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
#: Called with a line for the user (an interruption being drained, a wait for the folder).
Notify = Callable[[str], None]


class SaveFailed(RunError):
    """The lock could not be saved; the images and the write-ahead record keep the work."""


# ----- planning a run ----------------------------------------------------------------------


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


# ----- the journal -------------------------------------------------------------------------


class Journal:
    """Timings, attempts and errors of each request (`OUT/.journal.jsonl`), for diagnosis.

    Best effort: a disk too full for it must not stop the run (the lock, the write-ahead
    record and the images say what matters). Successes are written in batches."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")  # fails early on a read-only folder

    def event(self, **fields: Any) -> None:
        with contextlib.suppress(OSError):
            self._file.write(json.dumps(fields) + "\n")

    def request(self, result: RequestResult, attempts: Sequence[Attempt]) -> None:
        self.event(
            event="request",
            id=result.id,
            status=result.status,
            reason=result.reason,
            seconds=round(result.seconds, 4),
            attempts=[
                {"status": a.status, "seconds": round(a.seconds, 4), "error": a.error}
                for a in attempts
            ],
        )
        if result.status == FAILED:
            with contextlib.suppress(OSError):
                self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


# ----- the run -----------------------------------------------------------------------------


@dataclass
class _Answers:
    """Answers whose images are not stored yet: what the next run fetches if this one ends
    first (body hash -> request id and the answer as the record keeps it)."""

    pending: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(i, b, g) for b, (i, g) in sorted(self.pending.items())]


class Run:
    """One run's state: its workers send requests, its deliveries store their images."""

    def __init__(
        self,
        *,
        spec: Spec,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        options: RunOptions,
        lock_path: Path,
        entries: Mapping[str, Entry],
        lock_changed: bool,
        journal: Journal,
        record: WriteAhead,
        answers: _Answers,
        cache: OutputCache,
        listener: Listener | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        # A lock that cannot be saved stops the run: what it pays for would not be recorded.
        self.keeper = LockKeeper(
            spec.name, lock_path, entries, changed=lock_changed, on_failure=self.stop
        )
        self.journal = journal
        self.record = record
        self.answers = answers
        self.cache = cache
        self.listener = listener
        self.notify = notify
        self.folder = OutputFolder(spec.output, spec.lock_path.parent)
        self.pacer = Pacer(options.rate)
        policy = RetryPolicy(retries=options.retries)
        self.client = ApiClient(http, base_url, api_key, policy, before_send=self._before_send)
        self.fetcher = ImageFetcher(
            http, policy, redact=self.client.redact, download_timeout=options.timeout
        )
        self.delivery_slots = asyncio.Semaphore(2 * max(1, options.concurrency))
        self.stopped: str | None = None
        self.interrupted: int | None = None
        self.sent = 0
        self.posting = 0  # generation requests on the wire
        self.credits = 0.0
        self.results: list[RequestResult] = []
        self.deliveries: set[asyncio.Future[None]] = set()

    # -- stopping --

    def stop(self, reason: str) -> None:
        """Send nothing more (the first reason given is the one reported)."""
        if self.stopped is None:
            self.stopped = reason

    def interrupt(self, signum: int) -> None:
        """The first signal: stop sending, let what is paid for finish."""
        self.interrupted = signum
        self.stop("interrupted" if signum == signal.SIGINT else "terminated")
        paid = self.posting + len(self.deliveries)
        if self.notify is not None and paid:
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            self.notify(
                f"finishing {paid} request{'s' if paid != 1 else ''} already paid for; "
                f"{again} again to abandon them"
            )

    async def _before_send(self) -> None:
        if self.stopped:
            raise SendingStopped(self.stopped)
        await self.pacer.wait()

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

    # -- results --

    def finish(self, result: RequestResult, attempts: Sequence[Attempt] = ()) -> None:
        self.results.append(result)
        if self.listener:
            self.listener(result)
        self.journal.request(result, attempts)

    def failed(
        self, item: PlanItem, exc: Exception, attempts: Sequence[Attempt], started: float
    ) -> None:
        status = FAILED
        if isinstance(exc, SendingStopped):
            status, reason = NOT_SENT, str(exc)
        elif isinstance(exc, RunStopped):
            self.stop(str(exc))
            reason = str(exc)
        elif isinstance(exc, RequestFailed):
            reason = exc.reason
        else:
            reason = f"cannot write the image: {getattr(exc, 'strerror', None) or exc}"
            if getattr(exc, "errno", None) in DISK_ERRORS:
                # Every further image would be paid for and lost the same way.
                self.stop(f"the output folder cannot take more images: {reason}")
        seconds = time.monotonic() - started
        self.finish(
            RequestResult(item.request.id, status, reason, None, len(attempts), seconds), attempts
        )

    # -- sending --

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
            attempts: list[Attempt] = []
            started = time.monotonic()
            try:
                # Where the images will go is checked before a credit is spent on them.
                stems = [self.folder.path(stem) for stem in output_stems(item.request)]
                if not self.options.force and (
                    await self.restore(item, stems, started)
                    or await self.fetch_recorded_answer(item, started)
                ):
                    continue
                generation = await self.post(item, attempts)
            except (RunStopped, SendingStopped, RequestFailed) as exc:
                self.failed(item, exc, attempts, started)
                continue
            await self.delivery_slots.acquire()
            task = asyncio.ensure_future(self.deliver(item, generation, attempts, started))
            self.deliveries.add(task)
            task.add_done_callback(self.deliveries.discard)

    async def post(self, item: PlanItem, attempts: list[Attempt]) -> Generation:
        """Send one generation; its answer goes to the record before anything else."""
        request = item.request
        self.sent += 1
        self.posting += 1
        try:
            generation = await self.client.generate(request.id, request.body, attempts)
        finally:
            self.posting -= 1
        self.credits += generation.credits or 0
        answer = generation_json(generation)
        self.answers.pending[request.body_sha256] = (request.id, answer)
        with contextlib.suppress(OSError):  # a safety net: the images are fetched anyway
            self.record.append(answer_line(request.id, request.body_sha256, generation))
        return generation

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

    async def fetch_recorded_answer(self, item: PlanItem, started: float) -> bool:
        """Fetch the images of an answer an interrupted run received but did not store:
        paid for then, free now. False if there is none, or it can no longer be fetched."""
        request = item.request
        found = self.answers.pending.get(request.body_sha256)
        generation = generation_from_json(found[1]) if found else None
        if generation is None:
            return False
        try:
            outputs = await self.store(item, generation)
            await self.commit(item, generation, outputs)
        except (RequestFailed, OSError):
            self.answers.pending.pop(request.body_sha256, None)
            return False  # expired or gone: the request is sent again
        seconds = time.monotonic() - started
        reason = "fetched from an interrupted run's answer"
        self.finish(RequestResult(request.id, RESTORED, reason, None, 0, seconds))
        return True

    async def deliver(
        self, item: PlanItem, generation: Generation, attempts: list[Attempt], started: float
    ) -> None:
        """Store a generation's images, make the result durable, then report it done."""
        try:
            outputs = await self.store(item, generation)
            await self.commit(item, generation, outputs)
        except (RequestFailed, OSError) as exc:
            self.failed(item, exc, attempts, started)
            return
        finally:
            self.delivery_slots.release()
        seconds = time.monotonic() - started
        self.finish(
            RequestResult(item.request.id, DONE, "", generation.credits, len(attempts), seconds),
            attempts,
        )

    async def commit(self, item: PlanItem, generation: Generation, outputs: list[Output]) -> None:
        """Record a stored result: in the write-ahead record, fsynced, then in the lock."""
        entry = Entry.of(item.request, outputs, generation.summary())
        await self.record.durable(self.record.append(done_line(entry)))
        self.answers.pending.pop(item.request.body_sha256, None)
        self.keeper.record(entry)

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
            image = await self.fetcher.fetch(
                request.id, delivery, self.folder.path(stem), expected, (item.width, item.height)
            )
            self.cache.save(image.path, image.sha256, image.format)
            outputs.append(self._output(image))
        return outputs

    def _output(self, image: StoredImage) -> Output:
        """What the lock records of a stored image: its path from the lock's folder."""
        return Output(
            path=self.folder.lock_path(image.path),
            sha256=image.sha256,
            bytes=image.bytes,
            width=image.width,
            height=image.height,
            format=image.format,
        )

    async def work(self, items: Sequence[PlanItem]) -> None:
        """Run the workers over the items, then wait for the deliveries they started."""
        queue = deque(items)
        # Workers start a little apart (1 ms, a tenth of a second in all at most): the first
        # wave reaches the API spread out rather than in one instant, and the answers come
        # back spread out too, so none waits while a burst is handled.
        count = max(1, min(self.options.concurrency, len(items)))
        step = min(0.001, 0.1 / count)
        await asyncio.gather(*(self.worker(queue, k * step) for k in range(count)))
        while self.deliveries:
            await asyncio.gather(*list(self.deliveries))

    def adopt(self, items: Sequence[PlanItem], found: dict[str, Entry]) -> list[PlanItem]:
        """Take into the lock the results an interrupted run finished but did not save in
        the lock (still sound on disk); the items left to do."""
        left = []
        for item in items:
            entry = found.get(item.request.id)
            if (
                entry is not None
                and not self.options.force
                and entry.body_sha256 == item.request.body_sha256
                and sound(entry, self.spec.lock_path.parent)
            ):
                self.keeper.record(entry)
                self.finish(RequestResult(item.request.id, RESTORED, "from an interrupted run"))
            else:
                left.append(item)
        return left


def _prune(spec: Spec, gone: Iterable[Entry]) -> None:
    base = spec.lock_path.parent
    for entry in gone:
        for output in entry.outputs:
            path = base / output.path
            if path.resolve().is_relative_to(spec.output.resolve()):
                path.unlink(missing_ok=True)


async def run_async(
    spec: Spec,
    the_plan: Plan,
    http: httpx.AsyncClient,
    *,
    base_url: str,
    api_key: str,
    options: RunOptions = RunOptions(),
    listener: Listener | None = None,
    notify: Notify | None = None,
    old: Lock | None = None,
    on_start: Callable[[Run], None] | None = None,
) -> RunResult:
    """Do a plan with an HTTP client the caller owns (and, as `run` does, holding the output
    folder's writer lock). `old` is the lock the plan was made against (read again if not
    given). The lock is saved however this ends; `on_start` sees the run (to signal it)."""
    started = time.monotonic()
    if old is None:
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
    work = select(the_plan.items, options)
    chosen = {item.request.id for item in work}

    # Open: sweep what dead writers left, read what an interrupted run left, open the files.
    spec.output.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(spec.output)
    sweep_temp_files(lock_path.parent, below=False)  # a lock write cut short
    record_path = spec.output / FOLDER / FILE_NAME
    found = read_pending(record_path)
    journal = Journal(spec.output / JOURNAL)
    cache = OutputCache(spec.output)
    with contextlib.suppress(OSError):
        cache.remember(old.entries.values() if old else ())
    record = WriteAhead(record_path)
    state = Run(
        spec=spec,
        http=http,
        base_url=base_url,
        api_key=api_key,
        options=options,
        lock_path=lock_path,
        entries=entries,
        lock_changed=changed,
        journal=journal,
        record=record,
        answers=_Answers(dict(found.answers)),
        cache=cache,
        listener=listener,
        notify=notify,
    )
    try:
        journal.event(event="run", spec=spec.name, requests=len(work), time=time.time())
        if on_start is not None:
            on_start(state)
        for item in the_plan.items:
            if item.request.id not in chosen:
                state.finish(RequestResult(item.request.id, SKIPPED))
        work = state.adopt(work, found.entries)
        saver = asyncio.ensure_future(state.keeper.keep_saved())
        try:
            await state.work(work)
        finally:
            await _close(state, saver, record_path, found.entries.values())
    finally:
        record.close()
        journal.close()
    return RunResult(
        spec,
        tuple(state.results),
        time.monotonic() - started,
        state.stopped,
        state.interrupted,
    )


async def _close(
    state: Run, saver: asyncio.Future[None], record_path: Path, adoptable: Iterable[Entry]
) -> None:
    """End a run however it ends: abandon deliveries still running (a second signal), save
    the lock, and leave in the record only the answers whose images are not stored."""
    for task in [*state.deliveries, saver]:
        task.cancel()
    try:
        # Let cancelled deliveries remove their temporary files before the lock is saved; a
        # second interruption (Ctrl-C twice) cuts this wait short, not the save.
        await asyncio.gather(*state.deliveries, return_exceptions=True)
    finally:
        keeper = state.keeper
        try:
            keeper.save()
        except OSError as exc:
            # The record keeps every result: the next run adopts them.
            raise SaveFailed(
                f"cannot save the lock {keeper.path}: {exc.strerror or exc}; the images and "
                f"{record_path} keep the work, and the next run takes it in"
            ) from None
        with contextlib.suppress(OSError):  # a cache, best effort
            state.cache.remember([*keeper.entries.values(), *adoptable])
        with contextlib.suppress(OSError):
            rewrite(record_path, state.answers.rows())


def run(
    spec: Spec,
    *,
    base_url: str,
    api_key: str,
    options: RunOptions = RunOptions(),
    listener: Listener | None = None,
    notify: Notify | None = None,
    requests: Sequence[Request] | None = None,
) -> RunResult:
    """Plan and run a spec against an API (or emulator) at `base_url`, holding the output
    folder's writer lock. The first SIGINT or SIGTERM drains the requests in flight (the
    result says `interrupted`); a second abandons them and raises Terminated."""
    if not api_key:
        raise ConfigError("no API key: set AIMLAPI_KEY, or use --emulator to run offline")
    with hold_output_folder(
        spec.output, command="run", spec=spec.path, wait=options.wait, on_wait=notify
    ):
        old = current_lock(spec, options.shard)
        the_plan = plan(spec, requests, old)
        return _run_handling_signals(
            spec, the_plan, old, base_url, api_key, options, listener, notify
        )


def _run_handling_signals(
    spec: Spec,
    the_plan: Plan,
    old: Lock | None,
    base_url: str,
    api_key: str,
    options: RunOptions,
    listener: Listener | None,
    notify: Notify | None,
) -> RunResult:
    signals: list[int] = []

    async def main() -> RunResult:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        runs: list[Run] = []

        def on_signal(signum: int) -> None:
            signals.append(signum)
            if len(signals) == 1 and runs:
                runs[0].interrupt(signum)
                loop.call_later(options.drain_timeout, task.cancel)
            else:
                task.cancel()  # a second signal abandons the requests in flight

        for signum in SIGNAL_NAMES:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, on_signal, signum)
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
                notify=notify,
                old=old,
                on_start=runs.append,
            )

    try:
        return run_event_loop(main())
    except asyncio.CancelledError:
        raise Terminated(signals[0] if signals else signal.SIGINT) from None


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it exists: its socket handling halves the client's CPU per
    request (bench/runner.py)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
