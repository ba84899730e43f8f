"""What a rerun costs when nothing changed: a spec of 10,000 requests, all up to date; the
wall time of `flux-pipeline run` (no request may be sent) and of `check`, as a user runs them
(new processes, start-up included, every image's hash verified or its cache entry trusted).

Hashes are remembered by the files' stat (`OUT/.flux-cache/hashes.json`, as git's index);
the last row is `check` again without that index, every image read and hashed.

    python bench/rerun.py [--requests 10000] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emulator_process, matrix_spec, report


def write_spec(folder: Path, count: int, size: int = 64) -> Path:
    return matrix_spec(
        folder,
        "rerun",
        count,
        model="flux/schnell",
        defaults={"image_size": {"width": size, "height": size}},
    )


def timed(*args: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flux_pipeline", *args], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, emulator_process() as url:
        spec = str(write_spec(Path(folder), args.requests, args.size))
        env = {**os.environ, "AIMLAPI_KEY": "bench", "FLUX_PIPELINE_BASE_URL": url}
        first, _ = timed("run", "-j", "64", spec, env=env)
        rerun, out = timed("run", spec, env=env)
        assert f"0 done, {args.requests} skipped" in out, out
        check, _ = timed("check", spec, env=env)
        check_cold = None
        cache = Path(folder) / "out/rerun/.flux-cache/hashes.json"
        if cache.exists():
            cache.unlink()
            check_cold, _ = timed("check", spec, env=env)
    rows = [["first run (generates)", first], ["rerun, all up to date", rerun], ["check", check]]
    if check_cold is not None:
        rows.append(["check without the hash cache", check_cold])
    report(
        f"rerun ({args.requests:,} requests up to date, {args.size}x{args.size} PNG)",
        ["command", "seconds"],
        rows,
        {
            "requests": args.requests,
            "size": args.size,
            "first_run": first,
            "rerun": rerun,
            "check": check,
            "check_without_cache": check_cold,
        },
    )


if __name__ == "__main__":
    main()
