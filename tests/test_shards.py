"""Sharded runs (`run --shard K/N`) and `merge`: every request in exactly one shard, chosen by
name; partial locks merged into the lock an unsharded run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import grid, invoke
from helpers import run_ok as run

from flux_pipeline import load_spec
from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.shards import Shard, shard_of


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_every_request_exactly_once(count: int) -> None:
    names = [f"request-{i}" for i in range(500)]
    shards = [shard_of(name, count) for name in names]
    assert set(shards) <= set(range(1, count + 1))
    assert all(shards.count(k) > 0 for k in range(1, count + 1))
    # stable: by name, not by position
    assert [shard_of(n, count) for n in reversed(names)] == shards[::-1]


def test_sharded_runs_merge_into_the_unsharded_lock(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    whole = grid(tmp_path / "whole", styles="[minimal, retro, neon, noir, pop]")
    run(emulator, whole)
    parts = grid(tmp_path / "parts", styles="[minimal, retro, neon, noir, pop]")
    done: list[str] = []
    for k in (1, 2, 3):
        run(emulator, parts, "--shard", f"{k}/3")
        partial = json.loads(parts.with_name(f"spec.lock.shard-{k}-of-3.json").read_text())
        done += list(partial["requests"])
    assert sorted(done) == sorted(r.id for r in _requests(parts))  # each exactly once
    assert not parts.with_name("spec.lock.json").exists()
    result = invoke("merge", str(parts))
    assert result.exit_code == 0
    assert result.stdout == (
        f"{parts}: merged 3 partial locks, 10 requests\n"
        + "".join(
            f"  spec.lock.shard-{k}-of-3.json: {n} request" + ("s" if n != 1 else "") + "\n"
            for k, n in ((1, 0), (2, 6), (3, 4))
        )
    )
    assert parts.with_name("spec.lock.json").read_text() == whole.with_name(
        "spec.lock.json"
    ).read_text().replace("/whole/", "/parts/")
    assert not list(parts.parent.glob("*.shard-*"))
    assert invoke("check", str(parts)).exit_code == 0
    before = emulator.emulator.counters.snapshot()["requests"]
    run(emulator, parts, "--shard", "2/3")  # up to date: nothing sent
    assert emulator.emulator.counters.snapshot()["requests"] == before


def test_merge_refuses_conflicting_partial_locks(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid(tmp_path)
    run(emulator, spec, "--shard", "1/2")
    run(emulator, spec, "--shard", "2/2")
    first, second = (spec.with_name(f"spec.lock.shard-{k}-of-2.json") for k in (1, 2))
    data, other = json.loads(first.read_text()), json.loads(second.read_text())
    key = sorted(data["requests"])[0]
    other["requests"][key] = {**data["requests"][key], "seed": data["requests"][key]["seed"] + 1}
    second.write_text(json.dumps(other))
    result = invoke("merge", str(spec))
    assert result.exit_code == 1
    assert f"1 requests differ between partial locks: {key}" in result.stderr
    assert not spec.with_name("spec.lock.json").exists()


def test_merge_refuses_a_partial_lock_of_an_older_spec(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid(tmp_path)
    run(emulator, spec, "--shard", "1/1")  # a shard run, never merged
    spec.write_text(spec.read_text().replace("A {{ style }}", "One {{ style }}"))
    run(emulator, spec)  # the reworded spec, run whole: its lock is up to date
    lock = spec.with_name("spec.lock.json").read_text()
    result = invoke("merge", str(spec))
    assert result.exit_code == 1
    assert (
        "spec.lock.shard-1-of-1.json was made from another version of spec.yaml (the requests "
        "of shard 1/1 have changed since): run --shard 1/1 again"
    ) in result.stderr
    assert spec.with_name("spec.lock.json").read_text() == lock  # nothing written
    assert invoke("check", str(spec)).exit_code == 0


def test_merge_names_missing_shards_and_merges_them_only_when_told(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid(tmp_path, styles="[minimal, retro, neon, noir, pop]")
    run(emulator, spec, "--shard", "1/3")
    run(emulator, spec, "--shard", "3/3")
    result = invoke("merge", str(spec))
    assert result.exit_code == 1
    assert "no partial lock of shard 2/3: run it, or merge with --partial" in result.stderr
    assert not spec.with_name("spec.lock.json").exists()
    result = invoke("merge", "--partial", str(spec))
    assert result.exit_code == 0, result.stderr
    assert "merged 2 partial locks, 4 requests" in result.stdout
    assert "without shard 2 (--partial): their requests are not in the lock" in result.stdout
    assert invoke("check", str(spec)).exit_code == 1  # shard 2's requests are still new


def test_bad_shard_option(tmp_path: Path) -> None:
    result = invoke("run", "--emulator", "--shard", "4/3", str(grid(tmp_path)))
    assert result.exit_code == 2
    assert "--shard must be K/N with 1 <= K <= N" in result.stderr


def _requests(spec: Path) -> list[object]:
    from flux_pipeline import validate

    return validate(load_spec(spec))  # type: ignore[no-any-return]


def test_a_shard_holds_the_requests_its_number_names() -> None:
    shard = Shard.parse(" 2 / 3 ")
    assert shard == Shard(2, 3)
    names = [f"request-{i}" for i in range(50)]
    assert [n for n in names if n in shard] == [n for n in names if shard_of(n, 3) == 2]
