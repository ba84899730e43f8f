"""Budget runs: credits the emulator billed (at receipt, as the real API does) under a cap.

For each cap, -j, answer shape and price (the table's, or 3x it: a table that is wrong), a
fresh output folder runs N requests of 1 credit each by the table, with a latency that keeps
-j requests in flight. `before` is the same run by an earlier checkout (`--before DIR`),
whose cap counted only answered requests.

    python bench/budget.py [--requests 60] [--latency 0.1] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import matrix_spec, report

from flux_pipeline.emulator import EmulatorServer

CASES = [  # cap, -j, shape, price factor
    (5, 1, "data", 1.0),
    (5, 16, "data", 1.0),
    (5, 16, "images", 1.0),
    (5, 64, "data", 1.0),
    (20, 16, "data", 1.0),
    (20, 16, "images", 1.0),
    (20, 16, "data", 3.0),
    (50, 64, "data", 3.0),
]


def spent(
    checkout: Path | None, server: EmulatorServer, spec: Path, cap: int, jobs: int
) -> tuple[float, int]:
    """Credits billed and requests done by one `run` of the spec."""
    before = server.emulator.counters.snapshot()["credits"]
    env = {**os.environ, "AIMLAPI_KEY": "bench"}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, "-m", "flux_pipeline", "run", "--base-url", server.url]
    done = subprocess.run(
        [*command, "-j", str(jobs), "--partial-budget", "--max-credits", str(cap), str(spec)],
        env=env,
        capture_output=True,
        text=True,
        cwd=checkout,
    )
    count = re.search(r"(\d+) done", done.stdout)
    return server.emulator.counters.snapshot()["credits"] - before, int(
        count.group(1)
    ) if count else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--before", type=Path, help="an earlier checkout to compare with")
    args = parser.parse_args()
    rows: list[list[Any]] = []
    data: list[dict[str, Any]] = []
    with EmulatorServer() as server, tempfile.TemporaryDirectory() as tmp:
        for n, (cap, jobs, shape, factor) in enumerate(CASES):
            config = {"shape": shape, "price_factor": factor, "latency": (args.latency,) * 2}
            server.emulator.configure(**config)
            folder = Path(tmp) / f"case{n}"
            folder.mkdir()
            common = {"model": "flux/schnell", "defaults": {"image_size": "square"}}
            ours = spent(
                None, server, matrix_spec(folder, "ours", args.requests, **common), cap, jobs
            )
            row: list[Any] = [cap, jobs, shape, f"{factor:g}x", ours[0], ours[1]]
            before = None
            if args.before:
                spec = matrix_spec(folder, "before", args.requests, **common)
                before = spent(args.before, server, spec, cap, jobs)
                row += [before[0], before[1]]
            rows.append(row)
            data.append(
                {
                    "cap": cap,
                    "j": jobs,
                    "shape": shape,
                    "price": factor,
                    "spent": ours[0],
                    "done": ours[1],
                    "before": before,
                }
            )
    header = ["cap", "-j", "shape", "price", "spent", "done"]
    if args.before:
        header += ["before: spent", "before: done"]
    report("budget runs (credits billed by the emulator)", header, rows, {"cases": data})


if __name__ == "__main__":
    main()
