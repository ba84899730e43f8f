"""The kill matrix: SIGINT, SIGTERM and SIGKILL at six points of a run. Afterwards the lock
parses, every file it names is there with its hash, SIGINT/SIGTERM exit 130/143, the rerun
pays only for requests whose answer had not arrived (the lock and the write-ahead record
hold the rest), and no temporary file survives the rerun."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import invoke, known_answers, write_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.atomic import TEMP_PREFIX, sha256_file

# Runs the CLI with one function wrapped to signal the process itself on its third call,
# at the point named on the command line.
WRAPPER = r"""
import asyncio, os, signal, sys, time
point, sig = sys.argv[1], getattr(signal, sys.argv[2])
from flux_pipeline.store import atomic
from flux_pipeline.provider import client
from flux_pipeline.store import fetcher
calls = {"n": 0}

def third():
    calls["n"] += 1
    return calls["n"] == 3

def die():
    os.kill(os.getpid(), sig)
    time.sleep(0.3)  # the signal lands here (SIGKILL never comes back)

generate, decode = client.ApiClient.generate, fetcher.ImageFetcher._decode_inline
write, commit = atomic.PendingFile.write, atomic.PendingFile.commit

async def before_send(self, *args):
    if third():
        die()
    return await generate(self, *args)

async def after_response(self, *args):
    answer = await generate(self, *args)
    if third():
        die()
    return answer

def mid_image_write(self, data):
    if third():
        write(self, bytes(data)[: len(data) // 2])
        die()
        data = bytes(data)[len(data) // 2 :]
    write(self, data)

def after_rename(self, target, *, durable):
    commit(self, target, durable=durable)
    if not durable and third():
        die()

lock_writes = []

async def after_a_lock_write(self, *args):
    # From the third request on, wait until the lock is being written: the kill below then
    # always lands with work left, however slowly the machine runs (an event, not a timer).
    calls["n"] += 1
    while calls["n"] >= 3 and not lock_writes:
        await asyncio.sleep(0.005)
    return await generate(self, *args)

def mid_lock_write(self, target, *, durable):
    if durable and not lock_writes:
        lock_writes.append(target)
        die()
    commit(self, target, durable=durable)

def during_decode(self, *args):
    if third():
        die()
    return decode(self, *args)

patches = {
    "before-send": (client.ApiClient, "generate", before_send),
    "after-response": (client.ApiClient, "generate", after_response),
    "mid-image-write": (atomic.PendingFile, "write", mid_image_write),
    "after-rename": (atomic.PendingFile, "commit", after_rename),
    "mid-lock-write": (atomic.PendingFile, "commit", mid_lock_write),
    "mid-lock-write ": (client.ApiClient, "generate", after_a_lock_write),
    "b64-decode": (fetcher.ImageFetcher, "_decode_inline", during_decode),
}
for key in (point, point + " "):  # a point may need a second patch
    if key in patches:
        owner, name, replacement = patches[key]
        setattr(owner, name, replacement)
from flux_pipeline.cli import main
sys.argv = ["flux-pipeline", *sys.argv[3:]]
main()
"""

POINTS = [
    "before-send",
    "after-response",
    "mid-image-write",
    "after-rename",
    "mid-lock-write",
    "b64-decode",
]
SIGNALS = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL}
REQUESTS = 8


@pytest.mark.parametrize("signame", sorted(SIGNALS))
@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_any_point_loses_nothing_finished(
    tmp_path: Path, emulator: EmulatorServer, point: str, signame: str
) -> None:
    emulator.emulator.configure(
        latency=(0.02, 0.02), delivery="b64" if point == "b64-decode" else "url"
    )
    spec = write_spec(
        tmp_path,
        """
        version: 1
        defaults: {image_size: {width: 256, height: 256}, output_format: png}
        jobs:
          - {name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2, 3, 4, 5, 6, 7]}}
    """,
    )
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            WRAPPER,
            point,
            signame,
            "run",
            "--base-url",
            emulator.url,
            "-j",
            "1",
            str(spec),
        ],
        env={"AIMLAPI_KEY": "k", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == SIGNALS[signame], killed.stderr
    assert "Traceback" not in killed.stderr

    lock_path = spec.with_name("spec.lock.json")
    finished = json.loads(lock_path.read_text())["requests"] if lock_path.exists() else {}
    assert len(finished) < REQUESTS
    for entry in finished.values():
        for output in entry["outputs"]:
            assert sha256_file(tmp_path / output["path"]) == output["sha256"]

    # What the killed run knew it had paid for: its lock, and its write-ahead record (the
    # answers whose images can still be fetched, the results not yet in the lock).
    known = set(finished) | known_answers(tmp_path / "out" / "spec")
    if signame != "SIGKILL":
        assert known == set(finished)  # the drain stored everything it was answered

    paid = Counter(emulator.emulator.counters.paid_bodies)
    rerun = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"})
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    paid_again = Counter(emulator.emulator.counters.paid_bodies) - paid
    assert sum(paid_again.values()) == REQUESTS - len(known)
    assert max(Counter(emulator.emulator.counters.paid_bodies).values()) <= 2
    assert not list(tmp_path.rglob(TEMP_PREFIX + "*"))
    assert invoke("check", str(spec)).exit_code == 0
