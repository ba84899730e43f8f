"""The run: do what the plan says, concurrently, treating every request as a transaction.

It holds the output folder's writer lock (`writer_lock`) from start to end, and follows the
write-ahead protocol (docs/architecture.md) for every request that costs money. The first
SIGINT or SIGTERM stops sending and lets the requests in flight finish (they are paid for) for
up to `drain_timeout` seconds; a second one abandons them (their answers stay in the record
for the next run). A 401 or 403, a disk that cannot take more images, or a lock that cannot
be saved stop the run: no further request is sent.

Reading from `run()` down: hold the folder, plan, handle signals, then `run_async`: decide
what the lock keeps and what to do (`_scope`), open the run's files (`_open`), let the
transaction's workers send requests (`transaction.Run`), and close it (`_close`) however it
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fnmatch
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError, Terminated
from ..language.expansion import Request
from ..language.spec import Spec
from ..language.validation import output_stems
from ..provider.client import make_http_client
from ..provider.pacing import Rate
from ..provider.redaction import Redactor, clean_key
from ..store.cache import OutputCache
from ..store.lock import Entry, Lock, ShardStamp, repair_lock
from ..store.output_folder import OutputFolder
from ..store.planning import Plan, PlanItem, RequestState, plan
from ..store.shards import current_lock, made_from
from ..store.writer_lock import hold_output_folder
from .budget import cost_notices
from .keeper import LockKeeper
from .options import RunOptions
from .parts import Endpoint, RunFiles
from .results import Listener, Notify, RequestResult, RunResult, Status
from .transaction import Run

__all__ = ["Rate", "RequestResult", "RunOptions", "RunResult", "Status", "run", "run_async"]

DEFAULTS = RunOptions()
T = TypeVar("T")


# ----- planning a run ----------------------------------------------------------------------


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


# ----- the run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scope:
    """What one run works on: its lock file and the entries it keeps, what it must do and
    what it skips (up to date, or outside its shard or --only)."""

    lock_path: Path
    entries: dict[str, Entry]
    lock_changed: bool
    shard: ShardStamp | None  # a partial lock's shard and what it was made from
    work: list[PlanItem]
    skipped: list[PlanItem]


def _scope(spec: Spec, the_plan: Plan, old: Lock | None, options: RunOptions) -> _Scope:
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
    return _Scope(lock_path, entries, changed, shard, work, skipped)


def _tidy(
    spec: Spec, the_plan: Plan, old: Lock | None, prune: bool, cache: OutputCache, say: Notify
) -> None:
    """`--prune`: delete, and name, the images the lock or the cache recorded that are not
    the spec's now (unchanged since, inside the output folder). A plain run that drops lock
    entries says so; the cache's index keeps their images findable for a later `--prune`."""
    entries = old.entries if old else {}
    ids = {item.request.id for item in the_plan.items}
    dropped = sorted(key for key in entries if key not in ids)
    if prune:
        keep = [stem for item in the_plan.items for stem in output_stems(item.request)]
        recorded = [o.as_json() for e in entries.values() for o in e.outputs] + cache.outputs()
        # Never an image of an entry the plan keeps (`output:` moved: the run moves them).
        kept = {o.path for key, e in entries.items() if key in ids for o in e.outputs}
        recorded = [o for o in recorded if o["path"] not in kept]
        folder = OutputFolder(spec.output, spec.lock_path.parent)
        for name in folder.prune(recorded, keep):
            say(f"pruned {name}: no longer in the spec")
    elif dropped:
        listed = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        say(
            f"dropping {len(dropped)} lock {'entry' if len(dropped) == 1 else 'entries'} no "
            f"longer in the spec ({listed}); their images stay, `run --prune` deletes them"
        )


