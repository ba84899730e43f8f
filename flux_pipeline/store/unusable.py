"""Bodies the provider billed with an answer that carried no usable image (a 200 with a
`url: null`, a body that is not JSON): `OUT/.flux-cache/unusable.jsonl`.

Sending such a body again would very likely be billed again for the same nothing, so `plan`
shows it as `unusable` and `run` sends it only with `--force`. A forced run that gets a usable
answer forgets it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from .atomic import write_atomic

FILE_NAME = "unusable.jsonl"


class UnusableAnswers:
    """The record of bodies billed for an unusable answer, by body sha256 -> why."""

    def __init__(self, folder: Path, redact: Callable[[str], str] = lambda text: text) -> None:
        self.path = folder / FILE_NAME
        self._redact = redact  # every line passes the key's redactor
        self._seen: dict[str, str] | None = None

    def read(self) -> dict[str, str]:
        """Every recorded body's reason (a damaged line is skipped; no file, none)."""
        if self._seen is None:
            self._seen = {}
            with contextlib.suppress(FileNotFoundError):
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                        record = json.loads(line)
                        self._seen[str(record["body_sha256"])] = str(record["reason"])
        return self._seen

    def add(self, body_sha256: str, request_id: str, reason: str) -> None:
        """Record a body billed for an unusable answer (one appended line)."""
        self.read()[body_sha256] = reason
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only the reason is the server's text (it may quote the key); ids and hashes are ours.
        line = {"body_sha256": body_sha256, "id": request_id, "reason": self._redact(reason)}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(line, allow_nan=False) + "\n")

    def forget(self, body_sha256: str) -> None:
        """Drop a body that has since had a usable answer."""
        seen = self.read()
        if seen.pop(body_sha256, None) is None:
            return
        lines = [
            json.dumps({"body_sha256": body, "reason": why}) + "\n" for body, why in seen.items()
        ]
        if lines:
            write_atomic(self.path, "".join(lines).encode(), durable=False)
        else:
            self.path.unlink(missing_ok=True)
