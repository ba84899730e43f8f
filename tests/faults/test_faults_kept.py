"""A paid image is never thrown away: one of another size or format than asked, or sent
gzip-encoded, is stored once, recorded in the lock with what differs, and never paid for
again; the cache of earlier outputs is a real copy, so an image damaged in place is restored
from it for free."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import KEY, invoke, write_spec
from PIL import Image

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.atomic import sha256_file

SPEC = """
    version: 1
    name: kept
    defaults: {image_size: {width: 256, height: 256}, output_format: png}
    jobs:
      - {name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2, 3]}}
"""

CASES = {  # mangle: (file of n0, what the lock and the warning say)
    "wrong-size": ("n0.png", "asked for 256x256, got 128x128"),
    "wrong-format": ("n0.jpg", "asked for png, got jpeg"),
    "gzip": ("n0.png", None),
}


def run(server: EmulatorServer, spec: Path, transport: str = "aiohttp") -> str:
    args = ("run", "--base-url", server.url, "--transport", transport, str(spec))
    result = invoke(*args, env=KEY)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("mangle", sorted(CASES))
def test_an_image_not_as_asked_is_kept_and_never_paid_again(
    tmp_path: Path, emulator: EmulatorServer, mangle: str, transport: str
) -> None:
    name, mismatch = CASES[mangle]
    emulator.emulator.configure(mangle=mangle)
    spec = write_spec(tmp_path, SPEC)
    stdout = run(emulator, spec, transport)
    image = tmp_path / "out" / "kept" / name
    with Image.open(image) as opened:
        opened.load()  # the file's own bytes: a sound image, not gzip
    lock = json.loads(spec.with_name("spec.lock.json").read_text())
    output = lock["requests"]["n0"]["outputs"][0]
    assert output["sha256"] == sha256_file(image) and output["path"] == f"out/kept/{name}"
    if mismatch:
        assert output["mismatch"] == mismatch
        assert f"warning n0: not as asked ({mismatch}): kept, and the lock records it" in stdout
    else:
        assert "mismatch" not in output and "warning" not in stdout
    paid = emulator.emulator.counters.snapshot()["paid"]
    assert paid == 4
    assert "4 skipped" in run(emulator, spec, transport)
    assert emulator.emulator.counters.snapshot()["paid"] == 4  # never paid again
    assert invoke("check", str(spec)).exit_code == 0
    strict = invoke("check", "--strict", str(spec))
    assert strict.exit_code == (1 if mismatch else 0)
    if mismatch:
        assert f"mismatch  n0: {mismatch}" in strict.stdout


def test_check_names_images_not_as_asked_without_failing(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(mangle="wrong-size")
    spec = write_spec(tmp_path, SPEC)
    run(emulator, spec)
    result = invoke("check", str(spec))
    assert result.exit_code == 0
    assert "up to date (4 requests); 4 not as asked (--strict fails on them):" in result.stdout
    assert "  n0: asked for 256x256, got 128x128" in result.stdout


def test_an_image_damaged_in_place_is_restored_free_from_the_cache(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = write_spec(tmp_path, SPEC)
    run(emulator, spec)
    image = tmp_path / "out" / "kept" / "n0.png"
    original = image.read_bytes()
    with image.open("r+b") as handle:  # bytes overwritten in place: same inode, same size
        handle.seek(len(original) // 2)
        handle.write(b"\0" * 16)
    plan = invoke("plan", str(spec)).stdout
    assert re.search(r"corrupt +n0 .* 0 \(cache\)", plan)
    stdout = run(emulator, spec)
    assert "1 restored from the cache" in stdout
    assert image.read_bytes() == original
    assert emulator.emulator.counters.snapshot()["paid"] == 4  # not paid again


def test_hard_links_are_used_only_when_asked(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path, SPEC)
    run(emulator, spec)
    assert (tmp_path / "out" / "kept" / "n0.png").stat().st_nlink == 1  # a real copy
    monkeypatch.setenv("FLUX_PIPELINE_CACHE_LINK", "hardlink")
    spec = write_spec(tmp_path / "linked", SPEC)
    run(emulator, spec)
    assert (tmp_path / "linked" / "out" / "kept" / "n0.png").stat().st_nlink == 2
    # Damaged in place, a hard-linked image damages its cached copy: the plan does not
    # promise a free restore it cannot make.
    image = tmp_path / "linked" / "out" / "kept" / "n1.png"
    with image.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\0" * 16)
    plan = invoke("plan", str(spec)).stdout
    assert re.search(r"corrupt +n1 ", plan) and "0 (cache)" not in plan
    monkeypatch.setenv("FLUX_PIPELINE_CACHE_LINK", "symlink")
    result = invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    assert result.exit_code == 2 and "FLUX_PIPELINE_CACHE_LINK='symlink'" in result.stderr
