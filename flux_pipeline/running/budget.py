"""Budgets as reservations: `--max-credits` and `--max-requests` count requests in flight.

A request is billed when the provider receives it, so a cap that counts only answered
requests overspends by everything in flight (16 requests at `-j 16`). Before a request is
sent, the run reserves what it is expected to cost; it never sends when spent + reserved +
next would pass the cap, and waits while requests in flight may still settle below their
reservation.

What a request is expected to cost: the price table's estimate (`data/prices.json`) times
the most this model has cost relative to the table — in this spec's lock, in its journal, or
in this run's answers so far. An answer that reports usage is charged what it reports (image
or not); one that does not is charged the expectation. While a model's cost is only the
table's estimate, a run under `--max-credits` keeps one request of that model in flight: its
answer shows the cost, so a wrong table cannot overspend the cap by more than one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadResponse
from ..provider.prices import estimate
from ..store.lock import Entry

if TYPE_CHECKING:
    from ..provider.client import Attempt


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request is expected to cost: its model and the table's estimate of it."""

    model: str
    table: float

    @classmethod
    def of(
        cls, model: str, width: int, height: int, images: int, prices: Mapping[str, float]
    ) -> Cost:
        return cls(model, estimate(model, width, height, images, prices))


@dataclass(frozen=True, slots=True)
class Charge:
    """What a request's outcome costs: whether an answer billed it, what the answer reported
    (None: it did not say; the reservation's expectation is charged), and how many sends
    had no answer (each may have been billed: each is charged the expectation)."""

    billed: bool
    reported: float | None = None
    unanswered: int = 0


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits set aside for a request in flight, until its answer settles them."""

    cost: Cost
    credits: float


class Budget:
    """Credits spent and reserved by one run, against its caps.

    `ratios` are what each model has cost relative to the table (learned from the lock and
    the journal before the run, and from each answer during it); a model that has one is
    known, and its requests may be in flight together."""

    def __init__(
        self,
        max_credits: float | None = None,
        max_requests: int | None = None,
        ratios: Mapping[str, float] | None = None,
    ) -> None:
        self.max_credits = max_credits
        self.max_requests = max_requests
        self.ratios = dict(ratios or {})
        self.spent = 0.0  # charged: reported by the API, or the expectation where it did not
        self.estimated = 0.0  # of which the expectation: answers that reported no usage
        self.reserved = 0.0
        self.sent = 0  # requests reserved, including those in flight
        self._in_flight: dict[str, int] = {}  # reservations by model
        self._changed = asyncio.Event()

    def expected(self, cost: Cost) -> float:
        """What the request is expected to cost: the table's estimate, scaled by the most
        the model has cost relative to it."""
        return cost.table * self.ratios.get(cost.model, 1.0)

    def take(self, cost: Cost) -> Reservation | str | None:
        """Reserve for one request: a reservation, the reason none will ever be given, or
        None if one may be given once a request in flight settles."""
        if self.max_requests is not None and self.sent >= self.max_requests:
            return f"--max-requests {self.max_requests} reached"
        credits = self.expected(cost)
        if self.max_credits is not None:
            in_flight = sum(self._in_flight.values())
            if self.spent + self.reserved + credits > self.max_credits + 1e-9:
                if in_flight:
                    return None  # they may cost less than reserved
                return (
                    f"--max-credits {self.max_credits:g} reached "
                    f"(spent {self.spent:g}, the next request would cost {credits:g})"
                )
            if cost.model not in self.ratios and self._in_flight.get(cost.model):
                return None  # one answer first, to learn what this model costs
        self.sent += 1
        self.reserved += credits
        self._in_flight[cost.model] = self._in_flight.get(cost.model, 0) + 1
        return Reservation(cost, credits)

    def settle(self, reservation: Reservation, charge: Charge) -> None:
        """A request's outcome: charged what the API reported, or the expectation if it
        billed without saying; released if it never reached the API."""
        billed, reported = charge.billed, charge.reported
        self.reserved = max(0.0, self.reserved - reservation.credits)
        model = reservation.cost.model
        self._in_flight[model] -= 1
        guessed = reservation.credits * charge.unanswered
        self.spent += guessed
        self.estimated += guessed
        if not billed and not charge.unanswered:
            self.sent -= 1
        elif billed:
            self.spent += reservation.credits if reported is None else reported
            self.estimated += reservation.credits if reported is None else 0.0
            known = self.ratios.get(model, 0.0)
            if reported is not None and reservation.cost.table > 0:
                self.ratios[model] = max(known, reported / reservation.cost.table)
            else:
                self.ratios.setdefault(model, 1.0)  # answered: nothing more will be learned
        self.wake()

    async def reserve(self, cost: Cost, stopped: Callable[[], str | None]) -> Reservation | str:
        """Take a reservation for `cost`, waiting while requests in flight may settle below
        theirs; the reservation, or why the request is not sent (the run's `stopped`)."""
        while (reason := stopped()) is None:
            taken = self.take(cost)
            if taken is not None:
                return taken
            await self.changed()
        return reason

    def wake(self) -> None:
        """Let every request waiting for a reservation look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


def charge_of_failure(exc: BaseException, attempts: Sequence[Attempt]) -> Charge:
    """How a request that ended in `exc` is charged. An answer that was not usable was billed
    (a 200), at what it reported if it did; so may have been every send without an answer (a
    read timeout, a connection broken after the body was sent); refusals (4xx, 5xx) and
    requests that never left (DNS, a refused connection, a connect timeout) were not."""
    unanswered = sum(1 for a in attempts if a.unanswered)
    if isinstance(exc, BadResponse):
        return Charge(billed=True, reported=exc.credits, unanswered=unanswered)
    return Charge(billed=False, unanswered=unanswered)


def cost_notices(
    models: Iterable[str],
    ratios: Mapping[str, float],
    prices: Mapping[str, float],
    entries: Iterable[Entry],
) -> list[str]:
    """What a run under --max-credits says at its start of each model whose cost no answer
    has reported and the user did not give: the cap counts the price table's estimate."""
    silent = {
        str(e.body.get("model"))
        for e in entries
        if e.outputs and not isinstance(e.response.get("credits"), int | float)
    }
    lines = []
    for model in sorted(set(models)):
        if model in ratios or model in prices:
            continue
        why = (
            "this endpoint does not report cost"
            if model in silent
            else "no answer has reported this model's cost yet"
        )
        lines.append(
            f"{model}: {why}; --max-credits counts the price table's estimate (give the real "
            f"price with --price {model}=CREDITS or [tool.flux-pipeline.prices] in pyproject.toml)"
        )
    return lines
