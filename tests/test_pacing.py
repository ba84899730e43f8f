"""`run --rate`: rates parsed from the command line, and a pacer shared by all workers."""

from __future__ import annotations

import asyncio

import pytest

from flux_pipeline.provider.pacing import Pacer, Rate


@pytest.mark.parametrize(("text", "per_second"), [("10/s", 10), ("120/m", 2), ("0.5/s", 0.5)])
def test_rates(text: str, per_second: float) -> None:
    assert Rate.parse(text).per_second == per_second


@pytest.mark.parametrize("text", ["10", "fast", "0/s", "-1/s", "10/h"])
def test_bad_rates_are_clear_errors(text: str) -> None:
    with pytest.raises(Exception, match="--rate must look like 10/s or 100/m"):
        Rate.parse(text)


def test_pacer_spaces_starts_evenly_for_all_workers() -> None:
    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(Rate(4), clock=lambda: clock[0], sleep=sleep)

    async def go() -> None:
        await asyncio.gather(*(pacer.wait() for _ in range(5)))

    asyncio.run(go())
    assert slept == [0.25, 0.5, 0.75, 1.0]
