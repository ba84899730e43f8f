"""Names that would write outside the output folder are refused before a credit is spent,
and a symlink inside the folder cannot lead a write outside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import invoke, write_spec

from flux_pipeline.emulator import EmulatorServer

HOSTILE = {
    "dotdot": "../x",
    "nested dotdot": "a/../../x",
    "absolute": "/etc/x",
    "drive": "C:\\\\x",
    "unc": "\\\\\\\\host\\\\x",
    "nul byte": "a\\0b",
    "too long": "x" * 300,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_names_are_refused_before_any_request(
    tmp_path: Path, emulator: EmulatorServer, case: str
) -> None:
    spec = write_spec(
        tmp_path / "in", f'version: 1\njobs: [{{name: "{HOSTILE[case]}", prompt: p}}]\n'
    )
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"})
    assert result.exit_code == 1
    assert "name: the name" in result.stderr
    assert emulator.emulator.counters.snapshot()["requests"] == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "spec.yaml"]


def test_a_symlink_in_the_output_folder_cannot_lead_outside(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    spec = write_spec(
        tmp_path / "project",
        """
        version: 1
        defaults: {image_size: square, output_format: png}
        jobs:
          - {name: "sub/{{ n }}", prompt: p, matrix: {n: [a, b]}}
          - {name: inside, prompt: q}
    """,
    )
    out = tmp_path / "project/out/spec"
    out.mkdir(parents=True)
    os.symlink(outside, out / "sub")
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"})
    assert result.exit_code == 3
    assert result.stdout.count("refusing to write outside the output folder: sub/") == 2
    assert list(outside.iterdir()) == []
    assert emulator.emulator.counters.snapshot()["requests"] == 1  # nothing paid for sub/
    lock = json.loads(spec.with_name("spec.lock.json").read_text())
    assert list(lock["requests"]) == ["inside"]
