"""A shared remote cache: no one on a team or in a CI matrix pays twice for one request.

A remote is an object store named by URL (`s3://bucket/prefix` with the standard `AWS_*`
variables, `gs://`, `az://`, `file:///shared/path`; `memory://` for tests), reached through
obstore. It is keyed by request, never listed: `v1/<2 hex>/<body sha256>/entry.json` (what a
lock entry holds: body, seed, outputs with their sha256, size and format, the answer) and the
entry's images beside it, `<image sha256>.<ext>`. Everything is written create-only (a second
writer of the same body is refused by the store and that is fine: the content is the same),
images first and the entry last, so a reader never finds an entry without its images.

A read verifies every image's sha256 against the entry before anything is kept; a mismatch
is named (`rejected`) and the object ignored. With a signing key (`FLUX_PIPELINE_REMOTE_KEY`),
entries carry an HMAC of their content and one without it (or with another) is ignored. A
remote that is unreachable or refuses the credentials is an error when it is opened
(`probe`), never a silent miss; a read-only remote (a fork's pull request) writes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..provider.images import EXTENSIONS
from .objects import RemoteObjects

REMOTE_ENV = "FLUX_PIPELINE_REMOTE"
KEY_ENV = "FLUX_PIPELINE_REMOTE_KEY"
LAYOUT = "v1"


class RemoteError(ConfigError):
    """The remote cannot be used as configured (exit 2)."""


@dataclass(frozen=True, slots=True)
class Found:
    """A request found in the remote: its entry and each image's bytes, verified."""

    body_sha256: str
    entry: Mapping[str, Any]
    images: tuple[bytes, ...]


@dataclass
class Remote:
    """One remote cache (`open_remote`): `fetch` a request by its body hash, `push` one; its
    objects are `RemoteObjects` (the same verbs as the local cache's `LocalObjects`)."""

    url: str
    objects: RemoteObjects
    read_only: bool = False
    key: bytes | None = None
    rejected: list[str] = field(default_factory=list)  # what a read refused, and why

    def _folder(self, body_sha256: str) -> str:
        return f"{LAYOUT}/{body_sha256[:2]}/{body_sha256}"

    @property
    def store(self) -> Any:
        return self.objects.store

    def probe(self) -> None:
        """RemoteError unless the remote answers (a missing key is an answer)."""
        try:
            self.objects.get(f"{LAYOUT}/.probe")
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - obstore's errors: named in the message
            raise RemoteError(f"the remote {self.url} cannot be used: {_said(exc)}") from None

    def has(self, body_sha256: str) -> bool:
        return self.objects.has(f"{self._folder(body_sha256)}/entry.json")

    def fetch(self, body_sha256: str) -> Found | None:
        """The request's entry and images, each image verified; None when the remote does not
        have it, or has it damaged, tampered with or unsigned (named in `rejected`)."""
        folder = self._folder(body_sha256)
        try:
            raw = self.objects.get(f"{folder}/entry.json")
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(raw)
            outputs = entry["outputs"]
            if entry.get("body_sha256") != body_sha256:
                raise ValueError("filed under another body")
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected.append(f"{body_sha256[:12]}: a damaged entry ({exc})")
            return None
        if self.key is not None and not hmac.compare_digest(
            str(entry.get("hmac", "")), _signature(self.key, entry)
        ):
            self.rejected.append(f"{body_sha256[:12]}: not signed with this team's key")
            return None
        images = []
        for output in outputs:
            try:
                data = self.objects.get(_image_key(folder, output))
            except FileNotFoundError:
                self.rejected.append(f"{body_sha256[:12]}: an image is missing")
                return None
            if hashlib.sha256(data).hexdigest() != output["sha256"]:
                self.rejected.append(f"{body_sha256[:12]}: an image does not match its sha256")
                return None
            images.append(data)
        return Found(body_sha256, entry, tuple(images))

    def push(self, entry: Mapping[str, Any], files: Sequence[Path]) -> bool:
        """Upload a request (its images, then its entry), create-only; whether it was new."""
        if self.read_only:
            return False
        body_sha256 = str(entry["body_sha256"])
        folder = self._folder(body_sha256)
        if self.has(body_sha256):
            return False
        record = dict(entry)
        if self.key is not None:
            record["hmac"] = _signature(self.key, record)
        text = json.dumps(record, sort_keys=True, ensure_ascii=False).encode()
        try:
            for output, path in zip(entry["outputs"], files, strict=True):
                self.objects.put(_image_key(folder, output), path.read_bytes())
            return self.objects.put(f"{folder}/entry.json", text)
        except Exception as exc:
            if type(exc).__name__ != "PermissionDeniedError":
                raise
            if not self.read_only:  # said once; from now on it only reads
                self.read_only = True
                self.rejected.append("the credentials cannot write: the remote is read-only")
            return False


