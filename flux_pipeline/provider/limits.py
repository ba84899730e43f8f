"""A run's answer to a provider's limits, shared by all its workers.

Providers cap the work they accept (Black Forest Labs: jobs in flight; others: requests per
second) and answer 429 above it. `Throttle` keeps the run just under the cap:

- **An adaptive limit of generation requests in flight** (AIMD, as TCP's congestion window,
  promptfoo's scheduler or Netflix's concurrency-limits): it starts at `--concurrency`, the
  ceiling; an overload (a 429, or a 503 that says so) cuts it to `decrease` (0.9) times what
  was in flight when the server said no, so a burst of refusals to one wave settles where
  the server is instead of halving again and again; a window of successes (at least
  `window`, and as many as the limit) grows it by one, and only while requests are waiting
  for a slot.
- **A shared pause.** A 429 pauses new sends for every worker: until the server's
  `Retry-After` when it gives one, else for an exponential backoff with full jitter whose
  level rises with each wave of overloads and falls back on success.

Where the provider caps a model family on its own (Black Forest Labs: 6 jobs in flight for
Kontext Max, against 24 for the rest), that family has a throttle of its own (`Throttles`),
whose ceiling is the cap: its requests do not start with a burst of refusals, and its 429s
slow only that family down.

Time and randomness come in as `clock`, `sleep` and `rng`, so tests can drive it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Slot:
    """A request's place in flight, and the limit's generation when it was sent."""

    epoch: int


class Throttle:
    """The adaptive in-flight limit and the shared pause of one run."""

    def __init__(
        self,
        ceiling: int,
        *,
        decrease: float = 0.9,
        window: int = 12,
        base_pause: float = 0.25,
        max_pause: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self.lowest = self.limit
        self.in_flight = 0
        self.overloads = 0  # 429s (and overloaded 503s) seen
        self._decrease = decrease
        self._window = window
        self._base_pause = base_pause
        self._max_pause = max_pause
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._epoch = 0
        self._level = 0
        self._successes = 0
        self._waiting = 0
        self._paused_until = 0.0
        self._freed = asyncio.Event()

    @property
    def slots(self) -> int:
        """How many requests may be in flight now."""
        return max(1, int(self.limit))

    async def acquire(self) -> Slot:
        """Wait for the pause to end and for a slot; the slot must be `release`d."""
        while True:
            pause = self._paused_until - self._clock()
            if pause > 0:
                await self._sleep(pause)
                continue
            if self.in_flight < self.slots:
                self.in_flight += 1
                return Slot(self._epoch)
            self._waiting += 1
            self._freed.clear()
            try:
                await self._freed.wait()
            finally:
                self._waiting -= 1

    def release(self, slot: Slot, *, outcome: str, wait: float | None = None) -> None:
        """Give the slot back, saying how the request went: "ok", "overloaded" (with the
        server's wait, if it gave one), or "other" (a failure that says nothing of load)."""
        self.in_flight -= 1
        if outcome == "ok":
            self._succeeded()
        elif outcome == "overloaded":
            self._overloaded(slot, wait)
        self._freed.set()

    def _succeeded(self) -> None:
        self._level = 0
        if self._waiting and self.limit < self.ceiling:
            self._successes += 1
            if self._successes >= max(self.slots, self._window):
                self.limit = min(float(self.ceiling), self.limit + 1)
                self._successes = 0

    def _overloaded(self, slot: Slot, wait: float | None) -> None:
        self.overloads += 1
        # Cut from what was really in flight when the server said no (this request
        # included), as TCP cuts from the data in flight: a limit far above it says nothing
        # of what the server takes. Every overload cuts, but never below `decrease` times
        # what is in flight, so a burst of refusals to one wave settles where the server is.
        self.limit = max(1.0, min(self.limit, self.in_flight + 1) * self._decrease)
        self.lowest = min(self.lowest, self.limit)
        self._successes = 0
        if slot.epoch == self._epoch:  # the first overload of this wave: back off further
            self._epoch += 1
            self._level += 1
        if wait is None:
            ceiling = min(self._max_pause, self._base_pause * 2 ** (self._level - 1))
            wait = self._rng.uniform(0, ceiling)
        self._paused_until = max(self._paused_until, self._clock() + wait)


#: Jobs in flight the provider allows a model family, by model-name prefix, where it is fewer
#: than the rest (`openapi/README.md`: "6 for Kontext Max").
FAMILY_CAPS: dict[str, int] = {"flux/kontext-max/": 6}


class Throttles:
    """A run's throttles: one for every model, but one of its own for a family the provider
    caps apart (`FAMILY_CAPS`), made when the run first sends to it."""

    def __init__(self, ceiling: int, **options: Any) -> None:
        self.run = Throttle(ceiling, **options)
        self._options = options
        self._families: dict[str, Throttle] = {}

    def of(self, model: str) -> Throttle:
        """The throttle requests of `model` go through."""
        for prefix, cap in FAMILY_CAPS.items():
            if model.startswith(prefix):
                throttle = self._families.get(prefix)
                if throttle is None:
                    ceiling = min(self.run.ceiling, cap)
                    throttle = self._families[prefix] = Throttle(ceiling, **self._options)
                return throttle
        return self.run

    @property
    def overloads(self) -> int:
        return self.run.overloads + sum(t.overloads for t in self._families.values())
