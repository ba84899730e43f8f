"""Peak memory of `flux-pipeline run` while it generates 1440x1440 PNG images delivered by URL
at concurrency 64, for two sizes of spec (memory should stay flat as the spec grows).

    python bench/memory.py [--requests 500,2000]
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


def write_spec(folder: Path, count: int) -> Path:
    return matrix_spec(
        folder,
        "memory",
        count,
        defaults={"image_size": {"width": 1440, "height": 1440}, "output_format": "png"},
    )


def peak_rss_mb(count: int, url: str) -> tuple[float, float, int]:
    """Peak RSS (MB) of one run in a fresh process, its wall time, and the bytes it wrote."""
    with tempfile.TemporaryDirectory() as folder:
        spec = write_spec(Path(folder), count)
        env = {**os.environ, "AIMLAPI_KEY": "bench", "FLUX_PIPELINE_BASE_URL": url}
        # A wrapper reports the child's own peak, not this process's.
        code = (
            "import resource, subprocess, sys;"
            "subprocess.run(sys.argv[1:], check=True, capture_output=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                sys.executable,
                "-m",
                "flux_pipeline",
                "run",
                "-j",
                "64",
                str(spec),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        wall = time.perf_counter() - started
        written = sum(p.stat().st_size for p in (Path(folder) / "out").rglob("*.png"))
    return int(done.stdout.strip()) / 1024, wall, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", default="500,2000")
    args = parser.parse_args()
    rows, data = [], []
    with emulator_process() as url:
        for count in (int(c) for c in args.requests.split(",")):
            peak, wall, written = peak_rss_mb(count, url)
            rows.append([count, f"{peak:.0f}", f"{written / 1e6:.0f}", wall])
            data.append(
                {
                    "requests": count,
                    "peak_rss_mb": peak,
                    "written_mb": written / 1e6,
                    "wall_s": wall,
                }
            )
    report(
        "memory (1440x1440 PNG by URL, concurrency 64)",
        ["requests", "peak RSS MB", "images MB", "wall s"],
        rows,
        {"runs": data},
    )


if __name__ == "__main__":
    main()
