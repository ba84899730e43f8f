"""A sentinel key never appears in stdout, stderr, the lock, the journal or a --debug
traceback, on the success, 401, 403, 500 and timeout paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import invoke, write_spec

from flux_pipeline.emulator import EmulatorServer

SENTINEL = "sk-SENTINEL-SECRET-9f8e7d6c"
PATHS: dict[str, tuple[dict[str, Any], tuple[str, ...], int]] = {
    "success": ({}, (), 0),
    "401": ({"api_key": "another-key"}, (), 3),
    "403": ({"credits": 0}, (), 3),
    "500": ({"fail_rate": 1.0}, ("--retries", "1"), 3),
    "timeout": ({"latency": (1.0, 1.0)}, ("--timeout", "0.2", "--retries", "0"), 3),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_key_is_never_written_anywhere(
    tmp_path: Path, emulator: EmulatorServer, path: str
) -> None:
    switches, options, code = PATHS[path]
    emulator.emulator.configure(**switches)
    spec = write_spec(
        tmp_path,
        """
        version: 1
        defaults: {image_size: square}
        jobs: [{name: "n{{ i }}", prompt: p, matrix: {i: [0, 1]}}]
    """,
    )
    result = invoke(
        "--debug",
        "run",
        "--base-url",
        emulator.url,
        *options,
        str(spec),
        env={"AIMLAPI_KEY": SENTINEL},
    )
    assert result.exit_code == code, result.stdout
    assert SENTINEL not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == ".journal.jsonl" for p in written)
    for file in written:
        assert SENTINEL.encode() not in file.read_bytes(), file
    # it was sent, where it belongs
    assert f"Bearer {SENTINEL}" in emulator.emulator.counters.authorizations
