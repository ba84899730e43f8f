"""The run's write-ahead record, `OUT/.flux-cache/pending.jsonl`: what was paid for is on
disk before anything else happens.

One JSON line per event of a request that costs money: `answer` (the API's answer, before its
images are fetched) and `done` (the stored result, fsynced in groups before it is reported).
The protocol, step by step, is described once, in docs/architecture.md ("The write-ahead
protocol"); this module writes, reads and rewrites the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..language.expansion import Request
from ..provider.responses import Delivery, Generation
from ..store.atomic import sha256_file, write_atomic
from ..store.lock import Entry, Output

FILE_NAME = "pending.jsonl"


def generation_json(generation: Generation) -> dict[str, Any]:
    """An answer as the record keeps it: URLs, not inline images."""
    return {
        "images": [
            {"url": d.url, "width": d.width, "height": d.height, "inline": d.b64 is not None}
            for d in generation.images
        ],
        "seed": generation.seed,
        "credits": generation.credits,
        "nsfw": list(generation.nsfw) if generation.nsfw is not None else None,
    }


def generation_from_json(raw: Mapping[str, Any]) -> Generation | None:
    """An answer whose images can still be fetched, or None (inline, or damaged)."""
    images = raw.get("images")
    if not isinstance(images, list) or not images:
        return None
    deliveries = []
    for image in images:
        if not isinstance(image, dict) or image.get("inline") or not image.get("url"):
            return None
        deliveries.append(
            Delivery(url=str(image["url"]), width=image.get("width"), height=image.get("height"))
        )
    nsfw = raw.get("nsfw")
    credits = raw.get("credits")
    return Generation(
        images=tuple(deliveries),
        seed=raw.get("seed") if isinstance(raw.get("seed"), int) else None,
        credits=credits if isinstance(credits, int | float) else None,
        nsfw=tuple(bool(x) for x in nsfw) if isinstance(nsfw, list) else None,
    )


@dataclass(frozen=True, slots=True)
class Result:
    """A stored result as the record keeps it: its lock entry is `Entry.of` the request with
    this body hash, these outputs and this answer."""

    id: str
    body_sha256: str
    outputs: tuple[Output, ...]
    response: Mapping[str, Any]

    def adoptable(self, request: Request, lock_folder: Path) -> bool:
        """Whether this is `request`'s result (the same body) and its files are sound."""
        return self.body_sha256 == request.body_sha256 and sound(self.outputs, lock_folder)


@dataclass(frozen=True, slots=True)
class PendingAnswer:
    """An answer whose images are not stored yet: what the next run fetches if this one ends
    first (its request, and the answer as `generation_json` wrote it)."""

    request_id: str
    answer: dict[str, Any]


@dataclass
class Recovered:
    """What a killed run left: results to adopt, answers whose images are still to fetch."""

    results: dict[str, Result] = field(default_factory=dict)
    answers: dict[str, PendingAnswer] = field(default_factory=dict)  # by body sha256


def read_pending(path: Path) -> Recovered:
    """What the record at `path` holds; a torn or damaged line is skipped."""
    found = Recovered()
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
            if record["kind"] == "answer":
                found.answers[record["body_sha256"]] = PendingAnswer(
                    record["id"], record["generation"]
                )
            elif record["kind"] == "done":
                result = Result(
                    id=str(record["id"]),
                    body_sha256=str(record["body_sha256"]),
                    outputs=tuple(Output(**o) for o in record["outputs"]),
                    response=dict(record["response"]),
                )
                found.results[result.id] = result
                found.answers.pop(result.body_sha256, None)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def sound(outputs: Iterable[Output], lock_folder: Path) -> bool:
    """Whether every file is on disk with its recorded hash."""
    try:
        return all(sha256_file(lock_folder / output.path) == output.sha256 for output in outputs)
    except OSError:
        return False


def answer_line(request_id: str, body_sha256: str, answer: Mapping[str, Any]) -> bytes:
    """An answer's record (`answer` as `generation_json` gives it)."""
    record = {"kind": "answer", "id": request_id, "body_sha256": body_sha256, "generation": answer}
    return (json.dumps(record, allow_nan=False) + "\n").encode()


def done_line(entry: Entry) -> bytes:
    record = {
        "kind": "done",
        "id": entry.id,
        "body_sha256": entry.body_sha256,
        "outputs": [o.as_json() for o in entry.outputs],
        "response": dict(entry.response),
    }
    return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode()


def rewrite(path: Path, answers: Mapping[str, PendingAnswer]) -> None:
    """Leave only these answers (by body hash) in the record, or no record."""
    lines = b"".join(
        answer_line(a.request_id, body, a.answer) for body, a in sorted(answers.items())
    )
    if lines:
        write_atomic(path, lines)
    else:
        path.unlink(missing_ok=True)


class WriteAhead:
    """Appends records to the run's record file; `durable` waits for a group fsync.

    Appends happen on the event loop (one `write` system call each, to a file opened for
    appending): once it returns, the record survives the process being killed. `durable`
    waits until an fsync that began after the record was appended has finished; records
    appended while an fsync runs share the next one.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._appended = 0
        self._synced = 0
        self._syncing: asyncio.Future[None] | None = None

    def append(self, line: bytes) -> int:
        """Append one record; its number, for `durable`. Raises OSError (a full disk)."""
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self._appended += 1
        return self._appended

    async def durable(self, number: int) -> None:
        """Return once record `number` has been fsynced."""
        while self._synced < number:
            if self._syncing is None or self._syncing.done():
                self._syncing = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        # What it covers is read when it starts, not when it was asked for: the records
        # appended meanwhile (in the same turn of the event loop) share this fsync.
        upto = self._appended
        await asyncio.to_thread(os.fsync, self._fd)
        self._synced = max(self._synced, upto)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
