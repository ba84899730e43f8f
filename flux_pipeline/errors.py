"""Every error flux-pipeline raises, under one root.

    FluxPipelineError
    ├── SpecInvalid            the spec (or its requests) cannot be used; carries every Problem
    ├── LockError              the lock file is unreadable or has the wrong shape
    ├── ConfigError            missing key, bad option value, unusable output folder
    │   ├── OutputFolderBusy   another process holds the output folder's writer lock
    │   └── OutputFolderTaken  the output folder is another spec's
    ├── Terminated             the run was stopped by a signal (SIGTERM); the lock is saved
    └── RunError               something went wrong while talking to the API
        ├── RequestFailed      one request failed for good (the run goes on with the others)
        │   ├── BadResponse    the API answered something that is not a usable result
        │   ├── NoAnswer       sent, and no answer came (a read timeout): it may be billed
        │   └── BadImage       a downloaded image is not what was promised
        ├── SaveFailed         the lock could not be saved (the write-ahead record keeps the work)
        ├── RunStopped         the API refuses all further work (401 bad key, 403 out of credits)
        └── SendingStopped     the run stops sending (interrupted, a budget, a failure): raised
                               before a request or a retry is sent

Each error carries the exit code the command line ends with (`exit_code`: 1 invalid, 2 bad
usage or setting, 3 a failure while running, 128 + the signal) and the lines it reports itself
with (`report()`), as click's `ClickException` does: the command line's handler is a few lines.

A `Problem` is one finding about a spec, located as precisely as we can: file, line, job,
combination and the JSON path of the field. Errors build their message from these fields.
"""

from __future__ import annotations

import difflib
import signal
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Explained(ValueError):
    """A value error whose message is written for the spec's author: shown as it is."""


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """` (did you mean 'prompt'?)` when `word` is close to one of `choices`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def plural(count: int, word: str) -> str:
    """`1 request`, `2 requests`: a count and its noun, agreeing."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def format_combo(combo: Mapping[str, Any]) -> str:
    """Render a matrix combination the way error messages show it: `{style: neon, n: 2}`."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in combo.items()) + "}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec or one of its requests."""

    message: str
    file: str = ""
    line: int | None = None
    job: str | None = None
    combo: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where = f"{where}:{self.line}"
        parts = [where] if where else []
        if self.job is not None:
            parts.append(f'job "{self.job}"')
        if self.combo:
            parts.append(format_combo(self.combo))
        head = " ".join(parts)
        body = f"{self.path}: {self.message}" if self.path else self.message
        return f"{head}: {body}" if head else body

    def sort_key(self) -> tuple[str, int, str]:
        return (self.file, self.line or 0, str(self))


def problem_lines(problems: Sequence[Problem], keep: int = 3) -> list[str]:
    """Each problem as a line; one problem repeated across combinations (the same spec line,
    field and message) is shown `keep` times, then counted: 640 identical lines help nobody."""
    lines: list[str] = []
    seen: Counter[tuple[Any, ...]] = Counter()
    for problem in problems:
        key = (problem.file, problem.line, problem.job, problem.path, problem.message)
        seen[key] += 1
        if seen[key] <= keep:
            lines.append(f"error: {problem}")
    for (_, _, _, path, message), count in seen.items():
        if count > keep:
            what = f"{path}: {message}" if path else message
            lines.append(f"  ... and {count - keep} more like it ({what})")
    return lines


EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_FAILED = 3


class FluxPipelineError(Exception):
    """The root of every error this package raises on purpose."""

    exit_code: int = EXIT_FAILED

    def report(self) -> list[str]:
        """The lines the command line prints of this error (on stderr)."""
        return [f"error: {self}"]


class SpecInvalid(FluxPipelineError):
    """A spec has one or more problems; all of them are listed."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def report(self) -> list[str]:
        return [*problem_lines(self.problems), f"{plural(len(self.problems), 'problem')} found"]


class LockError(FluxPipelineError):
    """The lock file cannot be read or has an unexpected shape."""

    exit_code = EXIT_INVALID


class ConfigError(FluxPipelineError):
    """A setting is missing or unusable (no API key, bad --rate, unwritable folder)."""

    exit_code = EXIT_USAGE


class OutputFolderBusy(ConfigError):
    """Another process is writing to the output folder (exit 2, like any unusable setting)."""


class OutputFolderTaken(ConfigError):
    """The output folder is another spec's (exit 2): the two would overwrite each other."""


class Terminated(FluxPipelineError):
    """A signal ended the run after the lock was saved; the exit code is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"terminated by signal {signum}")

    def report(self) -> list[str]:
        word = "interrupted" if self.signum == signal.SIGINT else "terminated"
        return [f"{word}; finished work is in the lock"]


class RunError(FluxPipelineError):
    """Something went wrong while generating images."""


class SaveFailed(RunError):
    """The lock could not be saved; the images and the write-ahead record keep the work."""


class RequestFailed(RunError):
    """One request failed after every retry the policy allows."""

    def __init__(self, request_id: str, message: str, status: int | None = None) -> None:
        self.request_id = request_id
        self.status = status
        self.reason = message
        super().__init__(f"{request_id}: {message}")


class BadResponse(RequestFailed):
    """The API's answer is not a result this tool understands (`credits`: what it said the
    request cost, if it said: an answer without a usable image may still be billed)."""

    def __init__(
        self,
        request_id: str,
        message: str,
        status: int | None = None,
        credits: float | None = None,
    ) -> None:
        super().__init__(request_id, message, status)
        self.credits = credits


class NoAnswer(RequestFailed):
    """A request was sent and no answer came (a read timeout, a connection dropped after
    sending): the provider may have run and billed it, so it is not sent again in this run."""


class BadImage(RequestFailed):
    """A delivered image is broken, too large, or not of the promised format or size."""


class RunStopped(RunError):
    """The API refuses every further request: a bad key (401) or no credits left (403)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class SendingStopped(RunError):
    """The run stops sending (an interruption, a budget reached, the API's refusal, a lock
    that cannot be saved): raised before a request, or a retry of one, is sent."""
