"""check (the CI gate), diff between lock versions, and sharded runs with merge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import grid, invoke
from helpers import run_ok as run

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.cache import HashIndex


def check_json(spec: Path) -> tuple[int, dict[str, object]]:
    result = invoke("check", "--json", str(spec))
    (report,) = json.loads(result.stdout)["specs"]
    return result.exit_code, report


def stale(spec: Path) -> dict[str, tuple[str, str]]:
    code, report = check_json(spec)
    assert code == 1
    return {s["id"]: (s["state"], s["reason"]) for s in report["stale"]}  # type: ignore


def test_check_passes_right_after_run(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    result = invoke("check", str(spec))
    assert result.exit_code == 0
    assert result.stdout == f"{spec}: up to date (4 requests)\n"


def test_check_fails_before_any_run(tmp_path: Path) -> None:
    spec = grid(tmp_path)
    assert stale(spec) == {
        "kettle-minimal": ("new", "not in the lock"),
        "kettle-retro": ("new", "not in the lock"),
        "toaster-minimal": ("new", "not in the lock"),
        "toaster-retro": ("new", "not in the lock"),
    }


def test_check_after_editing_a_prompt(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    grid(tmp_path, prompt="A shiny {{ style }} {{ product }}")
    found = stale(spec)
    assert set(found) == {"kettle-minimal", "kettle-retro", "toaster-minimal", "toaster-retro"}
    assert found["kettle-retro"] == (
        "changed",
        "changed: prompt ('A retro kettle' → 'A shiny retro kettle')",
    )


def test_check_after_adding_an_axis_value(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    grid(tmp_path, styles="[minimal, retro, neon]")
    assert stale(spec) == {
        "kettle-neon": ("new", "not in the lock"),
        "toaster-neon": ("new", "not in the lock"),
    }


def test_check_after_removing_an_axis_value(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    grid(tmp_path, styles="[minimal]")
    assert stale(spec) == {
        "kettle-retro": ("removed", "in the lock but no longer in the spec"),
        "toaster-retro": ("removed", "in the lock but no longer in the spec"),
    }


def test_check_counts_stale_requests_apart_from_entries_gone_from_the_spec(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    grid(tmp_path, styles="[minimal, neon]")  # retro renamed: two new, two gone
    result = invoke("check", str(spec))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{spec}: 2 of 4 requests are stale; 2 in the lock no longer in the spec",
        "  new       kettle-neon: not in the lock",
        "  new       toaster-neon: not in the lock",
        "  removed   kettle-retro: in the lock but no longer in the spec",
        "  removed   toaster-retro: in the lock but no longer in the spec",
        f"  to bring it up to date: flux-pipeline run {spec}",
    ]


def test_plan_shows_what_the_cache_restores_for_free_and_what_leaves_the_lock(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    grid(tmp_path, styles="[minimal, neon]")
    run(emulator, spec)
    grid(tmp_path)  # retro is back: its images are in the cache of earlier outputs
    (data,) = json.loads(invoke("plan", "--json", str(spec)).stdout)["specs"]
    by_id = {r["id"]: r for r in data["requests"]}
    assert {k: (r["state"], r["cached"], r["credits"]) for k, r in by_id.items()} == {
        "kettle-minimal": ("up to date", False, 1),
        "kettle-retro": ("new", True, 0),
        "toaster-minimal": ("up to date", False, 1),
        "toaster-retro": ("new", True, 0),
    }
    assert data["gone"] == ["kettle-neon", "toaster-neon"]
    assert by_id["kettle-minimal"]["outputs"] == ["out/grid/kettle-minimal.png"]
    assert (data["totals"]["cached"], data["totals"]["credits"]) == (2, 0)
    text = invoke("plan", str(spec)).stdout.splitlines()
    assert text[-1] == (
        f"{spec}: 4 requests (2 new, 2 up to date), 4 images in {tmp_path / 'out/grid'}/; "
        "to do: 2, estimated credits: 0 "
        "(2 restored from the cache of earlier outputs); 2 in the lock no longer in the spec "
        "(dropped by the next run; --prune deletes their images)"
    )
    sent = emulator.emulator.counters.snapshot()["requests"]
    run(emulator, spec)
    assert emulator.emulator.counters.snapshot()["requests"] == sent  # as the plan said


def test_check_after_deleting_an_image(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    (tmp_path / "out/grid/kettle-retro.png").unlink()
    assert stale(spec) == {"kettle-retro": ("missing", "out/grid/kettle-retro.png is missing")}


@pytest.mark.parametrize("checked_before", [False, True])
def test_check_after_corrupting_an_image(
    tmp_path: Path,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    checked_before: bool,
) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    if checked_before:  # the hashes are remembered by the files' stat (no racy window here)
        monkeypatch.setattr(HashIndex, "RACY_SECONDS", 0)
        assert invoke("check", str(spec)).exit_code == 0
        assert (tmp_path / "out/grid/.flux-cache/hashes.json").exists()
    image = tmp_path / "out/grid/toaster-minimal.png"
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes
    image.write_bytes(bytes(data))
    assert stale(spec) == {
        "toaster-minimal": (
            "corrupt",
            "out/grid/toaster-minimal.png does not match its recorded hash",
        )
    }


def test_check_after_editing_the_lock(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec)
    lock = spec.with_name("spec.lock.json")
    lock.write_text(lock.read_text().replace("A retro kettle", "A retro kettle!"))
    # The spec still asks for the recorded hash, but the recorded body no longer matches it.
    assert stale(spec) == {
        "kettle-retro": ("corrupt", "the lock entry was edited: its body does not match its hash")
    }
    lock.write_text(lock.read_text().replace("A retro kettle!", "A retro kettle"))
    data = json.loads(lock.read_text())
    data["requests"]["kettle-minimal"]["body"]["num_inference_steps"] = 3
    data["requests"]["kettle-minimal"]["body_sha256"] = "0" * 64
    lock.write_text(json.dumps(data))
    assert stale(spec)["kettle-minimal"][0] == "changed"
    lock.write_text("{ not json")
    result = invoke("check", str(spec))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {lock}: the lock is damaged")


# ----- diff ------------------------------------------------------------------------------------


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_diff_against_a_git_revision(tmp_path: Path, emulator: EmulatorServer) -> None:
    git(tmp_path, "init", "-q")
    spec = grid(tmp_path)
    result = invoke("diff", str(spec), "--against", "HEAD")
    assert result.exit_code == 1
    assert "cannot read the lock at 'HEAD': fatal: invalid object name 'HEAD'" in result.stderr
    run(emulator, spec)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first")
    grid(tmp_path, prompt="A {{ style }} {{ product }}, at dawn", styles="[minimal, neon]")
    run(emulator, spec)
    result = invoke("diff", str(spec), "--against", "HEAD")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"comparing {spec.with_name('spec.lock.json')} with HEAD",
        "added    kettle-neon",
        "added    toaster-neon",
        "removed  kettle-retro",
        "removed  toaster-retro",
        "changed  kettle-minimal: body.prompt ('A minimal kettle' → 'A minimal kettle, at dawn');"
        " outputs",
        "changed  toaster-minimal: body.prompt ('A minimal toaster' → 'A minimal toaster, at "
        "dawn'); outputs",
    ]
    as_json = json.loads(invoke("diff", str(spec), "--against", "HEAD", "--json").stdout)
    assert as_json["changed"]["kettle-minimal"] == ["body.prompt", "outputs"]
    lock = spec.with_name("spec.lock.json")
    same = invoke("diff", str(spec), "--against", str(lock))
    assert same.stdout.splitlines() == [
        f"comparing {spec} (not run yet) with {lock}",
        f"{spec} (not run yet): no changes since {lock}",
    ]


def test_diff_sees_edits_not_run_yet(tmp_path: Path, emulator: EmulatorServer) -> None:
    git(tmp_path, "init", "-q")
    spec = grid(tmp_path)
    run(emulator, spec)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first")
    grid(tmp_path, prompt="A {{ style }} {{ product }}, at dawn")  # edited, not run
    result = invoke("diff", str(spec), "--against", "HEAD")
    assert result.stdout.splitlines()[0] == f"comparing {spec} (not run yet) with HEAD"
    assert "changed  kettle-minimal: body.prompt" in result.stdout
    as_json = json.loads(invoke("diff", str(spec), "--against", "HEAD", "--json").stdout)
    assert as_json["compared"] == "spec" and "kettle-retro" in as_json["changed"]