def _image_key(folder: str, output: Mapping[str, Any]) -> str:
    """An image's key beside its entry: its sha256 and extension."""
    return f"{folder}/{output['sha256']}{EXTENSIONS[output['format']]}"


def _signature(key: bytes, entry: Mapping[str, Any]) -> str:
    unsigned = {k: v for k, v in entry.items() if k != "hmac"}
    text = json.dumps(unsigned, sort_keys=True, ensure_ascii=False).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def _said(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    kind = type(exc).__name__
    if kind == "PermissionDeniedError" or "403" in text:
        return f"the credentials were refused ({text[:160]})"
    return text[:200]


def open_remote(url: str, *, read_only: bool = False) -> Remote:
    """The remote at `url` (s3://, gs://, az://, file://, memory://), checked to answer;
    RemoteError if it cannot be used. obstore is imported only here."""
    try:
        from obstore import store as stores
    except ImportError:
        raise RemoteError("a remote needs obstore: pip install 'flux-pipeline[remote]'") from None
    parts = urlsplit(url)
    prefix = parts.path.strip("/") or None
    store: Any
    if parts.scheme == "s3":
        store = stores.S3Store(parts.netloc, prefix=prefix)
    elif parts.scheme == "gs":
        store = stores.GCSStore(parts.netloc, prefix=prefix)
    elif parts.scheme == "az":
        store = stores.AzureStore(parts.netloc, prefix=prefix)
    elif parts.scheme == "file":
        store = stores.LocalStore(parts.path, mkdir=True)
    elif parts.scheme == "memory":
        store = _MEMORY.setdefault(parts.netloc, stores.MemoryStore())
    else:
        raise RemoteError(f"remote {url!r}: use s3://, gs://, az://, file:// or memory://")
    key = os.environ.get(KEY_ENV, "").encode() or None
    remote = Remote(url, RemoteObjects(store), read_only=read_only, key=key)
    remote.probe()
    return remote


_MEMORY: dict[str, Any] = {}  # memory://NAME stores, shared within a process (tests)


# ----- a run's side: fetch before paying, push what was paid for ---------------------------


def prefetch(cache: Any, bodies: Sequence[str], remote: Remote, workers: int = 8) -> int:
    """Bring the requests the remote has among `bodies` into the local cache of earlier
    outputs (so the run restores them for nothing); how many came. Concurrent, by key."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="flux-remote") as pool:
        found = [f for f in pool.map(remote.fetch, bodies) if f is not None]
    for item in found:
        cache.keep(item.entry, item.images)
    return len(found)


class BackgroundPush:
    """Pushes entries as a run records them, from a few threads of its own, so the run never
    waits for the remote; each push is tried three times, then reported (never fatal)."""

    def __init__(
        self,
        remote: Remote,
        folder: Path,
        workers: int = 4,
        on_done: Callable[[], None] | None = None,
        pushed: Any = None,  # a cache.Pushed
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.on_done = on_done  # told after each push, from the pushing thread
        self.pushed = pushed  # what is known to be there, kept up to date
        self.remote = remote
        self.folder = folder  # the lock's folder: output paths are relative to it
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="flux-push")
        self._futures: list[Any] = []
        self.failed: list[str] = []

    def submit(self, entry: Any) -> None:
        self._futures.append(self._pool.submit(self._push, entry))

    def _push(self, entry: Any) -> bool:
        import time

        files = [self.folder / o.path for o in entry.outputs]
        last: BaseException | None = None
        try:
            for attempt in range(3):
                try:
                    new = self.remote.push(entry_record(entry), files)
                    if self.pushed is not None and not self.remote.read_only:
                        self.pushed.add(entry.body_sha256)  # there now, new or not
                    return new
                except Exception as exc:  # noqa: BLE001 - retried, then reported
                    last = exc
                    time.sleep(0.2 * (attempt + 1))
            self.failed.append(f"{entry.id}: {_said(last) if last else 'failed'}")
            return False
        finally:
            if self.on_done is not None:
                self.on_done()

    def finish(self) -> int:
        """Wait for every push; how many requests were new to the remote."""
        self._pool.shutdown(wait=True)
        return sum(1 for future in self._futures if future.result())


def push_entries(
    entries: Sequence[Any],
    folder: Path,
    remote: Remote,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, list[str]]:
    """Upload lock entries the remote lacks (their images read from under `folder`, the
    lock's); how many were new, and what failed; `progress(done, total)` as they go."""
    if remote.read_only:
        return 0, []
    pusher = BackgroundPush(remote, folder, workers, _counter(len(entries), progress))
    for entry in entries:
        pusher.submit(entry)
    return pusher.finish(), pusher.failed


def entry_record(entry: Any) -> dict[str, Any]:
    """What the remote keeps of a lock entry: the request and what it produced."""
    return {
        "body_sha256": entry.body_sha256,
        "body": dict(entry.body),
        "seed": entry.seed,
        "outputs": [o.as_json() for o in entry.outputs],
        "response": dict(entry.response),
    }


def pull_images(
    spec: Any, remote: Remote, workers: int = 8, progress: Callable[[int, int], None] | None = None
) -> tuple[int, list[str]]:
    """Write every image the spec's lock names that is missing or altered here, from the
    remote, each checked against the lock's sha256 (the caller holds the output folder).
    How many were written, and the requests the remote lacks."""
    from concurrent.futures import ThreadPoolExecutor

    from .atomic import sha256_file, write_atomic
    from .cache import OutputCache
    from .lock import read_lock

    lock = read_lock(spec.lock_path)
    folder = spec.lock_path.parent
    wanted = [
        entry
        for entry in (lock.entries.values() if lock else ())
        if any(not _sound(folder / o.path, o.sha256, sha256_file) for o in entry.outputs)
    ]

    done = _counter(len(wanted), progress)

    def fetch(entry: Any) -> Found | None:
        try:
            return remote.fetch(entry.body_sha256)
        finally:
            if done is not None:
                done()

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="flux-remote") as pool:
        found = list(pool.map(fetch, wanted))
    written, lacking = 0, []
    cache = OutputCache(spec.output)
    for entry, item in zip(wanted, found, strict=True):
        if item is None:
            lacking.append(entry.id)
            continue
        outputs = item.entry["outputs"]
        by_hash = {o["sha256"]: data for o, data in zip(outputs, item.images, strict=True)}
        for output in entry.outputs:
            data = by_hash.get(output.sha256)
            target = folder / output.path
            if data is None:  # the remote's entry holds other images than this lock names
                lacking.append(entry.id)
                break
            if not _sound(target, output.sha256, sha256_file):
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, data, durable=False)
                written += 1
        cache.keep(item.entry, item.images)
    return written, lacking


