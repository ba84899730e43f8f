"""Disk trouble: a read-only output folder, a full disk, the output folder deleted mid-run.
Each gives a clear message, pays for no image it cannot keep, and leaves the lock intact.
The first two mount small tmpfs file systems, so they need root (CI and this machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import invoke, start_run, wait_for_lock, write_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.atomic import sha256_file

SPEC = """
    version: 1
    output: {output}
    defaults: {{image_size: {{width: 512, height: 512}}, output_format: png}}
    jobs:
      - name: "n{{{{ i }}}}"
        prompt: "p {{{{ i }}}}"
        matrix: {{i: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}}
"""


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A mount point of a tmpfs file system that the test sets up itself."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def mount(point: Path, options: str) -> None:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def run(server: EmulatorServer, spec: Path, *args: str) -> object:
    return invoke(
        "run", "--base-url", server.url, "-j", "1", *args, str(spec), env={"AIMLAPI_KEY": "k"}
    )


def test_read_only_output_folder(tmp_path: Path, tmpfs: Path, emulator: EmulatorServer) -> None:
    mount(tmpfs, "ro,size=1m")
    spec = write_spec(tmp_path, SPEC.format(output=tmpfs))
    result = run(emulator, spec)
    assert result.exit_code == 3  # type: ignore[attr-defined]
    assert result.stderr.startswith("error: Read-only file system: ")  # type: ignore[attr-defined]
    assert emulator.emulator.counters.snapshot()["requests"] == 0
    assert not spec.with_name("spec.lock.json").exists()


def test_full_disk_stops_paying_and_keeps_what_fit(
    tmp_path: Path, tmpfs: Path, emulator: EmulatorServer
) -> None:
    # JPEGs: the emulator draws them (12 KB at 512x512), where its PNGs are a few KB at any
    # size; sixteen of them do not fit in 64 KB.
    mount(tmpfs, "size=64k")
    spec = write_spec(tmp_path, SPEC.format(output=tmpfs).replace("png", "jpeg"))
    result = run(emulator, spec)
    assert result.exit_code == 3, result.stdout  # type: ignore[attr-defined]
    out = result.stdout  # type: ignore[attr-defined]
    assert (
        "stopped: the output folder cannot take more images: cannot write the image: "
        "No space left on device" in out
    )
    lock = json.loads(spec.with_name("spec.lock.json").read_text())["requests"]
    assert 0 < len(lock) < 16
    for entry in lock.values():
        assert sha256_file(tmp_path / entry["outputs"][0]["path"]) == entry["outputs"][0]["sha256"]
    # Lost: the image that hit the full disk and those already under way beside it (at -j 1,
    # one generation and two deliveries); nothing was sent after the run stopped.
    lost = emulator.emulator.counters.snapshot()["generated"] - len(lock)
    assert 1 <= lost <= 3
    assert "not sent" in out


def test_output_folder_deleted_mid_run(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(latency=(0.05, 0.05))
    spec = write_spec(tmp_path, SPEC.format(output="out/here"))
    lock_path = spec.with_name("spec.lock.json")
    process = start_run(emulator.url, spec, "k")

    deleted: list[bool] = []

    def delete_when_some_are_done() -> None:
        wait_for_lock(lock_path, 3)
        # The run writes into the folder as rm -rf walks it: retry as a user would.
        for _ in range(50):
            try:
                shutil.rmtree(tmp_path / "out/here")
            except OSError:
                continue
            deleted.append(True)
            return

    deleter = threading.Thread(target=delete_when_some_are_done)
    deleter.start()
    _, stderr = process.communicate(timeout=60)
    deleter.join()
    assert deleted
    assert process.returncode == 0, stderr
    lock = json.loads(lock_path.read_text())["requests"]
    assert len(lock) == 16
    stale = invoke("check", "--json", str(spec))
    assert stale.exit_code == 1
    missing = {s["id"] for s in json.loads(stale.stdout)["specs"][0]["stale"]}
    assert missing and all(s.startswith("n") for s in missing)
    before = emulator.emulator.counters.snapshot()["requests"]
    assert run(emulator, spec).exit_code == 0  # type: ignore[attr-defined]
    assert emulator.emulator.counters.snapshot()["requests"] - before == len(missing)
    assert invoke("check", str(spec)).exit_code == 0


def test_an_image_file_removed_while_written_is_fetched_again(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window the test above can hit by chance, hit on purpose: the temporary file is
    removed just before its rename. The download is tried again (it costs no credit)."""
    import asyncio

    import httpx

    from flux_pipeline.provider.client import ApiClient
    from flux_pipeline.store.atomic import PendingFile
    from flux_pipeline.store.fetcher import ImageFetcher

    commit = PendingFile.commit
    removed: list[Path] = []

    def remove_first_then_commit(self: PendingFile, target: Path, *, durable: bool) -> None:
        if not removed:
            removed.append(self.path)
            self.path.unlink()
        commit(self, target, durable=durable)

    monkeypatch.setattr(PendingFile, "commit", remove_first_then_commit)

    async def go() -> tuple[Path, str]:
        async with httpx.AsyncClient() as http:
            client = ApiClient(http, emulator.url, "k")
            fetcher = ImageFetcher(http, sleep=lambda _: asyncio.sleep(0))
            body = {
                "model": "flux/schnell",
                "prompt": "p",
                "image_size": {"width": 64, "height": 64},
            }
            generation = await client.generate("r", body, [])
            image = await fetcher.fetch("r", generation.images[0], tmp_path / "r", "png", (64, 64))
            return image.path, image.sha256

    path, sha256 = asyncio.run(go())
    assert removed and path == tmp_path / "r.png" and sha256_file(path) == sha256
    assert emulator.emulator.counters.snapshot()["downloads"]["ok"] == 2
    assert emulator.emulator.counters.snapshot()["requests"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]
