"""Progress of a run on stderr: a live bar on a terminal, plain lines otherwise (CI, pipes)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from ..language.expansion import Request
from ..language.spec import Spec
from ..running.results import RequestResult, Status


class Progress:
    """Listens to a run's results and shows them; `summary` gives the closing report."""

    def __init__(self, spec: Spec, requests: Sequence[Request], stream: Any = None) -> None:
        self.spec = spec
        self.total = len(requests)
        self.stream = stream or sys.stderr
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._unsent: set[str] = set()  # reasons for not sending, each said once
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._task = self._bar.add_task(spec.name, total=self.total, detail="")

    def __enter__(self) -> Progress:
        if self._bar:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar:
            self._bar.stop()

    def notice(self, text: str) -> None:
        """A line for the user in the middle of the run (an interruption being drained)."""
        if self._bar:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, result: RequestResult) -> None:
        self.counts[result.status] += 1
        if self._bar:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.counts[Status.DONE] / elapsed
            detail = (
                f"done {self.counts[Status.DONE]}, skipped {self.counts[Status.SKIPPED]}, "
                f"failed {self.counts[Status.FAILED]}, {rate:.1f}/s"
            )
            if result.limited:
                detail += f", in flight {result.limited} (429s)"
            self._bar.update(self._task, advance=1, detail=detail)
        elif result.status is Status.NOT_SENT:
            # Many requests are not sent for one reason (an interruption, a budget): one line
            # for the reason, the summary counts them.
            if result.reason not in self._unsent:
                self._unsent.add(result.reason)
                print(f"not sent: {result.reason}", file=self.stream, flush=True)
        elif result.status != Status.SKIPPED:
            line = f"[{sum(self.counts.values())}/{self.total}] {result.status}: {result.id}"
            if result.reason:
                line += f" ({result.reason})"
            if result.limited:
                line += f" [in flight: {result.limited}]"
            print(line, file=self.stream, flush=True)
