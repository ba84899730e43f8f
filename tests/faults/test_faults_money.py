"""Every request is money: one writer per output folder, interruptions that drain, results
durable before they are reported done. Against the emulator, which bills a request when it
receives it (`paid_bodies`), so each test counts what was paid twice.

Signals are sent on an event the run reports (its k-th progress line), never after a sleep.
The full randomised loops (20 interruptions of each kind, 200 requests) are in bench/soak.py;
here a seeded sample of each.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import Result
from helpers import invoke, known_answers, schnell_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store import atomic
from flux_pipeline.store.atomic import TEMP_PREFIX, sweep_temp_files, temp_name


def spawn(url: str, *args: str) -> subprocess.Popen[str]:
    """`flux-pipeline run ARGS` against `url` in a process of its own, progress as lines."""
    return subprocess.Popen(
        [sys.executable, "-m", "flux_pipeline", "run", "--base-url", url, *args],
        env={**os.environ, "AIMLAPI_KEY": "k", "CI": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_progress(process: subprocess.Popen[str], lines: int) -> list[str]:
    """Read the run's stderr until its `lines`-th progress line (or its end)."""
    assert process.stderr is not None
    seen: list[str] = []
    while sum(1 for line in seen if line.startswith("[")) < lines:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
    return seen


def finish(process: subprocess.Popen[str], seen: Sequence[str] = ()) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, "".join(seen) + err


def run_against(server: EmulatorServer, spec: Path) -> Result:
    """`run SPEC` in-process against the emulator."""
    return invoke("run", "--base-url", server.url, str(spec), env={"AIMLAPI_KEY": "k"})


def paid(server: EmulatorServer) -> Counter[str]:
    return Counter(server.emulator.counters.paid_bodies)


