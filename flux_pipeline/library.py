"""The library API, one import away: `from flux_pipeline import library`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .language.expansion import Request, expand
from .language.spec import Spec, load_spec
from .language.validation import validate
from .running.results import RunResult, Status
from .store.lock import read_lock
from .store.planning import Plan, plan

if TYPE_CHECKING:  # imported when used: `validate` and a run with nothing to do stay quick
    from .store.delivery import Assets, Delivery
    from .store.picks import Picks

__all__ = [
    "Assets",
    "Delivery",
    "Picks",
    "Plan",
    "Request",
    "RunResult",
    "Spec",
    "Status",
    "assets",
    "deliver",
    "expand",
    "load_spec",
    "pick",
    "plan",
    "read_lock",
    "run",
    "run_async",
    "validate",
]


def run(
    spec: Spec | str | Path,
    *,
    emulator: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
    **options: Any,
) -> RunResult:
    """Run a spec as `flux-pipeline run` does, from Python (a notebook, a script).

    `emulator=True` starts the built-in emulator on loopback for the run and stops it after
    (no key, no network). Otherwise the API at `base_url` (default: `FLUX_PIPELINE_BASE_URL`,
    else the provider's) with `api_key` (default: `AIMLAPI_KEY`). `options` are `run`'s:
    `concurrency`, `retries`, `only`, `force`, `max_credits`, ... (`options.RunOptions`).

    Works in a running event loop too (a notebook's cell): the run then takes a worker
    thread with a loop of its own; `await run_async(...)` leaves the caller's loop free.

    Raises as the command exits: `SpecInvalid` (exit 1) for a spec with problems,
    `ConfigError` (exit 2) for no key or a busy output folder. Requests that failed are in
    the result (`result.ok` is False; exit 3): each request's status, reason and credits in
    `result.results`, its image files in `result.outputs()`.
    """
    import asyncio  # here: `validate` and `plan` do not pay for it
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(spec, emulator, base_url, api_key, options)
    # Inside a running event loop (a notebook's cell): the run takes a loop of its own, in a
    # worker thread, and this thread waits for it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flux-run") as pool:
        return pool.submit(_run, spec, emulator, base_url, api_key, options).result()


async def run_async(
    spec: Spec | str | Path,
    *,
    emulator: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
    **options: Any,
) -> RunResult:
    """`run`, awaited: `result = await flux_pipeline.run_async(spec, emulator=True)` in a
    notebook or any coroutine. The run works in a thread with its own event loop, so this
    loop stays free meanwhile."""
    import asyncio

    return await asyncio.to_thread(_run, spec, emulator, base_url, api_key, options)


def _run(
    spec: Spec | str | Path,
    emulator: bool,
    base_url: str | None,
    api_key: str | None,
    options: dict[str, Any],
) -> RunResult:
    from .defaults import API_KEY_ENV, DEFAULT_BASE_URL
    from .errors import ConfigError
    from .running.options import RunOptions
    from .running.runner import run as run_spec

    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if isinstance(options.get("remote"), str):  # remote="s3://bucket/prefix"
        from .store.remote import open_remote

        # An emulator's images must never reach a team's cache: an emulator run only reads it.
        options = {**options, "remote": open_remote(options["remote"], read_only=emulator)}
    settings = dataclasses.replace(RunOptions(), **options)
    if emulator:
        from .emulator import EmulatorServer

        with EmulatorServer() as server:
            return run_spec(spec, base_url=server.url, api_key="emulator", options=settings)
    url = base_url or os.environ.get("FLUX_PIPELINE_BASE_URL") or DEFAULT_BASE_URL
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise ConfigError(
            f"no API key: set {API_KEY_ENV} or pass api_key=..., or run(spec, emulator=True) "
            "to run offline against the built-in emulator"
        )
    return run_spec(spec, base_url=url, api_key=key, options=settings)


def __getattr__(name: str) -> Any:
    if name in ("Assets", "Delivery"):
        from .store import delivery

        return getattr(delivery, name)
    if name == "Picks":
        from .store.picks import Picks

        return Picks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def assets(
    spec: Spec | str | Path, requests: Sequence[Request] | None = None, *, every: bool = False
) -> Assets:
    """Where the spec's asset slots and files stand: each slot's candidates, its pick (or
    why it has none usable: unpicked, stale, waiting for a run), each file's state. `every`:
    a spec without `assets:` has a slot per combination (its variants), as `pick` and the
    review page see it."""
    from .language.assets import slots_of
    from .store.delivery import assess

    spec = _spec(spec)
    if requests is None:
        requests = validate(spec)
    slots = slots_of(spec, requests) if every else None
    return assess(spec, requests, read_lock(spec.lock_path), slots=slots)


def pick(
    spec: Spec | str | Path,
    slot: str,
    candidate: str | None = None,
    *,
    reject: tuple[str, ...] = (),
    note: str | None = None,
    clear: bool = False,
) -> Picks:
    """Pick `candidate` (a request's name, `NAME:N` for its Nth image) for an asset slot, in
    SPEC.picks.yaml: the next `run` or `deliver` delivers it. Also: reject candidates, note
    why, or clear the slot. The candidate must have been generated."""
    from .store.picks import choose

    spec = _spec(spec)
    return choose(spec, validate(spec), slot, candidate, reject=reject, note=note, clear=clear)


def deliver(
    spec: Spec | str | Path, *, force: bool = False, prune: bool = False, wait: float = 0.0
) -> Delivery:
    """Make the asset files of every picked slot that are missing or out of date (no network,
    no credit), holding the output folder. Files changed by hand are kept unless `force`."""
    from .store.delivery import deliver as deliver_assets
    from .store.writer_lock import hold_output_folder

    spec = _spec(spec)
    requests = validate(spec)
    with hold_output_folder(
        spec.output, command="deliver", spec=spec.path, lock_path=spec.lock_path, wait=wait
    ):
        return deliver_assets(spec, requests, force=force, prune=prune)
