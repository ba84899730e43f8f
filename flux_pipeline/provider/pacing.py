"""A fixed request rate shared by all workers (`run --rate 10/s`)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import ConfigError


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
