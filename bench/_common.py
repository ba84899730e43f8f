"""Shared by the benchmarks: an emulator in its own process, and figures printed two ways."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Emulator(str):
    """The emulator's URL, with its process id for CPU readings."""

    pid: int


@contextlib.contextmanager
def emulator_process(*switches: str) -> Iterator[Emulator]:
    """`flux-pipeline emulator` in a process of its own (its own core, its own GIL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flux_pipeline", "emulator", "--port", str(port), *switches],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = Emulator(f"http://127.0.0.1:{port}")
    url.pid = process.pid
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/ready", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def matrix_spec(folder: Path, name: str, count: int, **top: Any) -> Path:
    """A spec of `count` requests (one matrix axis) named `name`, with extra top-level keys."""
    import yaml

    spec = {
        "version": 1,
        "name": name,
        **top,
        "jobs": [
            {"name": "n{{ i }}", "prompt": name + " {{ i }}", "matrix": {"i": list(range(count))}}
        ],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def report(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], data: dict[str, Any]
) -> None:
    """Print a table for people and one JSON line for machines."""
    cells = [list(map(str, header))] + [
        [f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print("JSON " + json.dumps({"benchmark": title, "machine": machine(), **data}))
