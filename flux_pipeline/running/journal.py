"""The run journal (`OUT/.journal.jsonl`): timings, attempts and errors, for diagnosis."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..provider.client import Attempt
from .results import RequestResult, Status


class Journal:
    """Timings, attempts and errors of each request (`OUT/.journal.jsonl`), for diagnosis.

    Best effort: a disk too full for it must not stop the run (the lock, the write-ahead
    record and the images say what matters). Successes are written in batches."""

    def __init__(self, path: Path, redact: Callable[[str], str] = lambda text: text) -> None:
        self._file = path.open("a", encoding="utf-8")  # fails early on a read-only folder
        self._redact = redact  # every line passes the key's redactor

    def event(self, **fields: Any) -> None:
        with contextlib.suppress(OSError):
            self._file.write(self._redact(json.dumps(fields, allow_nan=False)) + "\n")

    def request(self, result: RequestResult, attempts: Sequence[Attempt]) -> None:
        self.event(
            event="request",
            id=result.id,
            status=result.status,
            reason=result.reason,
            seconds=round(result.seconds, 4),
            attempts=[
                {
                    "status": a.status,
                    "seconds": round(a.seconds, 4),
                    "error": a.error,
                    **({"unanswered": True} if a.unanswered else {}),
                }
                for a in attempts
            ],
        )
        if result.status is Status.FAILED:
            with contextlib.suppress(OSError):
                self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
