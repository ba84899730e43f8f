"""10,000 generated hostile specs through `validate` (in-process, as the CLI runs it).

Prints: how many were valid and invalid, tracebacks or internal errors (must be 0), the
slowest spec's time (must be under 2 s), the largest memory one spec needs (must be under
200 MB) and which stage refused the invalid ones. Memory: the 20 slowest specs run again
under tracemalloc (which would distort the times), their peak of Python allocations picks the
hungriest, and that one is validated in a fresh process whose peak RSS is the figure (one
process for all 10,000 would only show how much the allocator keeps between specs).
The specs come from `tests/fuzz_specs.py`, seeded: the
same run gives the same specs.

    python bench/fuzz.py [--specs 10000] [--seed 0]
    python bench/fuzz.py --files 60 [--seed 0]

`--files N` runs N hostile *files* instead (`tests/fuzz_files.py`, full size: globs with
repeated `**` over 40-deep trees, FIFOs, rows files of up to 5 MB, filter bombs, 900k-item
`vars:` lists), each `validate` in a process of its own (a FIFO must not block it), and
prints each attack's slowest wall time and largest peak RSS.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from _common import report

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from click.testing import CliRunner  # noqa: E402
from fuzz_files import attack  # noqa: E402
from fuzz_specs import spec_text  # noqa: E402

from flux_pipeline.cli import cli  # noqa: E402


def stage(stderr: str) -> str:
    """Which check refused a spec, from its first error line."""
    first = stderr.splitlines()[0] if stderr else ""
    for word, name in [
        ("YAML error", "yaml"),
        ("unsafe template", "template bound"),
        ("rendered text is longer", "template bound"),
        ("template", "template"),
        ("undefined variable", "template"),
        ("requests or more", "request cap"),
        ("JSON can carry", "number"),
        ("safe integer", "number"),
    ]:
        if word in first:
            return name
    return "schema or other"


SAMPLE = 20  # specs run again under tracemalloc, which makes the hungriest ten times slower


def hungriest_of(runner: CliRunner, path: Path, specs: list[tuple[float, str]]) -> tuple[int, str]:
    """Of these specs, the one with the largest peak of Python allocations, and that peak."""
    hungriest, hungriest_text = 0, ""
    tracemalloc.start()
    for _, text in specs:
        path.write_text(text, encoding="utf-8")
        tracemalloc.reset_peak()
        runner.invoke(cli, ["validate", str(path)], catch_exceptions=True)
        allocated = tracemalloc.get_traced_memory()[1]
        if allocated > hungriest:
            hungriest, hungriest_text = allocated, text
    tracemalloc.stop()
    return hungriest, hungriest_text


CHILD = """
import sys
from pathlib import Path
from flux_pipeline.cli import cli
try:
    cli.main(["validate", sys.argv[1]], standalone_mode=False)
except BaseException:
    pass
status = Path("/proc/self/status").read_text()
print("VmHWM", next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM")))
"""


def files_run(count: int, seed: int) -> None:
    """`--files`: hostile files at full size, each validated in a fresh process (timed, its
    peak RSS read); a process still running after 60 s counts as hung."""
    rng = random.Random(seed)
    slowest: dict[str, float] = {}
    biggest: dict[str, float] = {}
    answers: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(count):
            name, spec = attack(rng, Path(tmp) / f"case-{n}", scale=1.0)
            started = time.perf_counter()
            try:
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(spec)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            except subprocess.TimeoutExpired:
                answers[f"{name}: hung"] += 1
                continue
            seconds = time.perf_counter() - started
            peak = [x for x in done.stdout.splitlines() if x.startswith("VmHWM")][-1]
            slowest[name] = max(slowest.get(name, 0.0), seconds)
            biggest[name] = max(biggest.get(name, 0.0), int(peak.split()[1]) / 1024)
            crashed = "internal error" in done.stderr or "Traceback" in done.stderr
            answers[f"{name}: {'crash' if crashed else 'answered'}"] += 1
    rows = [[k, slowest[k], biggest[k]] for k in sorted(slowest)]
    rows += [[k, v, ""] for k, v in sorted(answers.items())]
    report(
        "fuzz: hostile files through validate (a process each, start-up included)",
        ["attack", "slowest, s", "peak RSS, MB"],
        rows,
        {"slowest": slowest, "rss_mb": biggest, "answers": dict(answers)},
    )


def fresh_process_rss(text: str) -> float:
    """The peak RSS, in MB, of `validate` on one spec in a process of its own (its VmHWM,
    which starts afresh at exec: a fork of this big process would count this one's pages)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True
        )
    line = [x for x in done.stdout.splitlines() if x.startswith("VmHWM")][-1]
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=0, help="hostile files instead of specs")
    args = parser.parse_args()
    if args.files:
        files_run(args.files, args.seed)
        return
    rng = random.Random(args.seed)
    runner = CliRunner()
    outcomes: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    slowest, slowest_text, crashes = 0.0, "", []
    timed: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        for n in range(args.specs):
            text = spec_text(rng)
            path.write_text(text, encoding="utf-8")
            started = time.perf_counter()
            result = runner.invoke(cli, ["validate", str(path)], catch_exceptions=True)
            seconds = time.perf_counter() - started
            timed.append((seconds, text))
            if seconds > slowest:
                slowest, slowest_text = seconds, text
            crashed = (
                result.exit_code not in (0, 1)
                or "internal error" in result.stderr
                or "Traceback" in result.stderr
            )
            if crashed:
                crashes.append((n, text, result.stderr[-500:]))
            outcomes["crash" if crashed else "valid" if result.exit_code == 0 else "invalid"] += 1
            if result.exit_code == 1:
                stages[stage(result.stderr)] += 1
        hungriest, hungriest_text = hungriest_of(runner, path, sorted(timed)[-SAMPLE:])
    rss_mb = fresh_process_rss(hungriest_text)
    rows = [
        ["specs", args.specs],
        ["valid", outcomes["valid"]],
        ["invalid", outcomes["invalid"]],
        ["tracebacks or internal errors", len(crashes)],
        ["slowest spec, s", slowest],
        ["largest allocations of one spec, MB", hungriest / 2**20],
        ["that spec alone: peak RSS, MB", rss_mb],
        *[[f"refused by: {k}", v] for k, v in stages.most_common()],
    ]
    report(
        "fuzz: generated specs through validate",
        ["", "value"],
        rows,
        {"outcomes": dict(outcomes), "stages": dict(stages), "slowest": slowest, "rss_mb": rss_mb},
    )
    for n, text, stderr in crashes[:3]:
        print(f"\n--- crash {n}\n{text}\n{stderr}")
    print(f"\n--- slowest spec ({slowest:.2f} s)\n{slowest_text[:800]}")
    Path(tempfile.gettempdir(), "fuzz-slowest.yaml").write_text(slowest_text, encoding="utf-8")
    print(f"\n--- the hungriest spec ({rss_mb:.0f} MB)\n{hungriest_text[:800]}")


if __name__ == "__main__":
    main()
