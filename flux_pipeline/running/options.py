"""A run's settings, parsed (the CLI's `run` options, or a Python caller's)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..provider.pacing import Rate
from ..store.shards import Shard

if TYPE_CHECKING:
    import httpx

if TYPE_CHECKING:
    from ..store.remote import Remote


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run sends its requests; the CLI's `run` options, parsed."""

    concurrency: int = 4
    rate: Rate | None = None
    retries: int = 3
    retry_timeouts: bool = False  # resend a request whose answer never came (each may bill)
    timeout: float = 120.0
    only: tuple[str, ...] = ()
    force: bool = False
    force_assets: bool = False  # overwrite asset files changed by hand since delivered
    prune: bool = False
    max_credits: float | None = None
    max_requests: int | None = None
    partial_budget: bool = False  # a plan estimated past --max-credits: spend up to the cap
    # Credits per image by model, as the user knows them (--price, [tool.flux-pipeline.prices]):
    # the budget's expectation for those models instead of the shipped table's estimate.
    prices: Mapping[str, float] = field(default_factory=dict)
    # httpx over aiohttp, httpx's own, or a transport object (in-process: httpx.ASGITransport)
    transport: Literal["aiohttp", "httpx"] | httpx.AsyncBaseTransport = "aiohttp"
    shard: Shard | None = None  # do shard K of N, into a partial lock
    wait: float = 0.0  # seconds to wait for another writer of the output folder
    drain_timeout: float = 120.0  # seconds the requests in flight may take after a signal
    max_wait: float = 600.0  # seconds a request may be told 429 before it fails
    repair_lock: bool = False  # drop the lock's damaged entries first
    # A shared remote cache (store.remote.open_remote): looked up before paying, pushed after.
    remote: Remote | None = None
