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
import dataclasses
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import ConfigError, Terminated
from ..language.assets import has_assets
from ..language.expansion import Request
from ..language.spec import Spec
from ..language.validation import output_stems
from ..provider.client import make_http_client
from ..provider.pacing import Rate
from ..provider.redaction import Redactor, clean_key
from ..store.cache import OutputCache, Pushed
from ..store.delivery import deliver
from ..store.lock import Entry, Lock, repair_lock
from ..store.output_folder import OutputFolder
from ..store.planning import Plan, RequestState, plan
from ..store.remote import BackgroundPush, prefetch
from ..store.shards import current_lock
from ..store.writer_lock import FOLDER, hold_output_folder
from .budget import cost_notices
from .keeper import LockKeeper
from .options import RunOptions
from .parts import Endpoint, RunFiles
from .results import Listener, Notify, RequestResult, RunResult, Status
from .scope import scope_of, select, within_budget
from .transaction import Run

__all__ = ["Rate", "RequestResult", "RunOptions", "RunResult", "Status", "run", "run_async"]

DEFAULTS = RunOptions()
T = TypeVar("T")


# ----- the run -----------------------------------------------------------------------------


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
    scope = scope_of(spec, the_plan, old, options)
    say = notify or (lambda line: None)
    with RunFiles.open(spec, scope.lock_path, old, Redactor(endpoint.api_key), options) as files:
        _tidy(spec, the_plan, old, options.prune, files.cache, say)
        if options.max_credits is not None:
            models = [item.request.model for item in scope.work]
            entries = old.entries.values() if old else ()
            for line in cost_notices(models, files.ratios, options.prices, entries):
                say(line)
        pusher = _pusher(spec, scope.entries, options)
        keeper = LockKeeper(
            spec.name,
            scope.lock_path,
            scope.entries,
            changed=scope.lock_changed,
            shard=scope.shard,
            assets=old.assets if old and scope.shard is None else None,
            on_record=pusher.submit if pusher else None,
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
        result = run.result(time.monotonic() - started)
    if pusher is None:
        return result
    pushed = await asyncio.to_thread(pusher.finish)
    return dataclasses.replace(result, pushed=pushed, remote_problems=tuple(pusher.failed))


def _pusher(spec: Spec, entries: Mapping[str, Entry], options: RunOptions) -> BackgroundPush | None:
    """What pushes the run's entries to a writable remote as they are recorded, starting with
    the lock's entries no run has pushed yet (one killed before its pushes finished)."""
    remote = options.remote
    if remote is None or remote.read_only:
        return None
    known = Pushed(spec.output / FOLDER, remote.url)
    pusher = BackgroundPush(remote, spec.lock_path.parent, pushed=known)
    for entry in entries.values():
        if entry.body_sha256 not in known:
            pusher.submit(entry)
    return pusher


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
        fetched = 0
        if options.remote is not None and not options.force:
            fetched = _from_remote(spec, the_plan, options)
            if fetched:  # now in the local cache: planned again, they cost nothing
                the_plan = plan(spec, requests, old, options.prices)
        within_budget(select(the_plan.items, options), options)
        result = _run_handling_signals(
            spec, the_plan, old, base_url, api_key, options, listener, notify
        )
        if options.remote is not None:  # what it brought, and what it refused or failed
            problems = (*options.remote.rejected, *result.remote_problems)
            result = dataclasses.replace(result, from_remote=fetched, remote_problems=problems)
        if has_assets(spec) and options.shard is None and not result.interrupted:
            planned = [item.request for item in the_plan.items]
            delivered = deliver(spec, planned, force=options.force_assets, prune=options.prune)
            result = dataclasses.replace(result, delivery=delivered)
        return result


def _from_remote(spec: Spec, the_plan: Plan, options: RunOptions) -> int:
    """Look up, in the remote cache, the requests this run would pay for; bring what it has
    into the local cache (verified). How many it had."""
    assert options.remote is not None
    bodies = [i.request.body_sha256 for i in select(the_plan.items, options) if not i.cached]
    if not bodies:
        return 0
    return prefetch(OutputCache(spec.output), bodies, options.remote, options.concurrency)


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
    request (figures in docs/benchmarks.md). Where this thread already runs a loop (a
    notebook, a tool driving a browser), in a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _new_loop(main)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="flux-run") as pool:
        return pool.submit(_new_loop, main).result()


def _new_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
