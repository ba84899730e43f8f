"""How close `run` comes to the ideal time, and how much faster it is than the provider's
quick example in a loop.

The emulator runs in its own process with a fixed latency; every request is a real POST plus
a real download of a 64x64 PNG (flux/schnell's smallest size; `--size 256` for 256x256: the
emulator's PNGs cost it the same at any size), checked, hashed, stored and recorded in the lock.
The ideal is N / C x latency. The sequential loop is the quick example of the provider's page
(POST, then fetch the image, then write it), one request at a time.

"aiohttp alone" is the floor of the machine and the emulator: aiohttp with nothing checked,
stored or recorded, at the same concurrency.

    python bench/runner.py [--requests 2000] [--latency 0.1] [--concurrency 16,64,256]
                           [--size 64|256|1024x768]
                           [--transports aiohttp,httpx] [--loop 100] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import Emulator, emulator_process, matrix_spec, process_cpu, report

from flux_pipeline import load_spec, plan
from flux_pipeline.provider.client import make_http_client
from flux_pipeline.running.parts import Endpoint
from flux_pipeline.running.runner import RunOptions, Status, run_async, run_event_loop

SIZE = {"width": 64, "height": 64}  # the image asked for (--size)


def write_spec(folder: Path, count: int) -> Path:
    return matrix_spec(folder, "bench", count, model="flux/schnell", defaults={"image_size": SIZE})


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


WORK = Path(__file__).with_name("work")  # git-ignored


def creation_cost(folder: Path, count: int) -> float:
    """CPU seconds to create, write and rename one small file in a folder of `count` files
    (a run creates two per image, each in a folder that grows to the run's size: the image
    and the cache's copy). On this VM's ext4 disk it ranges from 0.02 ms to 0.7 ms depending
    on where the folder's blocks are and how full it is, which is most of the spread between
    runs; tmpfs is about 0.015 ms."""
    probe = folder / "creation-probe"
    probe.mkdir()
    started = cpu()
    for i in range(count):
        temp = probe / f"{i}.tmp"
        temp.write_bytes(b"x" * 3000)
        os.replace(temp, probe / f"{i}.png")
    used = (cpu() - started) / count
    shutil.rmtree(probe)
    return used


def run_once(
    url: Emulator, count: int, concurrency: int, transport: str, where: str | None = None
) -> dict[str, Any]:
    if where is not None:
        Path(where).mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=where) as folder:
        creation = creation_cost(Path(folder), count)
        spec = load_spec(write_spec(Path(folder), count))
        the_plan = plan(spec)
        options = RunOptions(concurrency=concurrency, transport=transport, retries=0)

        async def go() -> Any:
            async with make_http_client(concurrency, 60, transport) as http:
                return await run_async(
                    spec, the_plan, Endpoint(http, url, "bench"), options=options
                )

        cpu0, server0, t0 = cpu(), process_cpu(url.pid), time.perf_counter()
        result = run_event_loop(go())
        wall, used = time.perf_counter() - t0, cpu() - cpu0
        server = process_cpu(url.pid) - server0
    # Let the file system settle (the deleted files' writeback), so runs do not slow the next.
    os.sync()
    done = result.count(Status.DONE)
    assert done == count, f"only {done} of {count} done: {result.results[:3]}"
    return {"wall": wall, "cpu": used, "server_cpu": server, "creation": creation}


def quick_example_loop(url: str, count: int, folder: Path) -> float:
    """The provider's quick example, looped: POST, read the answer, fetch and save the image."""
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for i in range(count):
            response = client.post(
                url + "/v1/images/generations",
                headers={"Authorization": "Bearer bench", "Content-Type": "application/json"},
                json={
                    "prompt": f"loop {i}",
                    "model": "flux/schnell",
                    "image_size": SIZE,
                },
            )
            data = response.json()
            image = client.get(data["data"][0]["url"])
            (folder / f"{i}.png").write_bytes(image.content)
    return (time.perf_counter() - started) / count


def bare_aiohttp(url: str, count: int, concurrency: int) -> float:
    """The floor of this machine and emulator: aiohttp alone, with nothing checked, stored or
    recorded (each request a POST and a GET of its image, the bytes dropped). Wall seconds."""
    import asyncio

    import aiohttp

    async def go() -> None:
        connector = aiohttp.TCPConnector(limit=2 * concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            pending = list(range(count))

            async def worker() -> None:
                while pending:
                    body = {
                        "prompt": f"floor {pending.pop()}",
                        "model": "flux/schnell",
                        "image_size": SIZE,
                    }
                    async with session.post(
                        url + "/v1/images/generations",
                        json=body,
                        headers={"Authorization": "Bearer bench"},
                    ) as response:
                        answer = await response.json()
                    async with session.get(answer["data"][0]["url"]) as response:
                        await response.read()

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    run_event_loop(go())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", default="16,64,256")
    parser.add_argument("--transports", default="aiohttp,httpx")
    parser.add_argument("--loop", type=int, default=100, help="requests of the sequential loop")
    parser.add_argument(
        "--dir",
        default=str(WORK),
        help="where the outputs go (default: bench/work/, on the project's disk, as a user's are)",
    )
    parser.add_argument("--size", default="64", help="images of N x N, or W x H (1024x768) pixels")
    args = parser.parse_args()
    width, _, height = args.size.partition("x")
    SIZE.update(width=int(width), height=int(height or width))
    levels = [int(c) for c in args.concurrency.split(",")]
    transports = args.transports.split(",")

    rows, data = [], []
    with emulator_process("--latency", str(args.latency)) as url:
        run_once(url, 200, 64, transports[0], args.dir)  # warm up both sides
        with tempfile.TemporaryDirectory() as folder:
            per_request = quick_example_loop(url, args.loop, Path(folder))
        loop_total = per_request * args.requests
        floors = {c: bare_aiohttp(url, args.requests, c) for c in levels if c > 1}
        for transport in transports:
            for concurrency in levels:
                figures = run_once(url, args.requests, concurrency, transport, args.dir)
                ideal = args.requests / concurrency * args.latency
                floor = floors.get(concurrency)
                row = {
                    "transport": transport,
                    "concurrency": concurrency,
                    "requests": args.requests,
                    "wall_s": figures["wall"],
                    "ideal_s": ideal,
                    "over_ideal_pct": (figures["wall"] / ideal - 1) * 100,
                    "client_cpu_pct": figures["cpu"] / figures["wall"] * 100,
                    "client_cpu_ms_per_request": figures["cpu"] / args.requests * 1000,
                    "file_creation_ms": figures["creation"] * 1000,
                    "emulator_cpu_pct": figures["server_cpu"] / figures["wall"] * 100,
                    "speedup_vs_loop": loop_total / figures["wall"],
                    "bare_aiohttp_over_ideal_pct": (floor / ideal - 1) * 100 if floor else None,
                }
                data.append(row)
                rows.append(
                    [
                        transport,
                        concurrency,
                        args.requests,
                        figures["wall"],
                        ideal,
                        f"{row['over_ideal_pct']:+.1f}%",
                        f"{row['client_cpu_pct']:.0f}%",
                        f"{row['client_cpu_ms_per_request']:.2f}",
                        f"{row['file_creation_ms']:.3f}",
                        f"{row['emulator_cpu_pct']:.0f}%",
                        f"{row['speedup_vs_loop']:.1f}x",
                        f"{(floor / ideal - 1) * 100:+.1f}%" if floor else "-",
                    ]
                )
    report(
        f"runner ({args.latency * 1000:.0f} ms latency; sequential quick-example loop: "
        f"{per_request * 1000:.1f} ms per request, {loop_total:.0f} s for {args.requests})",
        [
            "transport",
            "C",
            "N",
            "wall s",
            "ideal s",
            "over ideal",
            "client CPU",
            "ms/request",
            "file creation ms",
            "emulator CPU",
            "vs loop",
            "aiohttp alone",
        ],
        rows,
        {"latency": args.latency, "loop_seconds_per_request": per_request, "runs": data},
    )


if __name__ == "__main__":
    main()
