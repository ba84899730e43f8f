"""How fast the emulator answers: small generation requests per second at zero latency, from a
client in another process, and how long the in-process helper takes to start and stop.

    python bench/emulator.py [--requests 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from _common import emulator_process, report

from flux_pipeline.emulator import EmulatorServer

BODY = {"model": "flux/schnell", "prompt": "a kettle", "image_size": {"width": 64, "height": 64}}


async def hammer(url: str, total: int, concurrency: int) -> tuple[float, int]:
    ok = 0
    todo = iter(range(total))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for i in todo:
            body = {**BODY, "seed": i + 1}
            async with session.post(
                url + "/v1/images/generations", json=body, headers={"Authorization": "Bearer bench"}
            ) as response:
                await response.read()
                ok += response.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with emulator_process() as url:
        asyncio.run(hammer(url, 500, args.concurrency))  # warm up
        seconds, ok = asyncio.run(hammer(url, args.requests, args.concurrency))
    assert ok == args.requests, f"only {ok} of {args.requests} answered 200"

    starts, stops = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        server = EmulatorServer().start()
        t1 = time.perf_counter()
        server.stop()
        starts.append(t1 - t0)
        stops.append(time.perf_counter() - t1)

    rate = args.requests / seconds
    report(
        "emulator",
        ["figure", "value"],
        [
            ["requests", args.requests],
            ["concurrency", args.concurrency],
            ["requests/s (zero latency)", round(rate)],
            ["helper start, median ms", statistics.median(starts) * 1000],
            ["helper stop, median ms", statistics.median(stops) * 1000],
        ],
        {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "requests_per_second": rate,
            "helper_start_ms": statistics.median(starts) * 1000,
            "helper_stop_ms": statistics.median(stops) * 1000,
        },
    )


if __name__ == "__main__":
    main()
