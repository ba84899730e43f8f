"""10,000 generated hostile specs through `validate` (in-process, as the CLI runs it).

Prints: how many were valid and invalid, tracebacks or internal errors (must be 0), the
slowest spec's time (must be under 2 s), the process's peak RSS (an upper bound of any one
spec's; must be under 200 MB) and which stage refused the invalid ones. The specs come from
`tests/fuzz_specs.py`, seeded: the same run gives the same specs.

    python bench/fuzz.py [--specs 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import report

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from click.testing import CliRunner  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    runner = CliRunner()
    outcomes: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    slowest, slowest_text, crashes = 0.0, "", []
    peak, peak_text = 0.0, ""  # the spec that raised the process's peak RSS the most
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        for n in range(args.specs):
            text = spec_text(rng)
            path.write_text(text, encoding="utf-8")
            started = time.perf_counter()
            result = runner.invoke(cli, ["validate", str(path)], catch_exceptions=True)
            seconds = time.perf_counter() - started
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if rss > peak + 20:
                peak_text = text
            peak = max(peak, rss)
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
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ["specs", args.specs],
        ["valid", outcomes["valid"]],
        ["invalid", outcomes["invalid"]],
        ["tracebacks or internal errors", len(crashes)],
        ["slowest spec, s", slowest],
        ["peak RSS, MB", rss_mb],
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
    if peak_text:
        print(f"\n--- the last spec that raised the peak RSS by 20 MB or more\n{peak_text[:800]}")
        Path(tempfile.gettempdir(), "fuzz-peak.yaml").write_text(peak_text, encoding="utf-8")


if __name__ == "__main__":
    main()
