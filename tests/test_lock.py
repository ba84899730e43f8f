"""The lock's text: canonical, sorted, and the same however it is built; the index that
spares hashing unchanged files when a lock is compared with the disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_pipeline import cache
from flux_pipeline.atomic import sha256_file
from flux_pipeline.errors import LockError
from flux_pipeline.lock import Entry, Output, read_lock, render_lock, write_lock

names = st.text(min_size=1, max_size=12)
scalars = st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none())
entries = st.builds(
    Entry,
    id=names,
    job=names,
    vars=st.dictionaries(names, scalars, max_size=3),
    body=st.dictionaries(names, scalars, max_size=4),
    body_sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    seed=st.integers(1, 2**31 - 1),
    outputs=st.lists(
        st.builds(
            Output,
            path=names,
            sha256=names,
            bytes=st.integers(0, 10**8),
            width=st.integers(1, 4096),
            height=st.integers(1, 4096),
            format=st.sampled_from(["png", "jpeg"]),
        ),
        max_size=2,
    ).map(tuple),
    response=st.fixed_dictionaries({"seed": st.none() | st.integers(1, 9), "credits": scalars}),
)


@given(spec=names, items=st.lists(entries, max_size=5, unique_by=lambda e: e.id))
def test_lock_text_is_canonical_json(spec: str, items: list[Entry]) -> None:
    text = render_lock(spec, items)
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert list(data["requests"]) == sorted(e.id for e in items)
    assert render_lock(spec, reversed(items)) == text


@given(spec=names, items=st.lists(entries, max_size=5, unique_by=lambda e: e.id))
def test_lock_round_trips(
    tmp_path_factory: pytest.TempPathFactory, spec: str, items: list[Entry]
) -> None:
    path = tmp_path_factory.mktemp("lock") / "x.lock.json"
    write_lock(path, spec, items)
    lock = read_lock(path)
    assert lock is not None and lock.spec == spec
    assert render_lock(spec, lock.entries.values()) == path.read_text()


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"lock_version": 9}',
        '{"lock_version": 1}',
        '{"lock_version": 1, "spec": "s", "requests": {"a": {}}}',
    ],
)
def test_damaged_lock_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.lock.json"
    path.write_text(text)
    with pytest.raises(LockError) as info:
        read_lock(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_file_is_read_again_only_when_its_stat_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []

    def counting_sha256_file(path: Path) -> str:
        reads.append(path)
        return sha256_file(path)

    monkeypatch.setattr(cache, "sha256_file", counting_sha256_file)
    monkeypatch.setattr(cache.HashIndex, "RACY_SECONDS", 0)
    image, index_path = tmp_path / "a.png", tmp_path / "cache/hashes.json"
    image.write_bytes(b"one image")
    first = cache.HashIndex(index_path)
    assert first.sha256(image) == hashlib.sha256(b"one image").hexdigest()
    first.save()
    assert cache.HashIndex(index_path).sha256(image) == hashlib.sha256(b"one image").hexdigest()
    assert reads == [image]  # the second index knew it
    image.write_bytes(b"two image")  # same size, new bytes: a new stat
    assert cache.HashIndex(index_path).sha256(image) == hashlib.sha256(b"two image").hexdigest()
    assert reads == [image, image]


def test_a_file_changed_just_now_is_not_remembered(tmp_path: Path) -> None:
    """Within the racy window a change could keep the same stat, so it is hashed each time."""
    image, index_path = tmp_path / "a.png", tmp_path / "hashes.json"
    image.write_bytes(b"fresh")
    index = cache.HashIndex(index_path)
    index.sha256(image)
    index.save()
    assert not index_path.exists()


def test_a_damaged_hash_index_is_ignored(tmp_path: Path) -> None:
    image, index_path = tmp_path / "a.png", tmp_path / "hashes.json"
    image.write_bytes(b"x")
    for text in ("{not json", "[1, 2]", '{"' + str(image) + '": [1]}'):
        index_path.write_text(text)
        assert cache.HashIndex(index_path).sha256(image) == hashlib.sha256(b"x").hexdigest()
