"""What a `Run` is built from: where it sends (`Endpoint`), the files it writes besides images
and the lock (`RunFiles`, opened and closed as a context manager), and its collaborators
(`Collaborators`, built by one factory whose parts a caller may replace, as httpx's client
builds its transport unless given one)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..language.spec import Spec
from ..provider.client import ApiClient, RetryPolicy
from ..provider.inputs import Sender
from ..provider.limits import Throttles
from ..provider.pacing import Pacer
from ..provider.redaction import Redactor
from ..store.atomic import sweep_temp_files
from ..store.cache import OutputCache
from ..store.costs import learned_ratios
from ..store.fetcher import ImageFetcher
from ..store.lock import Lock
from ..store.objects import link_mode
from ..store.output_folder import OutputFolder
from ..store.unusable import UnusableAnswers
from ..store.writer_lock import FOLDER, JOURNAL
from .budget import Budget
from .journal import Journal
from .options import RunOptions
from .recovery import FILE_NAME, Recovered, WriteAhead, read_pending


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a run sends its requests: an HTTP client its caller owns, the API's base URL
    and the key."""

    http: httpx.AsyncClient
    base_url: str
    api_key: str


@dataclass
class RunFiles:
    """The files a run writes besides images and the lock, and what a killed run left."""

    journal: Journal
    record: WriteAhead
    cache: OutputCache
    found: Recovered
    ratios: dict[str, float]  # what each model has cost, relative to the price table
    unusable: UnusableAnswers  # bodies billed for an answer with no usable image

    @classmethod
    def open(
        cls, spec: Spec, lock_path: Path, old: Lock | None, redact: Redactor, options: RunOptions
    ) -> RunFiles:
        """Sweep what dead writers left, read what an interrupted run left, open the files."""
        link = link_mode()  # a wrong FLUX_PIPELINE_CACHE_LINK stops the run before anything opens
        spec.output.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(spec.output)
        sweep_temp_files(lock_path.parent, below=False)  # a lock write cut short
        record_path = spec.output / FOLDER / FILE_NAME
        found = read_pending(record_path)
        entries = old.entries.values() if old else ()
        # The journal grows with every run: it is read only when a cap will use what it knows.
        journal_path = spec.output / JOURNAL if options.max_credits is not None else None
        ratios = learned_ratios(entries, journal_path)
        journal = Journal(spec.output / JOURNAL, redact)  # fails early on a read-only folder
        cache = OutputCache(spec.output, link=link)
        with contextlib.suppress(OSError):
            cache.remember(entries)
        unusable = UnusableAnswers(cache.root, redact)
        record = WriteAhead(record_path)
        return cls(journal, record, cache, found, ratios, unusable)

    def __enter__(self) -> RunFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.record.close()
        self.journal.close()


@dataclass(frozen=True, slots=True)
class Collaborators:
    """The objects a run works through, each with its own clock or randomness."""

    pacer: Pacer
    throttles: Throttles
    client: ApiClient
    fetcher: ImageFetcher
    budget: Budget
    sender: Sender
    folder: OutputFolder

    @classmethod
    def build(
        cls,
        spec: Spec,
        options: RunOptions,
        endpoint: Endpoint,
        *,
        ratios: Mapping[str, float] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        client: ApiClient | None = None,
        fetcher: ImageFetcher | None = None,
    ) -> Collaborators:
        """A run's collaborators from its options; `client` and `fetcher` replace the ones
        it would build (a test's, with a clock of its own)."""
        policy = RetryPolicy(
            retries=options.retries,
            max_wait=options.max_wait,
            retry_unanswered=options.retry_timeouts,
        )
        throttles = Throttles(options.concurrency)
        if client is None:
            client = ApiClient(
                endpoint.http,
                endpoint.base_url,
                endpoint.api_key,
                policy,
                before_send=before_send,
                throttle=throttles.run,
            )
        if fetcher is None:
            fetcher = ImageFetcher(
                endpoint.http, policy, redact=client.redact, download_timeout=options.timeout
            )
        return cls(
            pacer=Pacer(options.rate),
            throttles=throttles,
            client=client,
            fetcher=fetcher,
            # A model the user gave the price of is known: its price is the expectation.
            budget=Budget(
                options.max_credits,
                options.max_requests,
                {**(ratios or {}), **dict.fromkeys(options.prices, 1.0)},
            ),
            sender=Sender(spec.folder),
            folder=OutputFolder(spec.output, spec.lock_path.parent),
        )
