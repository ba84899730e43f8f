"""Earlier outputs, kept by request body, so that no request is ever paid for twice.

Every image a run stores is also kept under `OUTPUT/.flux-cache/objects/` by its sha256, and
every request the lock has held is noted in `OUTPUT/.flux-cache/bodies.jsonl` by the sha256
of its body. When a request comes back — a prompt reworded and then restored, an axis value
removed and added again, an image deleted or damaged — its images are restored from there
instead of generated again.

The images are objects in a folder (`objects.LocalObjects`: a real copy each, as DVC's cache
is by default; hard links only when asked, `FLUX_PIPELINE_CACHE_LINK=hardlink`, read by the
run that builds the cache, `objects.link_mode`); the index of bodies is this module's. An
object is used only if it still has its recorded hash. `run --force` bypasses the cache;
deleting the folder only costs money. The shared remote cache (`remote`) keeps the same
records in another home with the same verbs (`objects.RemoteObjects`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..provider.images import EXTENSIONS
from .atomic import sha256_file, write_atomic
from .lock import Output
from .objects import LocalObjects, place

FOLDER = ".flux-cache"


class Recorded(Protocol):
    """What the cache keeps of a finished request (a lock `Entry`, or a recorded result)."""

    @property
    def body_sha256(self) -> str: ...
    @property
    def outputs(self) -> Sequence[Output]: ...
    @property
    def response(self) -> Mapping[str, Any]: ...


class OutputCache:
    """The cache of earlier outputs of one output folder: a store with two verbs, `save` (an
    image by its hash) and `restore` (a request's images by its body hash), plus `remember`
    (note what the lock holds) and `has`."""

    def __init__(self, output: Path, link: str = "copy") -> None:
        self.root = output / FOLDER
        self.objects = LocalObjects(self.root / "objects", link)
        self.index_path = self.root / "bodies.jsonl"
        self._index: dict[str, dict[str, Any]] | None = None

    @property
    def removed(self) -> list[str]:
        """Damaged objects removed (by `check`)."""
        return self.objects.removed

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._index is None:
            self._index = {}
            with contextlib.suppress(FileNotFoundError):
                for line in self.index_path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        record = json.loads(line)
                        self._index[record["body_sha256"]] = record
        return self._index

    def object_path(self, sha256: str, fmt: str) -> Path:
        return self.objects.path(_key(sha256, fmt))

    def save(self, path: Path, sha256: str, fmt: str) -> None:
        """Keep a copy of a stored image in the cache (best effort: a cache is a saving); an
        object there that does not verify is replaced."""
        key = _key(sha256, fmt)
        if self.objects.has(key) and self.objects.check(key, sha256):
            return
        with contextlib.suppress(OSError):
            self.objects.put(key, path)

    def remember(self, entries: Iterable[Recorded]) -> None:
        """Note requests the cache does not know yet (a few lines appended)."""
        records = []
        known = self._load()
        for entry in entries:
            if entry.body_sha256 in known:
                continue
            record = {
                "body_sha256": entry.body_sha256,
                "outputs": [o.as_json() for o in entry.outputs],
                "response": dict(entry.response),
            }
            body = getattr(entry, "body", None)
            if body is not None:  # what was asked: a stale pick names the fields that changed
                record["body"] = dict(body)
            records.append(record)
        self._add(records)

    def _add(self, records: Iterable[dict[str, Any]]) -> None:
        """Append the records the index does not hold yet (a few lines)."""
        index = self._load()
        lines = []
        for record in records:
            if record["body_sha256"] in index:
                continue
            index[record["body_sha256"]] = record
            lines.append(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        if lines:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.index_path.open("a", encoding="utf-8") as handle:
                handle.writelines(lines)

    def keep(self, entry: Mapping[str, Any], images: Sequence[bytes]) -> None:
        """Keep a request another machine paid for (a remote's verified entry and images):
        its objects, then its record, so that `restore` puts it in place for nothing."""
        for output, data in zip(entry["outputs"], images, strict=True):
            key = _key(output["sha256"], output["format"])
            if not self.objects.has(key):
                self.objects.put_bytes(key, data)
        record = {
            "body_sha256": entry["body_sha256"],
            "outputs": [dict(o) for o in entry["outputs"]],
            "response": dict(entry.get("response", {})),
            "body": dict(entry.get("body", {})),
        }
        self._add([record])

    def outputs(self) -> list[dict[str, Any]]:
        """Every output the cache has recorded (with the path the lock gave it)."""
        return [o for record in self._load().values() for o in record["outputs"]]

    def has(self, body_sha256: str) -> bool:
        return body_sha256 in self._load()

    def body_of(self, body_sha256: str) -> Mapping[str, Any] | None:
        """The body of a request the cache has recorded (None if not, or not recorded)."""
        record = self._load().get(body_sha256)
        body = record.get("body") if record else None
        return body if isinstance(body, dict) else None

    def check(self, sha256: str, fmt: str, hashed: Callable[[Path], str] = sha256_file) -> bool:
        """Whether the object is there with its hash; a damaged one is removed (and named in
        `removed`), so that the next save replaces it."""
        return self.objects.check(_key(sha256, fmt), sha256, hashed)

    def restorable(self, body_sha256: str, sha256: Callable[[Path], str] = sha256_file) -> bool:
        """Whether `restore` would put the request's images back: every object is there
        with its recorded hash (read through `sha256`: a `HashIndex`'s, to read each once)."""
        record = self._load().get(body_sha256)
        if record is None:
            return False
        return all(self.check(o["sha256"], o["format"], sha256) for o in record["outputs"])

    def restore(
        self, body_sha256: str, stems: Sequence[Path], lock_path: Callable[[Path], str]
    ) -> tuple[list[Output], dict[str, Any]] | None:
        """Put a request's earlier images in place (as `stem` + extension each); their
        outputs and the API's earlier answer, or None if the cache cannot give them all."""
        record = self._load().get(body_sha256)
        if record is None or len(record["outputs"]) != len(stems):
            return None
        if not all(self.check(o["sha256"], o["format"]) for o in record["outputs"]):
            return None
        sources = [self.object_path(o["sha256"], o["format"]) for o in record["outputs"]]
        outputs = []
        for stem, source, output in zip(stems, sources, record["outputs"], strict=True):
            target = stem.with_name(stem.name + EXTENSIONS[output["format"]])
            target.parent.mkdir(parents=True, exist_ok=True)
            place(source, target, self.objects.hardlink)
            fields = {k: v for k, v in output.items() if k != "path"}  # where it was then
            outputs.append(Output(**{**fields, "path": lock_path(target)}))
        return outputs, dict(record["response"])


def _key(sha256: str, fmt: str) -> str:
    """An image's key among the objects: its sha256 and extension."""
    return f"{sha256}{EXTENSIONS[fmt]}"


class HashIndex:
    """The sha256 of files, remembered by their stat as git's index does: a file whose size,
    modification time, change time and inode are as recorded is not read again.

    A file changed less than `RACY_SECONDS` before it was hashed is not remembered: a later
    change within the same timestamp tick could leave its stat unchanged. The index is only a
    cache (`OUT/.flux-cache/hashes.json`, written best effort): without it every file is read.
    """

    RACY_SECONDS = 2.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = {}
        self._changed = False
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_bytes())
            if isinstance(loaded, dict):
                self._entries = loaded

    def sha256(self, path: Path) -> str:
        """The file's sha256, read only if its stat changed. Raises OSError as reading does."""
        stat = path.stat()
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        key = os.path.abspath(path)
        known = self._entries.get(key)
        if isinstance(known, list) and len(known) == 5 and known[:4] == signature:
            return str(known[4])
        digest = sha256_file(path)
        racy = time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < self.RACY_SECONDS * 1e9
        if not racy:
            self._entries[key] = [*signature, digest]
            self._changed = True
        elif self._entries.pop(key, None) is not None:
            self._changed = True
        return digest

    def save(self) -> None:
        """Write the index if it learned something."""
        if self._changed:
            with contextlib.suppress(OSError):
                write_atomic(self.path, json.dumps(self._entries).encode(), durable=False)
            self._changed = False


class Pushed:
    """The bodies this output folder knows the remote holds, appended as pushes succeed
    (`.flux-cache/pushed-<url hash>.txt`): a run pushes what an earlier run recorded in the
    lock but was killed before pushing, and nothing twice."""

    def __init__(self, cache_root: Path, url: str) -> None:
        import threading

        name = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.path = cache_root / f"pushed-{name}.txt"
        try:
            self._known = set(self.path.read_text(encoding="utf-8").split())
        except OSError:
            self._known = set()
        self._lock = threading.Lock()

    def __contains__(self, body_sha256: object) -> bool:
        return body_sha256 in self._known

    def add(self, body_sha256: str) -> None:
        with self._lock:
            if body_sha256 in self._known:
                return
            self._known.add(body_sha256)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(body_sha256 + "\n")
            except OSError:
                pass  # only a saving: the next run asks the remote again
