"""What a run reports: each request's result as it finishes, and the run's at its end."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RequestFailed, RunStopped, SendingStopped
from ..language.spec import Spec

if TYPE_CHECKING:
    from ..store.delivery import Delivery


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
    _: KW_ONLY
    credits: float | None = None
    attempts: int = 0
    seconds: float = 0.0
    limited: str = ""  # "8 of 64": requests in flight allowed, when a 429 lowered it
    unanswered: int = 0  # sends whose answer never came: the provider may have billed them


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: each request's result, and why it stopped sending, if it did."""

    _: KW_ONLY
    spec: Spec
    results: tuple[RequestResult, ...]
    seconds: float
    stopped: str | None = None  # why the run stopped sending, if it did
    interrupted: int | None = None  # the signal that stopped it (the requests in flight ended)
    overloads: int = 0  # 429s (and overloaded 503s) the provider answered
    limit: float | None = None  # the in-flight limit the run settled at, if it had to adapt
    credits: float = 0.0  # charged: what answers reported, else their estimate
    estimated: float = 0.0  # of which estimated: answers that reported no usage
    delivery: Delivery | None = None  # the assets delivered after the run, if it has any
    from_remote: int = 0  # requests the remote cache had: restored for nothing
    pushed: int = 0  # requests this run paid for, now in the remote cache
    remote_problems: tuple[str, ...] = ()  # pushes that failed, entries the remote refused

    @property
    def assets(self) -> tuple[str, ...]:
        """The asset files this run delivered (paths relative to the spec's folder)."""
        return self.delivery.written if self.delivery else ()

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
        return (
            self.stopped is None
            and not any(r.status in (Status.FAILED, Status.NOT_SENT) for r in self.results)
            and not (self.delivery and self.delivery.refused)
        )


#: What a full or read-only disk raises: every further image would be paid for and lost too.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@dataclass(frozen=True, slots=True)
class Failure:
    """How a request that ended in an exception is reported, and whether the run stops."""

    status: Status
    reason: str
    stops: str | None = None  # why the run sends nothing more, if this failure stops it


def failure_of(exc: Exception) -> Failure:
    """How a request's exception is reported (a pure function: tested by table)."""
    if isinstance(exc, SendingStopped):
        return Failure(Status.NOT_SENT, str(exc))
    if isinstance(exc, RunStopped):
        return Failure(Status.FAILED, str(exc), stops=str(exc))
    if isinstance(exc, RequestFailed):
        return Failure(Status.FAILED, exc.reason)
    reason = f"cannot write the image: {getattr(exc, 'strerror', None) or exc}"
    if getattr(exc, "errno", None) in DISK_ERRORS:
        return Failure(
            Status.FAILED, reason, stops=f"the output folder cannot take more images: {reason}"
        )
    return Failure(Status.FAILED, reason)


#: Called with each request's result as it finishes (for progress displays).
Listener = Callable[[RequestResult], None]
#: Called with a line for the user (an interruption being drained, a wait for the folder).
Notify = Callable[[str], None]
