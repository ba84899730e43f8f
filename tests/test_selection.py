"""What a run does and where it writes: `select` (shard, --only, --force) and the output
folder's paths, unit by unit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import write_spec

from flux_pipeline import load_spec, plan
from flux_pipeline.errors import RequestFailed
from flux_pipeline.running.options import RunOptions
from flux_pipeline.running.scope import select
from flux_pipeline.store.output_folder import OutputFolder
from flux_pipeline.store.planning import PlanItem, RequestState, State
from flux_pipeline.store.shards import Shard


def items(tmp_path: Path) -> list[PlanItem]:
    """Six new requests, the first two marked up to date."""
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs: [{name: "{{ p }}-{{ s }}", prompt: p, matrix: {p: [kettle, lamp, mug], s: [a, b]}}]
        """,
    )
    found = list(plan(load_spec(spec)).items)
    done = State(RequestState.UP_TO_DATE)
    return [dataclasses.replace(i, state=done) if n < 2 else i for n, i in enumerate(found)]


def ids(chosen: list[PlanItem]) -> list[str]:
    return [i.request.id for i in chosen]


def test_select_skips_what_is_up_to_date_unless_forced(tmp_path: Path) -> None:
    every = items(tmp_path)
    assert ids(select(every, RunOptions())) == ids(every[2:])
    assert ids(select(every, RunOptions(force=True))) == ids(every)


def test_select_keeps_what_matches_any_only_glob(tmp_path: Path) -> None:
    every = items(tmp_path)
    chosen = select(every, RunOptions(only=("lamp-*", "*-b"), force=True))
    assert ids(chosen) == ["kettle-b", "lamp-a", "lamp-b", "mug-b"]


def test_select_keeps_the_shards_requests_only(tmp_path: Path) -> None:
    every = items(tmp_path)
    parts = [ids(select(every, RunOptions(shard=Shard(k, 2), force=True))) for k in (1, 2)]
    assert sorted(parts[0] + parts[1]) == sorted(ids(every))
    assert not set(parts[0]) & set(parts[1])


def test_output_paths_stay_inside_and_the_lock_names_them_from_its_folder(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out" / "spec"
    (out / "sub").mkdir(parents=True)
    folder = OutputFolder(out, tmp_path)
    assert folder.path("sub/a") == (out / "sub" / "a").resolve()
    assert folder.lock_path(folder.path("sub/a.png")) == "out/spec/sub/a.png"
    assert folder.lock_path(folder.path("b.png")) == "out/spec/b.png"
    (out / "escape").symlink_to(tmp_path)  # a folder that leads outside
    with pytest.raises(RequestFailed, match="refusing to write outside the output folder"):
        folder.path("escape/a")