async def run_async(
    spec: Spec,
    the_plan: Plan,
    endpoint: Endpoint,
    *,
    options: RunOptions = DEFAULTS,
    listener: Listener | None = None,
    notify: Notify | None = None,
    old: Lock | None = None,
    on_start: Callable[[Run], None] | None = None,
) -> RunResult:
    """Do a plan through an HTTP client the caller owns (and, as `run` does, holding the
    output folder's writer lock). `old` is the lock the plan was made against (read again if
    not given). The lock is saved however this ends; `on_start` sees the run (to signal it)."""
    started = time.monotonic()
    if old is None:
        old = current_lock(spec, options.shard)
    scope = _scope(spec, the_plan, old, options)
    say = notify or (lambda line: None)
    with RunFiles.open(spec, scope.lock_path, old, Redactor(endpoint.api_key), options) as files:
        _tidy(spec, the_plan, old, options.prune, files.cache, say)
        if options.max_credits is not None:
            models = [item.request.model for item in scope.work]
            entries = old.entries.values() if old else ()
            for line in cost_notices(models, files.ratios, options.prices, entries):
                say(line)
        keeper = LockKeeper(
            spec.name, scope.lock_path, scope.entries, changed=scope.lock_changed, shard=scope.shard
        )
        run = Run(
            spec, options, endpoint, keeper=keeper, files=files, listener=listener, notify=notify
        )
        async with run:
            files.journal.event(
                event="run", spec=spec.name, requests=len(scope.work), time=time.time()
            )
            if on_start is not None:
                on_start(run)
            for item in scope.skipped:
                if item.state.kind is RequestState.UNUSABLE:  # billed for nothing before
                    run.finish(RequestResult(item.request.id, Status.NOT_SENT, item.state.reason))
                else:
                    run.finish(RequestResult(item.request.id, Status.SKIPPED))
            await run.work(run.adopt(scope.work, files.found.results))
    return run.result(time.monotonic() - started)


def run(
    spec: Spec,
    *,
    base_url: str,
    api_key: str,
    options: RunOptions = DEFAULTS,
    listener: Listener | None = None,
    notify: Notify | None = None,
    requests: Sequence[Request] | None = None,
) -> RunResult:
    """Plan and run a spec against an API (or emulator) at `base_url`, holding the output
    folder's writer lock. The first SIGINT or SIGTERM drains the requests in flight (the
    result says `interrupted`); a second abandons them and raises Terminated."""
    api_key = clean_key(api_key)
    if not api_key:
        raise ConfigError("no API key: set AIMLAPI_KEY, or use --emulator to run offline")
    with hold_output_folder(
        spec.output,
        command="run",
        spec=spec.path,
        lock_path=spec.lock_path,
        wait=options.wait,
        on_wait=notify,
    ):
        if options.repair_lock:
            _repair(spec, options, notify or (lambda line: None))
        old = current_lock(spec, options.shard)
        the_plan = plan(spec, requests, old, options.prices)
        within_budget(select(the_plan.items, options), options)
        return _run_handling_signals(
            spec, the_plan, old, base_url, api_key, options, listener, notify
        )


def _repair(spec: Spec, options: RunOptions, say: Notify) -> None:
    """`--repair-lock`: drop the damaged entries of the lock (and the shard's partial lock)."""
    paths = [spec.lock_path] + ([options.shard.lock_path(spec)] if options.shard else [])
    for path in paths:
        dropped = repair_lock(path)
        if dropped:
            listed = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
            say(f"repaired {path.name}: dropped {len(dropped)} damaged entries ({listed})")


def _run_handling_signals(
    spec: Spec,
    the_plan: Plan,
    old: Lock | None,
    base_url: str,
    api_key: str,
    options: RunOptions,
    listener: Listener | None,
    notify: Notify | None,
) -> RunResult:
    signals: list[int] = []

    async def main() -> RunResult:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        runs: list[Run] = []

        def on_signal(signum: int) -> None:
            signals.append(signum)
            if len(signals) == 1 and runs:
                runs[0].interrupt(signum)
                loop.call_later(options.drain_timeout, task.cancel)
            else:
                task.cancel()  # a second signal abandons the requests in flight

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, on_signal, signum)
        async with make_http_client(
            options.concurrency, options.timeout, options.transport
        ) as http:
            return await run_async(
                spec,
                the_plan,
                Endpoint(http, base_url, api_key),
                options=options,
                listener=listener,
                notify=notify,
                old=old,
                on_start=runs.append,
            )

    try:
        return run_event_loop(main())
    except asyncio.CancelledError:
        raise Terminated(signals[0] if signals else signal.SIGINT) from None


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it exists: its socket handling costs the client less CPU per
    request (figures in docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
