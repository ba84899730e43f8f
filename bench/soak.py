"""Soak: interrupt a paid run again and again, and count what was paid twice.

One spec of N requests is run at -j C against the emulator (in this process, billing each
request when its body arrives, with a latency of L seconds). Each round starts `run` in a
process of its own, waits for a random number of finished requests (an event the run
reports: its k-th progress line, never a timer) and sends it a signal drawn from the mix:
SIGINT or SIGTERM (the run drains: the requests in flight finish), or SIGKILL (nothing is
drained; the next run adopts what the write-ahead record holds). After the rounds, one run
completes the spec. Then two runs of one spec are started at once, and two specs that share
a folder.

For each round it records which requests the emulator billed during it and, of those, how
many the interrupted run did not know the answer of (not in the lock, not in the write-ahead
record): only those are paid again. Printed per signal: rounds and requests lost so (0 for a
drain); for all rounds, what was paid twice by the emulator's count against that sum.

    python bench/soak.py [--interruptions 30] [--requests 300] [-j 16] [--latency 0.5]
                         [--signals SIGINT,SIGTERM,SIGKILL] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _common import matrix_spec, report

from flux_pipeline import load_spec, validate
from flux_pipeline.emulator import EmulatorConfig, EmulatorServer
from flux_pipeline.running.recovery import FILE_NAME, generation_from_json, read_pending


def start(url: str, spec: Path, concurrency: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flux_pipeline", "run", "--base-url", url]
        + ["-j", str(concurrency), *extra, str(spec)],
        env={**os.environ, "AIMLAPI_KEY": "soak", "CI": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def complete(url: str, spec: Path, concurrency: int) -> int:
    """Run a spec to its end; the exit code."""
    process = start(url, spec, concurrency)
    process.communicate(timeout=600)
    return process.returncode


def until_progress(process: subprocess.Popen[str], lines: int) -> None:
    assert process.stderr is not None
    seen = 0
    while seen < lines:
        line = process.stderr.readline()
        if not line:
            return
        seen += line.startswith("[")


def known(spec: Path, output: Path) -> set[str]:
    """Request ids the lock or the write-ahead record holds (a result, or an answer whose
    images can still be fetched)."""
    ids: set[str] = set()
    lock = spec.with_name(spec.stem + ".lock.json")
    if lock.exists():
        ids |= set(json.loads(lock.read_text())["requests"])
    found = read_pending(output / ".flux-cache" / FILE_NAME)
    ids |= set(found.results)
    pending = found.answers.values()
    return ids | {a.request_id for a in pending if generation_from_json(a.answer)}


def paid_twice(counts: Counter[str]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def soak_spec(folder: Path, name: str, count: int) -> Path:
    """A spec of `count` requests of small PNGs."""
    image_size = {"width": 256, "height": 256}
    return matrix_spec(
        folder, name, count, model="flux/schnell", defaults={"image_size": image_size}
    )


def campaign(
    args: argparse.Namespace, folder: Path, number: int
) -> tuple[Path, Path, dict[str, str]]:
    """A fresh spec of N requests (its own names, so its own bodies)."""
    spec = soak_spec(folder, f"soak{number}", args.requests)
    loaded = load_spec(spec)
    return spec, loaded.output, {r.id: r.body_sha256 for r in validate(loaded)}


def interruptions(args: argparse.Namespace, server: EmulatorServer, folder: Path) -> list[Any]:
    """Interrupt runs until `--interruptions` signals were sent; a spec whose requests are
    all done is finished and a new one begun. Returns the rounds, what was paid, what was
    kept, and the exit codes of the runs that completed each spec."""
    counters = server.emulator.counters
    rng = random.Random(args.seed)
    signals = [getattr(signal, name) for name in args.signals.split(",")]
    rounds: list[dict[str, Any]] = []
    specs = [campaign(args, folder, 1)]
    finals = []
    while len(rounds) < args.interruptions:
        spec, output, body_of = specs[-1]
        left = args.requests - len(known(spec, output))
        if left < 2:
            finals.append(complete(server.url, spec, args.concurrency))
            specs.append(campaign(args, folder, len(specs) + 1))
            continue
        sig = rng.choice(signals)
        # Anywhere in the first waves: most of a run is still to come when the signal lands.
        after = rng.randint(1, max(1, min(left - 1, 3 * args.concurrency)))
        before = Counter(counters.paid_bodies)
        process = start(server.url, spec, args.concurrency)
        until_progress(process, after)
        process.send_signal(sig)
        process.communicate(timeout=args.drain + 60)
        now_known = {body_of[i] for i in known(spec, output) if i in body_of}
        paid_now = Counter(counters.paid_bodies) - before
        rounds.append(
            {
                "signal": signal.Signals(sig).name,
                "after": after,
                "exit": process.returncode,
                # requests this round paid for whose answer it does not know: paid again later
                "lost": sum(1 for body in paid_now if body not in now_known),
            }
        )
    for spec, _, _ in specs[len(finals) :]:
        finals.append(complete(server.url, spec, args.concurrency))
    kept = sum(
        len(json.loads(s.with_name(s.stem + ".lock.json").read_text())["requests"])
        for s, _, _ in specs
    )
    return [rounds, Counter(counters.paid_bodies), kept, finals, len(specs)]


def concurrent(args: argparse.Namespace, server: EmulatorServer, folder: Path) -> list[Any]:
    """Two runs of one spec at once (the second waits), and two specs in one folder."""
    before = Counter(server.emulator.counters.paid_bodies)
    one = soak_spec(folder, "same", args.requests // 2)
    other = soak_spec(folder, "other", args.requests // 2)
    processes = [
        start(server.url, spec, args.concurrency, "--wait", "600") for spec in (one, one, other)
    ]
    for process in processes:
        process.communicate(timeout=600)
    codes = [p.returncode for p in processes]
    paid = Counter(server.emulator.counters.paid_bodies) - before
    kept = sum(
        len(json.loads(s.with_name(s.stem + ".lock.json").read_text())["requests"])
        for s in (one, other)
    )
    return [codes, paid, kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interruptions", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("-j", "--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--signals", default="SIGINT,SIGTERM,SIGKILL")
    parser.add_argument("--drain", type=float, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    config = EmulatorConfig(latency=(args.latency * 0.5, args.latency * 1.5), seed=args.seed)
    with EmulatorServer(config) as server, tempfile.TemporaryDirectory() as temp:
        for part in "ab":
            (Path(temp) / part).mkdir()
        rounds, counts, kept, finals, count = interruptions(args, server, Path(temp) / "a")
        codes, paid, kept_both = concurrent(args, server, Path(temp) / "b")

    by_signal: dict[str, list[int]] = defaultdict(list)
    for entry in rounds:
        by_signal[entry["signal"]].append(entry["lost"])
    rows = [
        [name, len(values), sum(values), "0" if name != "SIGKILL" else "answers not arrived"]
        for name, values in sorted(by_signal.items())
    ]
    total = paid_twice(counts)
    rows.append(["all rounds", len(rounds), total, f"<= {sum(sum(v) for v in by_signal.values())}"])
    rows.append(["2 runs + 2 specs at once", 3, paid_twice(paid), "0"])
    report(
        f"soak ({args.requests} requests, -j {args.concurrency}, latency {args.latency} s, "
        f"{len(rounds)} interruptions over {count} specs; paid {sum(counts.values())}, kept "
        f"{kept}, exits of the completing runs {sorted(set(finals))}; concurrent: paid "
        f"{sum(paid.values())}, kept {kept_both}, exits {codes})",
        ["signal", "rounds", "paid twice", "allowed"],
        rows,
        {
            "rounds": rounds,
            "paid": sum(counts.values()),
            "paid_twice": total,
            "kept": kept,
            "concurrent": {
                "exits": codes,
                "paid": sum(paid.values()),
                "paid_twice": paid_twice(paid),
                "kept": kept_both,
            },
        },
    )
    drained = sum(sum(v) for k, v in by_signal.items() if k != "SIGKILL")
    bound = sum(by_signal.get("SIGKILL", []))
    if drained or total > bound or paid_twice(paid) or kept != count * args.requests:
        sys.exit("FAILED: something was paid twice that need not have been, or was lost")


if __name__ == "__main__":
    main()
