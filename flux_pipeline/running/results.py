"""What a run reports: each request's result as it finishes, and the run's at its end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..language.spec import Spec


class Status(str, Enum):
    """How a request of a run ended (its value is the word users see)."""

    DONE = "done"
    RESTORED = "restored"  # put back from the cache or an interrupted run, without a request
    SKIPPED = "skipped"  # up to date
    FAILED = "failed"
    NOT_SENT = "not sent"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class RequestResult:
    """How one request of the run ended."""

    id: str
    status: Status
    reason: str = ""
    credits: float | None = None
    attempts: int = 0
    seconds: float = 0.0
    limited: str = ""  # "8 of 64": requests in flight allowed, when a 429 lowered it


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: each request's result, and why it stopped sending, if it did."""

    spec: Spec
    results: tuple[RequestResult, ...]
    seconds: float
    stopped: str | None = None  # why the run stopped sending, if it did
    interrupted: int | None = None  # the signal that stopped it (the requests in flight ended)
    overloads: int = 0  # 429s (and overloaded 503s) the provider answered
    limit: float | None = None  # the in-flight limit the run settled at, if it had to adapt
    credits: float = 0.0  # charged: what answers reported, else their estimate
    estimated: float = 0.0  # of which estimated: answers that reported no usage

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    def outputs(self) -> dict[str, tuple[Path, ...]]:
        """Each request's image files, as the spec's lock records them after the run."""
        from ..store.lock import read_lock

        lock = read_lock(self.spec.lock_path)
        folder = self.spec.lock_path.parent
        entries = lock.entries if lock else {}
        return {key: tuple(folder / o.path for o in e.outputs) for key, e in entries.items()}

    @property
    def ok(self) -> bool:
        return self.stopped is None and not any(
            r.status in (Status.FAILED, Status.NOT_SENT) for r in self.results
        )


#: Called with each request's result as it finishes (for progress displays).
Listener = Callable[[RequestResult], None]
#: Called with a line for the user (an interruption being drained, a wait for the folder).
Notify = Callable[[str], None]
