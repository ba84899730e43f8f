"""The plan: every request of a spec with its size, seed, image count and state against the lock.

Credits are estimated from the price table (`budget.estimate`), scaled by what the lock
recorded for the same model (`budget.learned_ratios`); an estimate no recorded answer backs is
marked as the table's. Images are compared
with their recorded hashes through the output folder's `HashIndex`, which planning keeps
current (as `git status` refreshes git's index), so an unchanged image is not read again.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..language.bodies import body_changes, body_hash, field_change
from ..language.expansion import Request
from ..language.spec import Spec
from ..language.validation import output_stems, validate
from ..provider.images import EXTENSIONS
from ..provider.prices import estimate
from ..provider.registry import get_model
from .atomic import sha256_file
from .cache import HashIndex, OutputCache
from .costs import learned_ratios
from .lock import Entry, Lock, read_lock
from .output_folder import lock_name_of
from .unusable import UnusableAnswers


class RequestState(str, Enum):
    """Where a request stands against the lock (its value is the word users see)."""

    NEW = "new"
    CHANGED = "changed"
    MISSING = "missing"
    CORRUPT = "corrupt"
    UNUSABLE = "unusable"  # billed before for an answer with no usable image: --force only
    MOVED = "moved"  # `output:` moved: its sound images are elsewhere; the run moves them
    UP_TO_DATE = "up to date"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class State:
    """Where a request stands against the lock, and why."""

    kind: RequestState
    reason: str = ""

    @property
    def up_to_date(self) -> bool:
        return self.kind is RequestState.UP_TO_DATE


def state_of(
    request: Request,
    entry: Entry | None,
    lock_folder: Path,
    hashes: HashIndex | None = None,
    output_folder: str | None = None,
) -> State:
    """Compare one request with its lock entry and its files on disk (hashed through
    `hashes`, if given, so that unchanged files are not read again); images that are sound
    but not where `output_folder` (as the lock names it: `lock_name_of`) puts them have moved
    with it."""
    sha256 = hashes.sha256 if hashes is not None else sha256_file
    if entry is None:
        return State(RequestState.NEW)
    if entry.body_sha256 != request.body_sha256:
        changes = body_changes(entry.body, request.body)
        fields = [c for c in changes if not c.startswith("input ")]
        shown = [field_change(entry.body, request.body, f) for f in fields]
        said = ["changed: " + "; ".join(shown)] if fields else []
        said += [c for c in changes if c.startswith("input ")]
        reason = "; ".join(said) or "body changed"
        return State(RequestState.CHANGED, reason)
    if body_hash(entry.body) != entry.body_sha256:
        reason = "the lock entry was edited: its body does not match its hash"
        return State(RequestState.CORRUPT, reason)
    for output in entry.outputs:
        path = lock_folder / output.path
        try:
            if path.stat().st_size != output.bytes or sha256(path) != output.sha256:
                return State(
                    RequestState.CORRUPT, f"{output.path} does not match its recorded hash"
                )
        except FileNotFoundError:
            return State(RequestState.MISSING, f"{output.path} is missing")
        except OSError as exc:
            return State(RequestState.MISSING, f"{output.path} cannot be read: {exc.strerror}")
    moved = _moved(request, entry, output_folder)
    return moved or State(RequestState.UP_TO_DATE)


def _moved(request: Request, entry: Entry, output: str | None) -> State | None:
    """MOVED if the entry's (sound) images are not where the output folder the spec names now
    puts them (`output:` changed). `output` is that folder as the lock names paths (from the
    lock's folder, symlinks kept): compared as text, no file system call per request."""
    if output is None:
        return None
    for stem, recorded in zip(output_stems(request), entry.outputs, strict=False):
        if posixpath.splitext(recorded.path)[0] != posixpath.normpath(f"{output}/{stem}"):
            where = posixpath.dirname(recorded.path)
            return State(
                RequestState.MOVED, f"output: moved; its images are in {where}/ (run moves them)"
            )
    return None


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One request of the plan: its size, images, state and estimated credits."""

    request: Request
    state: State
    width: int  # the documented size, or a likely one (`size_checked` says which)
    height: int
    images: int
    credits: float
    size_checked: bool = True  # the documents state the size: an image of another is flagged
    cached: bool = False  # its images are in the cache of earlier outputs: no request needed
    remote: bool = False  # the shared remote cache has it: restored by the run, no request
    from_table: bool = False  # the credits are the price table's: no answer of the model yet

    @property
    def expected_size(self) -> tuple[int, int] | None:
        """The size an image must have to be as asked, or None where no size is documented."""
        return (self.width, self.height) if self.size_checked else None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.request.id,
            "job": self.request.job,
            "vars": dict(self.request.vars),
            "model": self.request.model,
            "width": self.width,
            "height": self.height,
            "size_checked": self.size_checked,
            "seed": self.request.seed,
            "images": self.images,
            "state": self.state.kind.value,
            "reason": self.state.reason,
            "credits": self.credits,
            "credits_from_table": self.from_table,
            "cached": self.cached,
            "remote": self.remote,
            "body": dict(self.request.body),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """Every request of a spec against its lock, and the lock entries the spec dropped."""

    spec: Spec
    items: tuple[PlanItem, ...]
    gone: tuple[str, ...] = ()  # ids in the lock no longer in the spec: the next run drops them

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(item.state.kind.value for item in self.items))

    @property
    def todo(self) -> tuple[PlanItem, ...]:
        return tuple(i for i in self.items if not i.state.up_to_date)

    @property
    def cached(self) -> int:
        """How many of the requests to do the cache of earlier outputs can restore."""
        return sum(1 for i in self.todo if i.cached)

    @property
    def images(self) -> int:
        return sum(i.images for i in self.items)

    @property
    def credits(self) -> float:
        """Estimated credits of the requests still to do."""
        return sum(i.credits for i in self.todo)

    @property
    def from_table(self) -> tuple[str, ...]:
        """Models whose requests to do are estimated from the price table alone."""
        return tuple(sorted({i.request.model for i in self.todo if i.from_table and i.credits}))

    def outputs(self, item: PlanItem, folder: str | None = None) -> list[str]:
        """Where a request's images go, as the lock names files (`.*` where the answer's
        format decides the extension); `folder`: the output folder as the lock names it."""
        model = get_model(item.request.model)
        fmt = model.output_format(item.request.body) if model else None
        extension = EXTENSIONS.get(fmt, ".*") if fmt else ".*"
        if folder is None:
            folder = lock_name_of(self.spec.output, self.spec.lock_path.parent)
        stems = output_stems(item.request)
        return [posixpath.normpath(f"{folder}/{stem}") + extension for stem in stems]

    def as_json(self) -> dict[str, Any]:
        folder = lock_name_of(self.spec.output, self.spec.lock_path.parent)
        return {
            "spec": self.spec.name,
            "path": str(self.spec.path),
            "requests": [{**i.as_json(), "outputs": self.outputs(i, folder)} for i in self.items],
            "gone": list(self.gone),
            "totals": {
                "requests": len(self.items),
                "images": self.images,
                "states": self.counts,
                "credits": self.credits,
                "credits_from_table": list(self.from_table),
                "cached": self.cached,
            },
        }


def all_up_to_date(spec: Spec, requests: Sequence[Request], lock: Lock | None) -> bool:
    """Whether every request is up to date against `lock` and the lock holds no other
    entry: `state_of` of each, stopping at the first that is not (a run with work then plans
    in full, under the output folder's writer lock)."""
    entries = lock.entries if lock else {}
    if len(entries) != len(requests) or any(r.id not in entries for r in requests):
        return False
    folder = spec.lock_path.parent
    hashes = HashIndex(OutputCache(spec.output).root / "hashes.json")
    written = lock_name_of(spec.output, folder)
    try:
        return all(state_of(r, entries[r.id], folder, hashes, written).up_to_date for r in requests)
    finally:
        hashes.save()


def plan(
    spec: Spec,
    requests: Sequence[Request] | None = None,
    lock: Lock | None = None,
    prices: Mapping[str, float] | None = None,
) -> Plan:
    """The plan of a spec against its lock (read from beside the spec unless given); credits
    estimated from the user's `prices` per image where given, else the price table."""
    if requests is None:
        requests = validate(spec)
    if lock is None:
        lock = read_lock(spec.lock_path)
    entries = lock.entries if lock else {}
    ratios = learned_ratios(entries.values())
    folder = spec.lock_path.parent
    cache = OutputCache(spec.output)  # read only if some request is not up to date
    hashes = HashIndex(cache.root / "hashes.json")
    unusable = UnusableAnswers(cache.root).read()
    written = lock_name_of(spec.output, folder)
    items = []
    for request in requests:
        model = get_model(request.model)
        assert model is not None  # validated
        width, height = model.likely_size(request.body)
        images = model.num_images(request.body)
        priced = bool(prices) and request.model in (prices or {})
        ratio = 1.0 if priced else ratios.get(request.model)
        credits = estimate(request.model, width, height, images, prices) * (ratio or 1.0)
        state = state_of(request, entries.get(request.id), folder, hashes, written)
        if not state.up_to_date and request.body_sha256 in unusable:
            why = unusable[request.body_sha256]
            state = State(
                RequestState.UNUSABLE,
                f"billed before with an unusable answer ({why}); --force sends it again",
            )
        # A free restore is promised only if it will happen: the cached copies are sound.
        cached = not state.up_to_date and cache.restorable(request.body_sha256, hashes.sha256)
        items.append(
            PlanItem(
                request=request,
                state=state,
                width=width,
                height=height,
                images=images,
                size_checked=model.size(request.body) is not None,
                credits=0.0 if cached else credits,
                cached=cached,
                from_table=ratio is None,
            )
        )
    hashes.save()
    ids = {request.id for request in requests}
    gone = tuple(sorted(key for key in entries if key not in ids))
    return Plan(spec=spec, items=tuple(items), gone=gone)
