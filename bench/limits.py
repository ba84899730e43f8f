"""How a run behaves at a provider's limit: failures, 429s and throughput against the limit.

The emulator runs in its own process with a hidden limit and a latency of 0.5 s; a run of N
requests at -j 64 (the ceiling) must find the limit by itself:

  (a) at most 8 generations in flight (`--max-in-flight 8`, as Black Forest Labs caps active
      tasks): the limit's throughput is 8 / latency;
  (b) 5 requests per second, 429s without Retry-After (`--rate-limit 5/s --no-retry-after`);
  (c) 5 requests per second, 429s with Retry-After.

Printed for each: requests failed, 429s as a share of requests, throughput as a share of the
limit's, and the limit in flight the run settled at. With `--before DIR` (a checkout of an
earlier version), the same scenarios at -j 16 with that version's `flux-pipeline run`.

    python bench/limits.py [--requests 200] [--latency 0.5] [-j 64] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emulator_process, matrix_spec, report

from flux_pipeline import load_spec
from flux_pipeline.running.runner import RunOptions, Status, run

SCENARIOS = {
    "(a) 8 in flight": (["--max-in-flight", "8"], lambda latency: 8 / latency),
    "(b) 5/s, no Retry-After": (["--rate-limit", "5/s", "--no-retry-after"], lambda _: 5.0),
    "(c) 5/s, Retry-After": (["--rate-limit", "5/s"], lambda _: 5.0),
}


def ours(url: str, count: int, concurrency: int, folder: Path) -> dict[str, Any]:
    spec = load_spec(
        matrix_spec(
            folder, "limits", count, model="flux/schnell", defaults={"image_size": "square"}
        )
    )
    started = time.perf_counter()
    result = run(spec, base_url=url, api_key="bench", options=RunOptions(concurrency=concurrency))
    wall = time.perf_counter() - started
    return {
        "failed": result.count(Status.FAILED) + result.count(Status.NOT_SENT),
        "overloads": result.overloads,
        "wall": wall,
        "settled": result.limit,
    }


def theirs(checkout: Path, url: str, count: int, folder: Path) -> dict[str, Any]:
    """An earlier version's `run -j 16` on the same scenario (the summary parsed)."""
    spec = matrix_spec(
        folder, "before", count, model="flux/schnell", defaults={"image_size": "square"}
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flux_pipeline", "run", "--base-url", url, "-j", "16", str(spec)],
        env={**os.environ, "PYTHONPATH": str(checkout), "AIMLAPI_KEY": "bench"},
        capture_output=True,
        text=True,
        cwd=checkout,
    )
    wall = time.perf_counter() - started
    failed = re.search(r"(\d+) failed", done.stdout)
    return {"failed": int(failed.group(1)) if failed else None, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("-j", "--concurrency", type=int, default=64)
    parser.add_argument("--before", type=Path, help="a checkout of an earlier version")
    args = parser.parse_args()
    rows, data = [], {}
    for name, (switches, capacity) in SCENARIOS.items():
        latency = ["--latency", str(args.latency)]
        with emulator_process(*latency, *switches) as url, tempfile.TemporaryDirectory() as tmp:
            got = ours(url, args.requests, args.concurrency, Path(tmp))
            before = theirs(args.before, url, args.requests // 2, Path(tmp)) if args.before else {}
        ideal = args.requests / capacity(args.latency)
        share = ideal / got["wall"]
        row = [
            name,
            got["failed"],
            f"{got['overloads'] / args.requests:.1%}",
            f"{share:.2f}",
            f"{got['settled']:.1f}" if got["settled"] is not None else "-",
        ]
        if args.before:
            row.append(f"{before['failed']} of {args.requests // 2}")
        rows.append(row)
        data[name] = {**got, "ideal_s": ideal, "throughput_share": share, "before": before}
    header = ["scenario", "failed", "429s/requests", "throughput/limit", "settled in flight"]
    if args.before:
        header.append("before, -j 16: failed")
    report(
        f"limits ({args.requests} requests at -j {args.concurrency}, latency {args.latency} s)",
        header,
        rows,
        data,
    )


if __name__ == "__main__":
    main()