def _sound(path: Path, sha256: str, hashed: Any) -> bool:
    try:
        return bool(path.is_file() and hashed(path) == sha256)
    except OSError:
        return False


def in_remote(items: Sequence[Any], remote: Remote, workers: int = 8) -> set[str]:
    """The body hashes among the plan's `items` still to do that the remote has (a HEAD of
    each entry, concurrently): `plan` shows them at `0 (remote)`."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [i.request.body_sha256 for i in items if not i.state.up_to_date and not i.cached]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="flux-remote") as pool:
        return {b for b, there in zip(bodies, pool.map(remote.has, bodies), strict=True) if there}


def with_remote(plan: Any, remote: Remote) -> Any:
    """The plan with each request the remote has marked `remote`, at 0 credits."""
    import dataclasses

    there = in_remote(plan.items, remote)
    if not there:
        return plan
    items = tuple(
        dataclasses.replace(i, credits=0.0, remote=True)
        if i.request.body_sha256 in there and not i.state.up_to_date and not i.cached
        else i
        for i in plan.items
    )
    return dataclasses.replace(plan, items=items)


def _counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[], None] | None:
    """A thread-safe `done()` that tells `progress(done, total)`."""
    if progress is None:
        return None
    import threading

    lock, count = threading.Lock(), [0]

    def done() -> None:
        with lock:
            count[0] += 1
            progress(count[0], total)

    return done
