"""Faults on the wire, end to end against the emulator: the run keeps what finished, retries
what may pass, fails clearly on what will not, and never sends the key where it should not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import invoke, write_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.atomic import TEMP_PREFIX

KEY = "sk-FAULTS-0123456789"
SPEC = """
    version: 1
    name: f
    defaults: {image_size: {width: 256, height: 256}, output_format: png}
    jobs:
      - {name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2, 3]}}
"""


def run(server: EmulatorServer, root: Path, *args: str) -> Any:
    spec = write_spec(root, SPEC)
    return invoke("run", "--base-url", server.url, *args, str(spec), env={"AIMLAPI_KEY": KEY})


def lock(root: Path) -> dict[str, Any]:
    path = root / "spec.lock.json"
    return json.loads(path.read_text())["requests"] if path.exists() else {}


def no_temp_files(root: Path) -> bool:
    return not list(root.rglob(TEMP_PREFIX + "*"))


def test_truncated_downloads_are_fetched_again(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(truncate_rate=0.5, seed=4)
    result = run(emulator, tmp_path, "--retries", "6")
    assert result.exit_code == 0, result.stdout
    downloads = emulator.emulator.counters.snapshot()["downloads"]
    assert downloads["truncated"] > 0 and downloads["ok"] == 4
    assert emulator.emulator.counters.snapshot()["generated"] == 4  # no image paid twice
    assert len(lock(tmp_path)) == 4 and no_temp_files(tmp_path)


def test_read_timeout_is_retried_only_when_asked_then_reported(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(1.0, 1.0))
    result = run(emulator, tmp_path, "--timeout", "0.2", "--retries", "1", "-j", "4")
    assert result.exit_code == 3
    assert result.stdout.count("read timed out: no answer within --timeout, after sending") == 4
    assert emulator.emulator.counters.snapshot()["requests"] == 4  # it may have been billed
    result = run(
        emulator, tmp_path, "--timeout", "0.2", "--retries", "1", "-j", "4", "--retry-timeouts"
    )
    assert result.exit_code == 3
    assert result.stdout.count("read timed out: no answer within --timeout (after 2 attempts)") == 4
    assert emulator.emulator.counters.snapshot()["requests"] == 4 + 8


def test_a_trickling_download_meets_its_deadline(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(slow_download=3.0)
    result = run(emulator, tmp_path, "--timeout", "0.5", "--retries", "0", "--only", "n0")
    assert result.exit_code == 3
    assert "downloading the image took longer than 0.5 s (after 1 attempt)" in result.stdout
    assert lock(tmp_path) == {} and no_temp_files(tmp_path)


def test_server_error_bursts_are_survived(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(fail_rate=0.6, seed=11)
    result = run(emulator, tmp_path, "--retries", "10", "-j", "2")
    assert result.exit_code == 0, result.stdout
    statuses = emulator.emulator.counters.snapshot()["statuses"]
    assert statuses[200] == 4 and sum(statuses.get(s, 0) for s in (500, 502, 503, 504)) > 2


def test_a_huge_retry_after_fails_at_once(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(rate_limit=0.001, retry_after="86400")
    result = run(emulator, tmp_path, "-j", "1")
    assert result.exit_code == 3
    assert (
        "the server asks to retry after 86400 s, more than the 120 s this run waits"
        in result.stdout
    )
    assert emulator.emulator.counters.snapshot()["requests"] == 4  # one try each, no waiting


def test_a_redirect_to_another_host_is_not_followed_with_the_key(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    with EmulatorServer() as elsewhere:
        emulator.emulator.configure(redirect_to=elsewhere.url)
        result = run(emulator, tmp_path, "--retries", "0")
        assert result.exit_code == 3
        assert "HTTP 307" in result.stdout
        assert elsewhere.emulator.counters.snapshot()["requests"] == 0
        assert all(KEY not in a for a in elsewhere.emulator.counters.authorizations)


def test_image_urls_that_are_not_http_are_refused(tmp_path: Path, emulator: EmulatorServer) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    emulator.emulator.configure(file_url_prefix=f"file://{tmp_path}/")
    result = run(emulator, tmp_path, "--only", "n0")
    assert result.exit_code == 3
    assert "refusing to download an image URL with scheme 'file'" in result.stdout
    assert lock(tmp_path) == {} and no_temp_files(tmp_path)


def test_an_internal_error_is_one_line_and_the_debug_traceback_hides_the_key(
    tmp_path: Path, monkeypatch: Any
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"something broke near Bearer {KEY}")

    monkeypatch.setattr("flux_pipeline.running.runner.run", broken)
    spec = write_spec(tmp_path, SPEC)
    quiet = invoke("run", str(spec), env={"AIMLAPI_KEY": KEY})
    assert quiet.exit_code == 3
    assert quiet.stderr.splitlines() == [
        "internal error: RuntimeError: something broke near Bearer [redacted]",
        "this is a bug in flux-pipeline; rerun with --debug for the traceback",
    ]
    loud = invoke("--debug", "run", str(spec), env={"AIMLAPI_KEY": KEY})
    assert loud.exit_code == 3
    assert "Traceback (most recent call last)" in loud.stderr
    assert KEY not in loud.stdout + loud.stderr
