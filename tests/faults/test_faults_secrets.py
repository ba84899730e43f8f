"""A sentinel key never appears in stdout, stderr, the lock, the journal or a --debug
traceback, on the success, 401, 403, 500 and timeout paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke, write_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.running.recovery import read_pending

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


# ----- servers that echo the key, keys that arrive with junk around them -------------------

KEY = "sk-live-SECRET-0123456789abcdefghij"


def pieces(key: str) -> set[str]:
    return {key[i : i + 8] for i in range(len(key) - 7)}


def leaks(texts: list[str], root: Path, key: str = KEY) -> list[str]:
    """Every place the key, or any 8 characters of it in a row, shows: in the texts or in
    any file under root."""
    found = [f"output {i}" for i, text in enumerate(texts) if any(p in text for p in pieces(key))]
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("utf-8", "replace")
            found += [str(path) for piece in pieces(key) if piece in data][:1]
    return found


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("mangle", ["echo", "echo-500", "key-url", "html"])
def test_an_echoing_server_never_shows_the_key(
    tmp_path: Path, emulator: EmulatorServer, mangle: str, transport: str
) -> None:
    emulator.emulator.configure(mangle=mangle)
    spec = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}]\n")
    args = ("--debug", "run", "--base-url", emulator.url, "--retries", "0")
    result = invoke(*args, "--transport", transport, str(spec), env={"AIMLAPI_KEY": KEY})
    assert result.exit_code == 3
    if mangle.startswith("echo"):
        assert "Authorization: Bearer [redacted]" in result.stdout  # still said what happened
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    if mangle == "key-url":  # the answer (its URL holds the key) waits in the record
        assert "pending.jsonl" in written
    assert leaks([result.stdout, result.stderr], tmp_path) == []


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("junk", [" ", "\n", "\r\n", "\t"])
def test_a_key_with_whitespace_around_it_works(
    tmp_path: Path, emulator: EmulatorServer, junk: str, transport: str
) -> None:
    spec = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}]\n")
    env = {"AIMLAPI_KEY": junk + KEY + junk}
    result = invoke("run", "--base-url", emulator.url, "--transport", transport, str(spec), env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert emulator.emulator.counters.authorizations == [f"Bearer {KEY}"]


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        ("sk-live\nSECRET-0123456789", "a control or space character at position 8 of 25"),
        ("sk-live-SECRÉT-0123456789", "a non-ASCII character at position 13 of 25"),
        ("sk-live SECRET-0123456789", "a control or space character at position 8 of 25"),
    ],
)
def test_a_key_that_cannot_be_sent_is_refused_without_showing_it(
    tmp_path: Path, emulator: EmulatorServer, bad: str, kind: str
) -> None:
    spec = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}]\n")
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": bad})
    assert result.exit_code == 2
    assert f"error: AIMLAPI_KEY holds {kind} (not shown)" in result.stderr
    assert "SECRET" not in result.stdout + result.stderr
    assert emulator.emulator.counters.snapshot()["requests"] == 0


def test_the_redactor_masks_escaped_forms_and_runs_of_the_key() -> None:
    from flux_pipeline.provider.redaction import Redactor

    redact = Redactor('sk-"quoted"\\key-0123456789')
    assert redact('{"k": "sk-\\"quoted\\"\\\\key-0123456789"}') == '{"k": "[redacted]"}'
    assert redact("'sk-\"quoted\"\\\\key-0123456789'") == "'[redacted]'"
    assert redact("cut: ...\\key-01234") == "cut: ...[redacted]"  # 8+ characters of it
    assert redact("short: key-0") == "short: key-0"  # fewer than 8: left
    assert Redactor("k")("k is a letter") == "k is a letter"


def test_a_key_that_is_part_of_request_names_does_not_garble_the_record(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """The record keeps our ids and hashes as they are (recovery depends on them); only what
    the server sent passes the redactor."""
    emulator.emulator.configure(mangle="key-url")
    spec = write_spec(
        tmp_path, 'version: 1\njobs: [{name: "soak-{{ i }}", prompt: p, matrix: {i: [1, 2]}}]\n'
    )
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "soak"})
    assert result.exit_code == 3

    found = read_pending(tmp_path / "out/spec/.flux-cache/pending.jsonl")
    assert sorted(a.request_id for a in found.answers.values()) == ["soak-1", "soak-2"]
    assert all("soak" not in json.dumps(a.answer) for a in found.answers.values())
