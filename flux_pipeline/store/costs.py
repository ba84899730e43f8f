"""What each model has cost relative to the price table, as the lock and the journal recorded
it: a run's budget and `plan`'s estimates scale the table by it."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..provider.prices import estimate
from .lock import Entry


def learned_ratios(entries: Iterable[Entry], journal: Path | None = None) -> dict[str, float]:
    """The most each model has cost relative to the table: from the lock's entries (what
    their answers reported) and the journal's `cost` events (answers of any run, kept or not)."""
    ratios: dict[str, float] = {}

    def learn(model: Any, credits: Any, table: Any) -> None:
        numbers = (credits, table)
        if (
            isinstance(model, str)
            and all(
                isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n)
                for n in numbers
            )
            and credits >= 0
            and table > 0
        ):
            ratios[model] = max(ratios.get(model, 0.0), credits / table)

    for entry in entries:
        if entry.outputs:
            first = entry.outputs[0]
            model = str(entry.body.get("model"))
            table = estimate(model, first.width, first.height, len(entry.outputs))
            learn(model, entry.response.get("credits"), table)
    if journal is not None:
        with (
            contextlib.suppress(OSError),
            journal.open(encoding="utf-8", errors="replace") as lines,
        ):
            for line in lines:
                if '"cost"' not in line:
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    event = json.loads(line)
                    if event.get("event") == "cost":
                        learn(event.get("model"), event.get("credits"), event.get("table"))
    return ratios
