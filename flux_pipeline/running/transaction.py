"""One run's requests, each a transaction: send it, record the answer, store the images,
make the result durable, then report it done.

`Run` holds a run's state and owns its lifecycle. Its workers take requests from a queue and
send them through the `ApiClient` (restoring from the cache of earlier outputs, or fetching
an answer an interrupted run received, where they can); the write-ahead protocol
(docs/architecture.md) orders what reaches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadResponse, RequestFailed, RunStopped, SaveFailed, SendingStopped
from ..language.spec import Spec
from ..language.validation import output_stems
from ..provider.client import Attempt
from ..provider.redaction import redact_json
from ..provider.registry import get_model
from ..provider.responses import Generation
from ..store.lock import Entry, Output, mismatch_warning
from ..store.planning import PlanItem, RequestState
from ..store.restore import restore_free
from .budget import Charge, Cost, Reservation, charge_of_failure
from .keeper import LockKeeper
from .options import RunOptions
from .parts import Collaborators, Endpoint, RunFiles
from .recovery import (
    PendingAnswer,
    Result,
    answer_line,
    done_line,
    generation_from_json,
    generation_json,
    rewrite,
)
from .results import Listener, Notify, RequestResult, RunResult, Status, failure_of


class Run:
    """One run's state: its workers send requests, its deliveries store their images.

    `async with Run(...) as run: await run.work(items)`: entering starts the lock keeper's
    saver; leaving, however the run ends, abandons deliveries still running (a second
    signal), saves the lock and leaves in the record only the answers whose images were not
    stored. No other module finishes a run.
    """

    def __init__(
        self,
        spec: Spec,
        options: RunOptions,
        endpoint: Endpoint,
        *,
        keeper: LockKeeper,
        files: RunFiles,
        listener: Listener | None = None,
        notify: Notify | None = None,
        collaborators: Collaborators | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self.keeper = keeper
        self.files = files
        self.journal, self.record, self.cache = files.journal, files.record, files.cache
        self.pending: dict[str, PendingAnswer] = dict(files.found.answers)
        self.listener = listener
        self.notify = notify
        parts = collaborators or Collaborators.build(
            spec, options, endpoint, ratios=files.ratios, before_send=self._before_send
        )
        self.pacer, self.throttles, self.budget = parts.pacer, parts.throttles, parts.budget
        self.throttle = self.throttles.run
        self.client, self.fetcher = parts.client, parts.fetcher
        self.sender, self.folder = parts.sender, parts.folder
        self.delivery_slots = asyncio.Semaphore(2 * max(1, options.concurrency))
        self.stopped: str | None = None
        self.interrupted: int | None = None
        self.posting = 0  # generation requests on the wire
        self.results: list[RequestResult] = []
        self.deliveries: set[asyncio.Future[None]] = set()
        self._saver: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifecycle --

    async def __aenter__(self) -> Run:
        if self._saver is not None or self._closed:
            raise RuntimeError("a Run is entered once")
        # A lock that cannot be saved stops the run: what it pays for would not be recorded.
        self._saver = asyncio.ensure_future(self.keeper.keep_saved(on_failure=self.stop))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        assert self._saver is not None
        for task in [*self.deliveries, self._saver]:
            task.cancel()
        try:
            # Let cancelled deliveries remove their temporary files before the lock is saved;
            # a second interruption (Ctrl-C twice) cuts this wait short, not the save.
            await asyncio.gather(*self.deliveries, return_exceptions=True)
        finally:
            self._save()

    def _save(self) -> None:
        try:
            self.keeper.save()
        except OSError as exc:
            # The record keeps every result: the next run adopts them.
            raise SaveFailed(
                f"cannot save the lock {self.keeper.path}: {exc.strerror or exc}; the images "
                f"and {self.record.path} keep the work, and the next run takes it in"
            ) from None
        with contextlib.suppress(OSError):  # a cache, best effort
            found = self.files.found.results.values()
            self.cache.remember([*self.keeper.entries.values(), *found])
        with contextlib.suppress(OSError):
            rewrite(self.record.path, self.pending)

    def result(self, seconds: float) -> RunResult:
        """How the run ended, once it has."""
        overloads = self.throttles.overloads
        return RunResult(
            spec=self.spec,
            results=tuple(self.results),
            seconds=seconds,
            stopped=self.stopped,
            interrupted=self.interrupted,
            overloads=overloads,
            limit=self.throttle.limit if overloads else None,
            credits=self.budget.spent,
            estimated=self.budget.estimated,
        )

    # -- stopping --

    def stop(self, reason: str) -> None:
        """Send nothing more (the first reason given is the one reported)."""
        if self.stopped is None:
            self.stopped = reason
        self.budget.wake()  # requests waiting for a reservation give up

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

    def settle(self, reservation: Reservation, charge: Charge) -> None:
        """Charge a request's outcome to the budget; an answer's reported cost is journaled
        (a later run's budget learns from it)."""
        self.budget.settle(reservation, charge)
        if charge.reported is not None:
            cost, credits = reservation.cost, charge.reported
            self.journal.event(event="cost", model=cost.model, credits=credits, table=cost.table)

    # -- results --

    def finish(self, result: RequestResult, attempts: Sequence[Attempt] = ()) -> None:
        if self.throttle.slots < self.throttle.ceiling:
            limited = f"{self.throttle.slots} of {self.throttle.ceiling}"
            result = dataclasses.replace(result, limited=limited)
        self.results.append(result)
        if self.listener:
            self.listener(result)
        self.journal.request(result, attempts)

    def failed(
        self, item: PlanItem, exc: Exception, attempts: Sequence[Attempt], started: float
    ) -> None:
        failure = failure_of(exc)
        if failure.stops is not None:
            self.stop(failure.stops)
        seconds = time.monotonic() - started
        result = RequestResult(
            item.request.id,
            failure.status,
            failure.reason,
            attempts=len(attempts),
            seconds=seconds,
            unanswered=sum(1 for a in attempts if a.unanswered),
        )
        self.finish(result, attempts)

    # -- sending --

    async def worker(self, queue: deque[PlanItem], delay: float = 0.0) -> None:
        """Send generations one after another; each one's images are fetched by a task of
        their own, so this --concurrency slot is free for the next generation at once (image
        downloads go to a CDN, not the generation API). Deliveries in flight are bounded."""
        await asyncio.sleep(delay)
        while queue:
            item = queue.popleft()
            if self.stopped:
                self.finish(RequestResult(item.request.id, Status.NOT_SENT, self.stopped))
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
                # Input files are read (and checked unchanged) before a credit is reserved.
                body = self.sender.wire_body(item.request.id, item.request.body)
                size = (item.width, item.height)
                cost = Cost.of(item.request.model, *size, item.images, self.options.prices)
                reservation = await self.budget.reserve(cost, lambda: self.stopped)
                if isinstance(reservation, str):
                    self.finish(RequestResult(item.request.id, Status.NOT_SENT, reservation))
                    continue
                generation = await self.post(item, body, attempts, reservation)
            except (RunStopped, SendingStopped, RequestFailed) as exc:
                self.failed(item, exc, attempts, started)
                continue
            await self.delivery_slots.acquire()
            task = asyncio.ensure_future(self.deliver(item, generation, attempts, started))
            self.deliveries.add(task)
            task.add_done_callback(self.deliveries.discard)

    async def post(
        self,
        item: PlanItem,
        body: Mapping[str, Any],
        attempts: list[Attempt],
        reservation: Reservation,
    ) -> Generation:
        """Send one generation, charging its reservation with the outcome; its answer goes to
        the record before anything else."""
        request = item.request
        self.posting += 1
        try:
            throttle = self.throttles.of(request.model)
            generation = await self.client.generate(request.id, body, attempts, throttle)
        except BaseException as exc:
            self.settle(reservation, charge_of_failure(exc, attempts))
            if isinstance(exc, BadResponse):  # billed for nothing: not sent again unasked
                with contextlib.suppress(OSError):
                    self.files.unusable.add(request.body_sha256, request.id, exc.reason)
            raise
        finally:
            self.posting -= 1
        unanswered = sum(1 for a in attempts if a.unanswered)  # with --retry-timeouts
        self.settle(reservation, Charge(True, generation.credits, unanswered))
        # The answer is the server's text: a URL may carry the key (never our own ids, hashes
        # or paths, which a short key could garble).
        answer = redact_json(generation_json(generation), self.client.redact)
        self.pending[request.body_sha256] = PendingAnswer(request.id, answer)
        with contextlib.suppress(OSError):  # a safety net: the images are fetched anyway
            self.record.append(answer_line(request.id, request.body_sha256, answer))
        return generation

    async def restore(self, item: PlanItem, stems: list[Path], started: float) -> bool:
        """Put the request's images back, free: moved from where an earlier `output:` put
        them, or from the cache of earlier outputs."""
        request = item.request
        earlier = self.keeper.entries.get(request.id)
        moved = earlier if item.state.kind is RequestState.MOVED else None
        if moved is None and not self.cache.has(request.body_sha256):
            return False
        try:
            args = (request, stems, moved, self.folder, self.cache)
            restored = await asyncio.to_thread(restore_free, *args)
        except OSError:
            return False  # a saving, never a reason to fail
        if restored is None:
            return False
        self.keeper.record(Entry.of(request, restored.outputs, restored.response))
        seconds = time.monotonic() - started
        self.finish(RequestResult(request.id, Status.RESTORED, restored.reason, seconds=seconds))
        return True

    async def fetch_recorded_answer(self, item: PlanItem, started: float) -> bool:
        """Fetch the images of an answer an interrupted run received but did not store:
        paid for then, free now. False if there is none, or it can no longer be fetched."""
        request = item.request
        found = self.pending.get(request.body_sha256)
        generation = generation_from_json(found.answer) if found else None
        if generation is None:
            return False
        try:
            outputs = await self.store(item, generation)
            await self.commit(item, generation, outputs)
        except (RequestFailed, OSError):
            self.pending.pop(request.body_sha256, None)
            return False  # expired or gone: the request is sent again
        seconds = time.monotonic() - started
        reason = "fetched from an interrupted run's answer"
        self.finish(RequestResult(request.id, Status.RESTORED, reason, seconds=seconds))
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
        warning = mismatch_warning(outputs)
        self.finish(
            RequestResult(
                item.request.id,
                Status.DONE,
                warning,
                credits=generation.credits,
                attempts=len(attempts),
                seconds=seconds,
            ),
            attempts,
        )

    async def commit(self, item: PlanItem, generation: Generation, outputs: list[Output]) -> None:
        """Record a stored result: in the write-ahead record, fsynced, then in the lock."""
        entry = Entry.of(item.request, outputs, generation.summary())
        await self.record.durable(self.record.append(done_line(entry)))
        self.pending.pop(item.request.body_sha256, None)
        if self.options.force:  # a forced resend of a body once billed for nothing
            with contextlib.suppress(OSError):
                self.files.unusable.forget(item.request.body_sha256)
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
                request.id, delivery, self.folder.path(stem), expected, item.expected_size
            )
            self.cache.save(image.path, image.sha256, image.format)
            outputs.append(image.output(self.folder.lock_path))
        return outputs

    async def work(self, items: Sequence[PlanItem]) -> None:
        """Run the workers over the items, then wait for the deliveries they started."""
        if self._saver is None or self._closed:
            raise RuntimeError("a Run works inside `async with Run(...) as run`")
        queue = deque(items)
        # Workers start a little apart (1 ms, a tenth of a second in all at most): the first
        # wave reaches the API spread out rather than in one instant, and the answers come
        # back spread out too, so none waits while a burst is handled.
        count = max(1, min(self.options.concurrency, len(items)))
        step = min(0.001, 0.1 / count)
        await asyncio.gather(*(self.worker(queue, k * step) for k in range(count)))
        while self.deliveries:
            await asyncio.gather(*list(self.deliveries))

    def adopt(self, items: Sequence[PlanItem], found: Mapping[str, Result]) -> list[PlanItem]:
        """Take into the lock the results an interrupted run stored but did not save in the
        lock (the same request, its files still sound); the items left to do."""
        left, folder = [], self.spec.lock_path.parent
        for item in items:
            result = found.get(item.request.id)
            if self.options.force or result is None or not result.adoptable(item.request, folder):
                left.append(item)
                continue
            self.keeper.record(Entry.of(item.request, result.outputs, result.response))
            self.finish(RequestResult(item.request.id, Status.RESTORED, "from an interrupted run"))
        return left
