"""What a run works on, decided before anything is sent: the plan a run's options give
(`plan_for`), the requests it does (`select`: its shard, --only, not up to date), what its
budget allows (`within_budget`), and its scope against the lock (`scope_of`). No network
library is imported here: a run with nothing to do never loads one (`nothing_to_do`)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..language.assets import has_assets
from ..language.expansion import Request
from ..language.spec import Spec
from ..store.lock import Entry, Lock, ShardStamp
from ..store.planning import Plan, PlanItem, RequestState, all_up_to_date, plan
from ..store.shards import current_lock, made_from
from ..store.writer_lock import FOLDER
from .options import RunOptions
from .recovery import FILE_NAME
from .results import RequestResult, RunResult, Status


def plan_for(spec: Spec, requests: Sequence[Request] | None, options: RunOptions) -> Plan:
    """The plan a run of these options works from (a shard's against its partial lock too)."""
    return plan(spec, requests, current_lock(spec, options.shard), options.prices)


def todo(spec: Spec, requests: Sequence[Request] | None, options: RunOptions) -> list[PlanItem]:
    """What a run with these options would send (`run --dry-run`)."""
    return select(plan_for(spec, requests, options).items, options)


def unmatched_only(globs: Sequence[str], ids: Sequence[str]) -> None:
    """ConfigError if an `--only` glob matches no request (a typo would otherwise run
    nothing and succeed), naming the closest names."""
    for glob in globs:
        if not any(fnmatch.fnmatchcase(i, glob) for i in ids):
            close = difflib.get_close_matches(glob, ids, n=3, cutoff=0.5)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise ConfigError(f"--only {glob!r} matches no request of the spec{hint}")


def within_budget(items: Sequence[PlanItem], options: RunOptions) -> None:
    """ConfigError before anything is sent when the plan's estimate passes --max-credits
    (unless --partial-budget: spend up to the cap), or no request costs that little."""
    cap = options.max_credits
    paid = _paid(items)
    if cap is None or not paid:
        return
    cheapest = min(i.credits for i in paid)
    if cheapest > cap:
        raise ConfigError(
            f"--max-credits {cap:g}: no request costs less than {cheapest:g} credits "
            "(estimated); nothing was sent"
        )
    total = sum(i.credits for i in paid)
    if total > cap and not options.partial_budget:
        fits = affordable(paid, cap)
        raise ConfigError(
            f"the plan's estimate is {total:g} credits for {len(paid)} requests, more than "
            f"--max-credits {cap:g}: nothing was sent. Raise the cap, or pass --partial-budget "
            f"to spend up to it ({len(fits)} of {len(paid)} requests fit); `plan --max-credits "
            f"{cap:g}` shows which"
        )


def _paid(items: Iterable[PlanItem]) -> list[PlanItem]:
    return [i for i in items if not i.cached and i.state.kind is not RequestState.UNUSABLE]


def over_budget(items: Iterable[PlanItem], cap: float) -> set[str]:
    """The requests to do that a run under `cap` (with --partial-budget) would not send."""
    paid = _paid(i for i in items if not i.state.up_to_date)
    return {i.request.id for i in paid} - {i.request.id for i in affordable(paid, cap)}


def affordable(items: Sequence[PlanItem], cap: float) -> list[PlanItem]:
    """The items a run under `cap` sends, in plan order, while their estimates fit."""
    chosen, spent = [], 0.0
    for item in items:
        if spent + item.credits <= cap + 1e-9:
            chosen.append(item)
            spent += item.credits
    return chosen


def select(items: Iterable[PlanItem], options: RunOptions) -> list[PlanItem]:
    """The plan items this run must do: in its shard, matching --only, and neither up to date
    nor billed before for an unusable answer (or all, with --force)."""
    chosen = []
    for item in items:
        if options.shard and item.request.id not in options.shard:
            continue
        if options.only and not any(fnmatch.fnmatchcase(item.request.id, g) for g in options.only):
            continue
        if options.force or not (item.state.up_to_date or item.state.kind is RequestState.UNUSABLE):
            chosen.append(item)
    return chosen


@dataclass(frozen=True, slots=True)
class Scope:
    """What one run works on: its lock file and the entries it keeps, what it must do and
    what it skips (up to date, or outside its shard or --only)."""

    lock_path: Path
    entries: dict[str, Entry]
    lock_changed: bool
    shard: ShardStamp | None  # a partial lock's shard and what it was made from
    work: list[PlanItem]
    skipped: list[PlanItem]


def scope_of(spec: Spec, the_plan: Plan, old: Lock | None, options: RunOptions) -> Scope:
    items = list(the_plan.items)
    lock_path, shard = spec.lock_path, None
    if options.shard:
        shard = made_from(options.shard, [i.request for i in items])
        items = [i for i in items if i.request.id in options.shard]
        lock_path = options.shard.lock_path(spec)
    wanted = {item.request.id for item in items}
    # Requests gone from the spec leave the lock; the others keep their entry until redone.
    entries = {k: v for k, v in (old.entries if old else {}).items() if k in wanted}
    # The lock changes when it drops entries; a shard's partial lock is written even empty
    # (merge must see that the shard ran). Without a lock, the first result writes one:
    # a run whose requests all failed leaves no empty lock behind.
    changed = bool(options.shard) or (old is not None and len(entries) != len(old.entries))
    work = select(items, options)
    chosen = {item.request.id for item in work}
    skipped = [i for i in items if i.request.id not in chosen]
    return Scope(lock_path, entries, changed, shard, work, skipped)


def nothing_to_do(spec: Spec, requests: Sequence[Request], options: RunOptions) -> RunResult | None:
    """The result of a run that would send, fetch, adopt, prune and write nothing (every
    request up to date, the lock as the spec wants it, no record left by a killed run), or
    None: then the run must be made, network and all."""
    if options.force or options.prune or options.shard or options.repair_lock:
        return None
    if (spec.output / FOLDER / FILE_NAME).exists():
        return None
    if not all_up_to_date(spec, requests, current_lock(spec, None)):
        return None
    skipped = tuple(RequestResult(r.id, Status.SKIPPED) for r in requests)
    delivered = None
    if has_assets(spec):  # delivery needs no network: done here
        from ..store.delivery import deliver_when_needed

        force = options.force_assets
        delivered = deliver_when_needed(spec, requests, force=force, wait=options.wait)
    return RunResult(spec=spec, results=skipped, seconds=0.0, delivery=delivered)
