"""Putting a request's images back without a request: moved from where an earlier `output:`
put them, or copied from the cache of earlier outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..language.expansion import Request
from .cache import OutputCache
from .lock import Entry, Output
from .output_folder import OutputFolder


@dataclass(frozen=True, slots=True)
class Restored:
    """A request's images put back, the earlier answer, and where they came from."""

    outputs: list[Output]
    response: dict[str, Any]
    reason: str


def restore_free(
    request: Request,
    stems: Sequence[Path],
    moved: Entry | None,
    folder: OutputFolder,
    cache: OutputCache,
) -> Restored | None:
    """The request's images in place at `stems`: `moved`'s (the lock entry whose images an
    earlier `output:` put elsewhere) if they are still sound, else the cache's; None if
    neither can give them all. Raises OSError as moving or copying does."""
    if moved is not None:
        outputs = folder.move_in(moved.outputs, stems)
        if outputs is not None:
            where = Path(moved.outputs[0].path).parent.as_posix()
            return Restored(outputs, dict(moved.response), f"moved from {where}/")
    restored = cache.restore(request.body_sha256, stems, folder.lock_path)
    if restored is None:
        return None
    return Restored(restored[0], restored[1], "from the cache")