def paid_twice(counts: Counter[str]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def paid_again(server: EmulatorServer, spec: Path) -> set[str]:
    """The requests whose body the emulator billed more than once, by the lock's hashes."""
    twice = {h for h, n in paid(server).items() if n > 1}
    lock = json.loads(spec.with_name(spec.stem + ".lock.json").read_text())["requests"]
    return {key for key, entry in lock.items() if entry["body_sha256"] in twice}


def lock_ids(spec: Path) -> set[str]:
    lock = spec.with_name(spec.stem + ".lock.json")
    return set(json.loads(lock.read_text())["requests"]) if lock.exists() else set()


# ----- one writer per output folder --------------------------------------------------------


def test_a_second_run_of_one_spec_exits_2_naming_the_first_or_waits_for_it(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(0.02, 0.02))
    spec = schnell_spec(tmp_path, 40)
    first = spawn(emulator.url, "-j", "4", str(spec))
    seen = wait_for_progress(first, 1)  # it holds the folder and is paying
    first.send_signal(signal.SIGSTOP)  # still running when the second one starts
    second = run_against(emulator, spec)
    assert second.exit_code == 2
    assert f"pid {first.pid}" in second.stderr
    assert "--wait SECONDS" in second.stderr

    # The first run is held still until the next run says it waits
    waiting = spawn(emulator.url, "--wait", "120", str(spec))
    assert waiting.stderr is not None
    told = waiting.stderr.readline()
    first.send_signal(signal.SIGCONT)
    assert told.startswith("waiting up to 120 s for flux-pipeline run (pid")
    code, _, err = finish(first, seen)
    assert code == 0, err
    code, out, err = finish(waiting)
    assert code == 0, err
    assert "0 done, 40 skipped" in out  # the first run did it all

    counts = paid(emulator)
    assert sum(counts.values()) == 40 and paid_twice(counts) == 0


def test_merge_waits_for_the_run_that_holds_the_folder(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(0.02, 0.02))
    spec = schnell_spec(tmp_path, 20)
    assert invoke("run", "--shard", "1/2", "--emulator", str(spec)).exit_code == 0
    running = spawn(emulator.url, "-j", "2", "--shard", "2/2", str(spec))
    seen = wait_for_progress(running, 1)
    running.send_signal(signal.SIGSTOP)  # still running when merge tries
    busy = invoke("merge", str(spec))
    running.send_signal(signal.SIGCONT)
    assert busy.exit_code == 2 and f"pid {running.pid}" in busy.stderr
    code, _, err = finish(running, seen)
    assert code == 0, err
    assert invoke("merge", str(spec)).exit_code == 0
    assert len(lock_ids(spec)) == 20


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_two_specs_in_one_folder_under_make_j2_pay_once_and_lose_nothing(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(0.005, 0.005))
    for name in ("a", "b"):
        schnell_spec(tmp_path, 60, name=f"{name}.yaml")
    flux = f"{sys.executable} -m flux_pipeline"
    (tmp_path / "Makefile").write_text(
        textwrap.dedent(
            f"""\
            all: a.lock.json b.lock.json
            %.lock.json: %.yaml
            \tAIMLAPI_KEY=k {flux} run --base-url {emulator.url} -j 8 $<
            """
        )
    )
    made = subprocess.run(
        ["make", "-j2", "--no-print-directory"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert len(lock_ids(tmp_path / "a.yaml")) == len(lock_ids(tmp_path / "b.yaml")) == 60
    counts = paid(emulator)
    assert sum(counts.values()) == 120 and paid_twice(counts) == 0
    for spec in ("a.yaml", "b.yaml"):
        assert invoke("check", str(tmp_path / spec)).exit_code == 0


def test_the_sweep_removes_only_the_files_of_writers_that_are_gone(tmp_path: Path) -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = tmp_path / f"{TEMP_PREFIX}{atomic.HOST}-{ended.stdout.strip()}-0"
    alive = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        live = tmp_path / f"{TEMP_PREFIX}{atomic.HOST}-{alive.pid}-0"
        mine = tmp_path / temp_name()
        elsewhere = tmp_path / f"{TEMP_PREFIX}otherhost-1-0"
        for path in (dead, live, mine, elsewhere):
            path.write_bytes(b"x")
        assert sweep_temp_files(tmp_path) == 1
        assert not dead.exists()
        assert live.exists() and mine.exists() and elsewhere.exists()
    finally:
        alive.communicate(b"")


def test_a_run_started_during_a_gallery_leaves_its_files_alone(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = schnell_spec(tmp_path, 4)
    assert invoke("run", "--emulator", str(spec)).exit_code == 0
    (tmp_path / "spec.yaml").write_text(spec.read_text().replace("p {{ i }}", "q {{ i }}"))
    commit = atomic.PendingFile.commit
    runs = []

    def commit_after_a_run(self: atomic.PendingFile, target: Path, *, durable: bool) -> None:
        if not runs:  # while the gallery's first file is being written, a run starts
            runs.append(
                subprocess.run(
                    [sys.executable, "-m", "flux_pipeline", "run", "--emulator", str(spec)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            )
        commit(self, target, durable=durable)

    monkeypatch.setattr(atomic.PendingFile, "commit", commit_after_a_run)
    gallery = invoke("gallery", str(spec))
    assert gallery.exit_code == 0, gallery.stderr
    assert runs and runs[0].returncode == 0, runs[0].stderr


def test_a_gallery_during_a_run_succeeds(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(latency=(0.02, 0.02))
    spec = schnell_spec(tmp_path, 10)
    assert run_against(emulator, spec).exit_code == 0
    schnell_spec(tmp_path, 30)
    running = spawn(emulator.url, "-j", "2", str(spec))
    seen = wait_for_progress(running, 3)
    gallery = invoke("gallery", str(spec))
    assert gallery.exit_code == 0, gallery.stderr
    code, _, err = finish(running, seen)
    assert code == 0, err
    assert paid_twice(paid(emulator)) == 0


# ----- interruptions that drain ------------------------------------------------------------

SAMPLE = random.Random(20261125)


@pytest.mark.parametrize(
    ("signame", "after"),
    [("SIGINT", SAMPLE.randint(1, 30)), ("SIGTERM", SAMPLE.randint(1, 30)), ("SIGTERM", 1)],
)
def test_an_interruption_lets_the_requests_in_flight_finish_and_pays_nothing_twice(
    tmp_path: Path, emulator: EmulatorServer, signame: str, after: int
) -> None:
    emulator.emulator.configure(latency=(0.1, 0.2), seed=after)
    spec = schnell_spec(tmp_path, 48)
    running = spawn(emulator.url, "-j", "8", str(spec))
    seen = wait_for_progress(running, after)
    running.send_signal(getattr(signal, signame))
    code, out, err = finish(running, seen)
    assert code == (130 if signame == "SIGINT" else 143), err
    assert "Traceback" not in err
    if "finishing" in err:
        again = "Ctrl-C again" if signame == "SIGINT" else "the signal again"
        assert f"already paid for; {again} to abandon them" in err
    done = lock_ids(spec)
    assert len(done) < 48
    assert known_answers(tmp_path / "out" / "spec") <= done  # nothing left unstored

    rerun = run_against(emulator, spec)
    assert rerun.exit_code == 0, rerun.stderr
    counts = paid(emulator)
    assert paid_twice(counts) == 0
    assert sum(counts.values()) == 48


def test_a_second_signal_abandons_the_requests_in_flight_and_the_next_run_fetches_them(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    # Long answers: the second Ctrl-C comes while every request of the first wave is paid
    # for and not answered; those are paid again. What was answered is not.
    emulator.emulator.configure(latency=(0.3, 0.3), slow_download=0.5)
    spec = schnell_spec(tmp_path, 16)
    running = spawn(emulator.url, "-j", "4", str(spec))
    seen = wait_for_progress(running, 2)
    running.send_signal(signal.SIGINT)
    assert running.stderr is not None
    while "finishing" not in (line := running.stderr.readline()):
        assert line, "the run ended without draining"
        seen.append(line)
    running.send_signal(signal.SIGINT)
    code, _, err = finish(running, seen)
    assert code == 130, err
    known = lock_ids(spec) | known_answers(tmp_path / "out" / "spec")

    rerun = run_against(emulator, spec)
    assert rerun.exit_code == 0, rerun.stderr
    # Only requests abandoned without their answer are paid again: none that was known. (A
    # count taken at the second signal would race the requests still on their way: under
    # load the emulator bills some of them after it.)
    assert not paid_again(emulator, spec) & known
    assert paid_twice(paid(emulator)) == len(paid_again(emulator, spec)) <= 16 - len(known)
    assert invoke("check", str(spec)).exit_code == 0


@pytest.mark.parametrize("after", [SAMPLE.randint(1, 40) for _ in range(3)])
def test_after_sigkill_the_next_run_adopts_every_answer_that_had_arrived(
    tmp_path: Path, emulator: EmulatorServer, after: int
) -> None:
    emulator.emulator.configure(latency=(0.05, 0.15), seed=after)
    spec = schnell_spec(tmp_path, 48)
    running = spawn(emulator.url, "-j", "8", str(spec))
    seen = wait_for_progress(running, after)
    running.send_signal(signal.SIGKILL)
    finish(running, seen)
    known = lock_ids(spec) | known_answers(tmp_path / "out" / "spec")
    assert len(known) >= after  # every request reported done is known, lock saved or not

    before = paid(emulator)
    rerun = run_against(emulator, spec)
    assert rerun.exit_code == 0, rerun.stderr
    again = paid(emulator) - before
    assert sum(again.values()) == 48 - len(known)  # nothing known is asked for again
    assert not paid_again(emulator, spec) & known  # what had arrived is never paid again
    assert invoke("check", str(spec)).exit_code == 0
    assert not list(tmp_path.rglob(TEMP_PREFIX + "*"))


# ----- a lock that cannot be saved ---------------------------------------------------------


def test_a_lock_that_cannot_be_saved_stops_the_run_and_the_next_run_adopts_its_work(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(0.02, 0.02))
    spec = schnell_spec(tmp_path, 40)
    lock = tmp_path / "spec.lock.json"
    running = spawn(emulator.url, "-j", "1", str(spec))
    seen = wait_for_progress(running, 2)
    while not lock.is_dir():  # the lock becomes a folder: every save from now on fails
        lock.unlink(missing_ok=True)
        try:
            lock.mkdir()
        except FileExistsError:
            continue  # a save put the file back in between
    code, out, err = finish(running, seen)
    assert code == 3, err
    assert "cannot save the lock" in out + err
    assert "Traceback" not in err
    assert emulator.emulator.counters.snapshot()["paid"] < 40  # it stopped sending

    lock.rmdir()
    rerun = run_against(emulator, spec)
    assert rerun.exit_code == 0, rerun.stderr
    counts = paid(emulator)
    assert sum(counts.values()) == 40 and paid_twice(counts) == 0
    assert invoke("check", str(spec)).exit_code == 0
