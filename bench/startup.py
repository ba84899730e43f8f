"""Start-up: the wall time of commands that have little to do, as `make` over many specs runs
them (a new process each): `validate` of a one-request spec, and a `run` with nothing to do;
and which heavy libraries each imports (it should be none of aiohttp, httpx, jsonschema).

    python bench/startup.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report

import flux_pipeline

SPEC = "version: 1\nmodel: flux/schnell\ndefaults: {image_size: {width: 64, height: 64}}\n"
SPEC += "jobs: [{name: a, prompt: p}]\n"
HEAVY = """
import sys
from flux_pipeline.cli import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
heavy = ("aiohttp", "httpx", "jsonschema", "uvicorn", "starlette")
found = {m.split(".")[0] for m in sys.modules} & set(heavy)
print("heavy:" + ",".join(sorted(found)))
"""


def timed(folder: Path, args: list[str], repeat: int) -> tuple[float, float]:
    """Median and fastest wall time of `flux-pipeline ARGS` in a new process."""
    command = [str(Path(sys.executable).with_name("flux-pipeline")), *args]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, cwd=folder, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    # As an installed package has them: bytecode for every module (an environment with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise compile the package at every start).
    compileall.compile_dir(Path(flux_pipeline.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "one.yaml").write_text(SPEC)
        subprocess.run(
            [sys.executable, "-m", "flux_pipeline", "run", "--emulator", "one.yaml"],
            cwd=folder,
            capture_output=True,
            check=True,
        )
        bare = timed(folder, ["--version"], args.repeat)
        rows = [["--version (the interpreter and click)", *bare, ""]]
        for label, command in [
            ("validate, one request", ["validate", "one.yaml"]),
            ("run, nothing to do", ["run", "--emulator", "one.yaml"]),
        ]:
            median, fastest = timed(folder, command, args.repeat)
            done = subprocess.run(
                [sys.executable, "-c", HEAVY, *command], cwd=folder, capture_output=True, text=True
            )
            said = [x for x in done.stdout.splitlines() if x.startswith("heavy:")]
            rows.append([label, median, fastest, said[-1].removeprefix("heavy:") or "none"])
    report(
        "start-up: a new process per command",
        ["command", "median s", "fastest s", "heavy imports"],
        rows,
        {"rows": rows},
    )


if __name__ == "__main__":
    main()
