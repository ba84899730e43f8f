"""One run's requests, each a transaction: send it, record the answer, store the images,
make the result durable, then report it done.

`Run` holds a run's state. Its workers take requests from a queue and send them through the
`ApiClient` (restoring from the cache of earlier outputs, or fetching an answer an interrupted
run received, where they can); each answer is written to the write-ahead record before its
images are fetched by a delivery task (`ImageFetcher`), and a delivered result is fsynced
there before it reaches the lock keeper and the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..errors import RequestFailed, RunStopped, SendingStopped
from ..language.spec import Spec
from ..language.validation import output_stems
from ..provider.client import ApiClient, Attempt, RetryPolicy
from ..provider.inputs import Sender
from ..provider.limits import Throttles
from ..provider.pacing import Pacer
from ..provider.registry import get_model
from ..provider.responses import Generation
from ..store.cache import OutputCache
from ..store.fetcher import ImageFetcher, StoredImage
from ..store.lock import Entry, Output, mismatch_warning
from ..store.output_folder import OutputFolder
from ..store.planning import PlanItem
from .budget import Budget, Cost, Reservation, charge_of_failure
from .journal import Journal
from .keeper import LockKeeper
from .options import RunOptions
from .recovery import (
    Result,
    WriteAhead,
    answer_line,
    done_line,
    generation_from_json,
    generation_json,
    sound,
)
from .results import Listener, Notify, RequestResult, Status

DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@dataclass
class Answers:
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
        lock_shard: Mapping[str, Any] | None,
        journal: Journal,
        record: WriteAhead,
        answers: Answers,
        cache: OutputCache,
        ratios: Mapping[str, float] | None = None,
        listener: Listener | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        # A lock that cannot be saved stops the run: what it pays for would not be recorded.
        self.keeper = LockKeeper(
            spec.name,
            lock_path,
            entries,
            changed=lock_changed,
            on_failure=self.stop,
            shard=lock_shard,
        )
        self.journal = journal
        self.record = record
        self.answers = answers
        self.cache = cache
        self.listener = listener
        self.notify = notify
        self.folder = OutputFolder(spec.output, spec.lock_path.parent)
        self.sender = Sender(spec.folder)
        self.pacer = Pacer(options.rate)
        policy = RetryPolicy(retries=options.retries, max_wait=options.max_wait)
        self.throttles = Throttles(options.concurrency)
        self.throttle = self.throttles.run
        self.client = ApiClient(
            http, base_url, api_key, policy, before_send=self._before_send, throttle=self.throttle
        )
        self.fetcher = ImageFetcher(
            http, policy, redact=self.client.redact, download_timeout=options.timeout
        )
        self.delivery_slots = asyncio.Semaphore(2 * max(1, options.concurrency))
        self.budget = Budget(options.max_credits, options.max_requests, ratios)
        self.stopped: str | None = None
        self.interrupted: int | None = None
        self.posting = 0  # generation requests on the wire
        self.results: list[RequestResult] = []
        self.deliveries: set[asyncio.Future[None]] = set()

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

    async def reserve(self, item: PlanItem) -> Reservation | str:
        """Set aside what the request is expected to cost, waiting while requests in flight
        may settle below theirs; the reservation, or why the request is not sent."""
        cost = Cost.of(item.request.model, item.width, item.height, item.images)
        while not self.stopped:
            taken = self.budget.take(cost)
            if taken is not None:
                return taken
            await self.budget.changed()
        return self.stopped

    def settle(self, reservation: Reservation, *, billed: bool, reported: float | None) -> None:
        """Charge a request's outcome to the budget; an answer's reported cost is journaled
        (a later run's budget learns from it)."""
        self.budget.settle(reservation, billed=billed, reported=reported)
        if reported is not None:
            cost = reservation.cost
            self.journal.event(event="cost", model=cost.model, credits=reported, table=cost.table)

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
        status = Status.FAILED
        if isinstance(exc, SendingStopped):
            status, reason = Status.NOT_SENT, str(exc)
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
                reservation = await self.reserve(item)
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
            self.settle(reservation, **charge_of_failure(exc, attempts))
            raise
        finally:
            self.posting -= 1
        self.settle(reservation, billed=True, reported=generation.credits)
        answer = generation_json(generation)
        self.answers.pending[request.body_sha256] = (request.id, answer)
        with contextlib.suppress(OSError):  # a safety net: the images are fetched anyway
            self.record.append(answer_line(request.id, request.body_sha256, answer))
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
        self.finish(RequestResult(request.id, Status.RESTORED, "from the cache", None, 0, seconds))
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
        self.finish(RequestResult(request.id, Status.RESTORED, reason, None, 0, seconds))
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
                item.request.id, Status.DONE, warning, generation.credits, len(attempts), seconds
            ),
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
                request.id, delivery, self.folder.path(stem), expected, item.expected_size
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
            mismatch=image.mismatch,
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

    def adopt(self, items: Sequence[PlanItem], found: Mapping[str, Result]) -> list[PlanItem]:
        """Take into the lock the results an interrupted run stored but did not save in the
        lock (the same request, its files still sound); the items left to do."""
        left = []
        for item in items:
            result = found.get(item.request.id)
            if (
                result is not None
                and not self.options.force
                and result.body_sha256 == item.request.body_sha256
                and sound(result.outputs, self.spec.lock_path.parent)
            ):
                self.keeper.record(Entry.of(item.request, result.outputs, result.response))
                reason = "from an interrupted run"
                self.finish(RequestResult(item.request.id, Status.RESTORED, reason))
            else:
                left.append(item)
        return left
