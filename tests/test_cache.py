"""The cache of earlier outputs checks what it holds: a damaged object is removed when found
(as DVC's `HashFileDB.check` does) and replaced by the next sound copy, so its request is not
paid again every time it is needed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from helpers import invoke, schnell_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.cache import OutputCache
from flux_pipeline.store.lock import Output


class _Entry:
    def __init__(self, body: str, outputs: list[Output]) -> None:
        self.body_sha256 = body
        self.outputs = outputs
        self.response: dict[str, object] = {}


def _image(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "out" / "a.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG pretend image bytes")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_damaged_object_is_replaced_by_the_next_save(tmp_path: Path) -> None:
    image, sha = _image(tmp_path)
    cache = OutputCache(tmp_path / "out")
    cache.save(image, sha, "png")
    obj = cache.object_path(sha, "png")
    obj.write_bytes(b"damaged")
    cache.save(image, sha, "png")  # a sound image of the same hash
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == sha


def test_a_damaged_object_is_removed_when_restoring_and_named(tmp_path: Path) -> None:
    image, sha = _image(tmp_path)
    cache = OutputCache(tmp_path / "out")
    cache.save(image, sha, "png")
    output = Output(
        path="out/a.png", sha256=sha, bytes=image.stat().st_size, width=1, height=1, format="png"
    )
    entry = _Entry("b" * 64, [output])
    cache.remember([entry])
    assert cache.restorable(entry.body_sha256)
    obj = cache.object_path(sha, "png")
    obj.write_bytes(b"damaged")
    assert cache.restore(entry.body_sha256, [tmp_path / "out" / "a"], str) is None
    assert not obj.exists() and cache.removed == [obj.name]
    assert not cache.restorable(entry.body_sha256)
    cache.save(image, sha, "png")  # the next sound copy makes it restorable again
    assert cache.restorable(entry.body_sha256)


def test_a_damaged_object_costs_one_request_then_restores_free_again(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = schnell_spec(tmp_path, 1)
    env = {"AIMLAPI_KEY": "k"}
    assert invoke("run", "--base-url", emulator.url, str(spec), env=env).exit_code == 0
    objects = list((tmp_path / "out/spec/.flux-cache/objects").iterdir())
    assert len(objects) == 1
    objects[0].write_bytes(b"damaged")  # the cache's copy goes bad
    image = next((tmp_path / "out/spec").glob("n0.*"))
    image.unlink()
    assert invoke("run", "--base-url", emulator.url, str(spec), env=env).exit_code == 0
    assert emulator.emulator.counters.snapshot()["paid"] == 2  # the damaged copy could not serve
    image.unlink()
    again = invoke("run", "--base-url", emulator.url, str(spec), env=env)
    assert "1 restored from the cache" in again.stdout  # the object was replaced: free again
    assert emulator.emulator.counters.snapshot()["paid"] == 2
