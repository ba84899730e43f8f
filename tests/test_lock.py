"""The lock's text: canonical, sorted, and the same however it is built; the index that
spares hashing unchanged files when a lock is compared with the disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import invoke, write_spec
from hypothesis import given
from hypothesis import strategies as st

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.errors import LockError
from flux_pipeline.store import cache
from flux_pipeline.store.atomic import sha256_file
from flux_pipeline.store.lock import Entry, Output, read_lock, render_lock, write_lock

names = st.text(min_size=1, max_size=12)
scalars = st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none())
entries = st.builds(
    Entry,
    id=names,
    job=names,
    vars=st.dictionaries(names, scalars, max_size=3),
    body=st.fixed_dictionaries(
        {"model": st.sampled_from(["flux-pro", "flux/dev"]), "prompt": st.text(max_size=20)},
        optional={"seed": st.integers(1, 9), "x": scalars},
    ),
    body_sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    seed=st.integers(1, 2**31 - 1),
    outputs=st.lists(
        st.builds(
            Output,
            path=st.from_regex(
                r"(\.\./)?out/[a-z0-9_-]{1,8}(/[a-z0-9.]{1,8})?\.png", fullmatch=True
            ),
            sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
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


# ----- hand-edited locks that still parse ----------------------------------------------------

DAMAGE = {
    "body is a list": (lambda e: e.__setitem__("body", []), "('n1', body): body must be object"),
    "integer path": (
        lambda e: e["outputs"][0].__setitem__("path", 5),
        "('n1', outputs[0].path): outputs[0].path must be string",
    ),
    "response null": (
        lambda e: e.__setitem__("response", None),
        "('n1', response): response must be object",
    ),
    "vars a list": (lambda e: e.__setitem__("vars", [1]), "('n1', vars): vars must be object"),
    "path escapes": (
        lambda e: e["outputs"][0].__setitem__("path", "out/../../victim.txt"),
        "('n1', outputs[0].path): outputs[0].path must be a relative path with /, inside the "
        "lock's folder",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_lock_is_named_everywhere_and_repaired_on_request(
    tmp_path: Path, emulator: EmulatorServer, case: str
) -> None:
    import json as _json

    from helpers import run_ok

    damage, message = DAMAGE[case]
    spec = write_spec(
        tmp_path,
        'version: 1\njobs: [{name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2]}}]\n',
    )
    run_ok(emulator, spec)
    lock_path = spec.with_name("spec.lock.json")
    data = _json.loads(lock_path.read_text())
    damage(data["requests"]["n1"])
    lock_path.write_text(_json.dumps(data))
    for command in (["plan"], ["check"], ["gallery"], ["run", "--base-url", emulator.url]):
        result = invoke(*command, str(spec), env={"AIMLAPI_KEY": "k"})
        assert result.exit_code == 1, (command, result.stdout, result.stderr)
        assert "the lock is damaged: entry 2 " + message in result.stderr
        assert "run `flux-pipeline run --repair-lock SPEC`" in result.stderr
        assert "internal error" not in result.stderr
    paid = emulator.emulator.counters.snapshot()["paid"]
    result = invoke(
        "run", "--base-url", emulator.url, "--repair-lock", str(spec), env={"AIMLAPI_KEY": "k"}
    )
    assert result.exit_code == 0, result.stderr
    assert "repaired spec.lock.json: dropped 1 damaged entries (n1)" in result.stderr
    assert "1 restored from the cache" in result.stdout  # its image was not paid again
    assert emulator.emulator.counters.snapshot()["paid"] == paid
    assert invoke("check", str(spec)).exit_code == 0


def test_the_lock_schema_is_printed_and_describes_a_real_lock(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    import json as _json

    from helpers import run_ok
    from jsonschema import Draft7Validator

    schema = _json.loads(invoke("schema", "--lock").stdout)
    spec = write_spec(
        tmp_path, "version: 1\njobs: [{name: a/b, prompt: p, request: {num_images: 2}}]\n"
    )
    run_ok(emulator, spec)
    run_ok(emulator, spec, "--shard", "1/1")
    for lock in (spec.with_name("spec.lock.json"), spec.with_name("spec.lock.shard-1-of-1.json")):
        assert not list(Draft7Validator(schema).iter_errors(_json.loads(lock.read_text())))
