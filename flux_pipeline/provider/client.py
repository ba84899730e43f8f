"""The generation API's client: one POST per attempt, a retry policy, the answer's shapes.

One `httpx.AsyncClient` per run, injected by the caller, so the same code talks to the real
API, the emulator over loopback, or an in-process transport. What to do with an answer is a
pure function (`classify`); `ApiClient.generate` is the loop that sends, sleeps and retries.
The API key is sent only on the generation POST (never on image downloads, never across a
redirect), and every text that comes back from the server passes through `redact` before it
reaches an error message. Images are fetched by `fetcher.ImageFetcher`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import httpx

from ..errors import BadResponse, NoAnswer, RequestFailed, RunStopped, plural
from .limits import Throttle
from .redaction import Redactor
from .registry import API_PATH
from .responses import Generation, api_message, parse_generation

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
# What a transport raises for a broken exchange (ours maps aiohttp's: `transport`).
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError,)
# The failures that prove the request never reached the provider, so nothing was run or
# billed: it is retried freely. Any other (a read timeout, a connection dropped after the body
# was sent) may have been billed: Black Forest Labs' own client never retries such a POST.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)
# A 429 that will not pass by waiting, and a 503 that is about load (from their messages).
QUOTA = re.compile(r"quota|balance|insufficient|credits? (?:exhausted|exceeded|left)|billing", re.I)
OVERLOADED = re.compile(r"overload|capacity|too many|busy", re.I)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring the server's Retry-After up to a cap."""

    retries: int = 3  # attempts after failures (not after 429s: see max_wait)
    base: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    max_wait: float = 600.0  # seconds a request may spend being told 429 before it fails
    # Resend a request whose answer never came (`--retry-timeouts`): each send may be billed.
    retry_unanswered: bool = False

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_backoff, self.base * 2**attempt))


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms`, or `Retry-After` in seconds or as
    an HTTP date), or None if it says nothing usable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if seconds == seconds else None  # NaN is garbage
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def make_http_client(
    concurrency: int, timeout: float, transport: str | httpx.AsyncBaseTransport = "aiohttp"
) -> httpx.AsyncClient:
    """The run's HTTP client: a pool sized to the concurrency, on the chosen transport.

    `aiohttp` (through httpx-aiohttp, its errors mapped: `transport`) is the default because it
    keeps up at high concurrency where httpx's own transport saturates a core (see
    bench/runner.py); `httpx` is the fallback; a transport object is used as it is (an
    `httpx.ASGITransport` on the emulator's app, in-process).
    """
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )
    timeouts = httpx.Timeout(timeout, connect=min(timeout, 30.0))
    if isinstance(transport, httpx.AsyncBaseTransport):
        return CookielessClient(transport=transport, timeout=timeouts, follow_redirects=False)
    if transport == "aiohttp":
        from .transport import MappedAiohttpTransport

        return CookielessClient(
            transport=MappedAiohttpTransport(limits), timeout=timeouts, follow_redirects=False
        )
    return CookielessClient(limits=limits, timeout=timeouts, follow_redirects=False)


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class CookielessClient(httpx.AsyncClient):
    """httpx's client, keeping no cookies: nothing the API sets travels on to image hosts,
    and answers are not parsed for them (a measurable share of the client's CPU per request:
    docs/benchmarks.md)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        pass


# ----- the client --------------------------------------------------------------------------


@dataclass
class Attempt:
    """One try of one request, for the run journal and the budget."""

    status: int | None
    seconds: float
    error: str | None = None
    unanswered: bool = False  # sent, and no answer came: the provider may have billed it


def network_error(exc: BaseException, url: httpx.URL) -> str:
    """What the network did, in words, from an exception and the ones under it (transports
    wrap the system's: aiohttp's refused connection arrives as httpx's ConnectTimeout)."""
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 8:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "certificate_error", None)
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {where} (is the server running there?)"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host {url.host} (DNS: {cause.strerror or cause})"
    tls = [c for c in causes if isinstance(c, ssl.SSLError)]
    if tls:  # the innermost says it best (CERTIFICATE_VERIFY_FAILED)
        reason = getattr(tls[-1], "verify_message", None) or getattr(tls[-1], "reason", None)
        return f"TLS failure with {where}: {reason or tls[-1]}"
    if isinstance(exc, httpx.ReadTimeout):
        return "read timed out: no answer within --timeout"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__}) connecting to {where}"
    return f"connection error: {type(exc).__name__}: {exc}"


class Action(Enum):
    """What the run does after an answer that is not a success."""

    RETRY = "retry"  # the same request again, after a wait (counts against --retries)
    THROTTLE = "throttle"  # the provider's limit: slow every worker down, then send again
    FAIL = "fail"  # this request has failed for good; the run goes on with the others
    STOP = "stop"  # the API refuses all further work: no request is sent any more


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one answer, why, and how long to wait before a retry (if the server
    said; None: the policy's backoff)."""

    action: Action
    reason: str
    wait: float | None = None


def classify(status: int, headers: Mapping[str, str], body: bytes, policy: RetryPolicy) -> Verdict:
    """What to do with an answer of the generation endpoint other than 200 (a pure function:
    tested by table). 401, 403 and a 429 that says the quota or balance is spent stop the
    run; other 429s, and 503s that say the service is overloaded, throttle it; 408, 409 and
    5xx are retried; the server's wait is honoured up to the policy's cap; any other status
    fails the request."""
    message = api_message(body)
    reason = f"HTTP {status}: {message}"
    if status == 401:
        return Verdict(Action.STOP, f"the API refused the key (401): {reason}. Check AIMLAPI_KEY.")
    if status == 403:
        return Verdict(Action.STOP, f"the API refused further work (403): {reason}")
    if status == 429 and QUOTA.search(message):
        return Verdict(Action.STOP, f"the API's quota is spent (429): {reason}")
    if 300 <= status < 400:
        location = headers.get("location", "(no Location)")
        hint = "; use https" if location.startswith("https://") else ""
        return Verdict(
            Action.FAIL,
            f"HTTP {status}: the API redirects the request to {location}; a POST is not "
            f"followed (its body would be sent where it was not meant to go){hint}",
        )
    if status not in RETRYABLE:
        return Verdict(Action.FAIL, reason)
    wait = retry_after(headers)
    if wait is not None and wait > policy.max_retry_after:
        return Verdict(
            Action.FAIL,
            f"{reason}; the server asks to retry after {wait:.0f} s, more than the "
            f"{policy.max_retry_after:.0f} s this run waits",
        )
    if status == 429 or (status == 503 and OVERLOADED.search(message)):
        return Verdict(Action.THROTTLE, reason, wait)
    return Verdict(Action.RETRY, reason, wait)


@dataclass
class ApiClient:
    """Generation requests against one base URL, with the run's retry policy.

    `before_send` is awaited before every attempt: the runner uses it for pacing and to stop
    sending once the run must stop; `throttle` is the run's shared answer to 429s. `sleep`,
    `clock` and `rng` are the client's time and randomness.
    """

    http: httpx.AsyncClient
    base_url: str
    api_key: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    before_send: Callable[[], Awaitable[None]] | None = None
    throttle: Throttle = field(default_factory=lambda: Throttle(1 << 16))
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _api_url: httpx.URL = field(init=False, repr=False)
    _headers: dict[str, str] = field(init=False, repr=False)
    _redactor: Redactor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._redactor = Redactor(self.api_key)
        self._api_url = httpx.URL(self.base_url.rstrip("/") + API_PATH)  # parsed once
        self._headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
        }

    def redact(self, text: str) -> str:
        return self._redactor(text)

    async def generate(
        self,
        request_id: str,
        body: Mapping[str, Any],
        attempts: list[Attempt],
        throttle: Throttle | None = None,
    ) -> Generation:
        """POST one body, retrying as the policy allows. Raises RequestFailed or RunStopped.

        Failures (408, 409, 5xx, timeouts) count against `retries`; 429s do not: they slow
        the whole run down (`throttle`, or the one given for the body's model family), and the
        request fails only after `max_wait` seconds of them."""
        content = json.dumps(
            body, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
        failures = 0
        throttled_since: float | None = None
        while True:
            verdict = await self._attempt(request_id, content, attempts, throttle or self.throttle)
            if isinstance(verdict, Generation):
                return replace(verdict, attempts=len(attempts))
            if verdict.action is Action.STOP:
                raise RunStopped(attempts[-1].status or 0, verdict.reason)
            if verdict.action is Action.FAIL:
                raise RequestFailed(request_id, verdict.reason, attempts[-1].status)
            if verdict.action is Action.THROTTLE:
                now = self.clock()
                throttled_since = now if throttled_since is None else throttled_since
                if now - throttled_since > self.policy.max_wait:
                    waited = f"{now - throttled_since:.0f} s"
                    raise RequestFailed(request_id, f"{verdict.reason} for {waited} (--max-wait)")
                continue  # the throttle's pause is the wait
            if failures == self.policy.retries:
                tried = plural(failures + 1, "attempt")
                raise RequestFailed(request_id, f"{verdict.reason} (after {tried})")
            wait = verdict.wait
            await self.sleep(wait if wait is not None else self.policy.backoff(failures, self.rng))
            failures += 1

    async def _attempt(
        self, request_id: str, content: bytes, attempts: list[Attempt], throttle: Throttle
    ) -> Generation | Verdict:
        """One POST, holding a slot of the throttle; the answer, or what to do about it."""
        if self.before_send is not None:
            await self.before_send()
        slot = await throttle.acquire()
        outcome, wait = "other", None
        started = self.clock()
        try:
            try:
                response = await self.http.post(
                    self._api_url, content=content, headers=self._headers
                )
                raw = response.content
            except TRANSPORT_ERRORS as exc:
                reason = self.redact(network_error(exc, self._api_url))
                unanswered = not isinstance(exc, NOT_SENT_ERRORS)
                attempts.append(Attempt(None, self.clock() - started, reason, unanswered))
                if unanswered and not self.policy.retry_unanswered:
                    raise NoAnswer(
                        request_id,
                        f"{reason}, after sending: the provider may have billed it; "
                        "rerun to try again (or --retry-timeouts)",
                    ) from None
                return Verdict(Action.RETRY, reason)
            status, elapsed = response.status_code, self.clock() - started
            if status == 200:
                outcome = "ok"
                attempts.append(Attempt(status, elapsed))
                try:
                    return parse_generation(request_id, raw)
                except BadResponse as exc:  # it quotes the answer: an echo of the request
                    reason = self.redact(exc.reason)
                    raise BadResponse(request_id, reason, exc.status, exc.credits) from None
            verdict = classify(status, response.headers, raw, self.policy)
            verdict = replace(verdict, reason=self.redact(verdict.reason))
            attempts.append(Attempt(status, elapsed, verdict.reason))
            if verdict.action is Action.THROTTLE:
                outcome, wait = "overloaded", verdict.wait
            return verdict
        finally:
            throttle.release(slot, outcome=outcome, wait=wait)
