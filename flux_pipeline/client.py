"""The HTTP client of the generation API: retries, pacing, response shapes, image delivery.

One `httpx.AsyncClient` per run, injected by the caller, so the same code talks to the real
API, the emulator over loopback, or an in-process transport. The API key is sent only on the
generation POST (never on image downloads, never across a redirect), and every text that comes
back from the server passes through `redact` before it reaches an error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .atomic import Spool
from .defaults import DEFAULT_BASE_URL  # noqa: E402,F401  (re-exported)
from .errors import BadImage, BadResponse, RequestFailed, RunStopped
from .images import EXTENSIONS, ImageInfo, probe
from .registry import API_PATH

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_IMAGE_BYTES = 64 * 1024 * 1024
SPOOL_BYTES = 256 * 1024  # an image smaller than this is held in memory until it is checked


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring the server's Retry-After up to a cap."""

    retries: int = 3
    base: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_backoff, self.base * 2**attempt))


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms`, or `Retry-After` in seconds or as
    an HTTP date), or None if it says nothing usable."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
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
    concurrency: int, timeout: float, transport: str = "aiohttp"
) -> httpx.AsyncClient:
    """The run's HTTP client: a pool sized to the concurrency, on the chosen transport.

    `aiohttp` (through httpx-aiohttp) is the default because it keeps up at high concurrency
    where httpx's own transport saturates a core (see bench/runner.py); `httpx` is the fallback.
    """
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )
    timeouts = httpx.Timeout(timeout, connect=min(timeout, 30.0))
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return CookielessClient(
            transport=AiohttpTransport(limits=limits), timeout=timeouts, follow_redirects=False
        )
    return CookielessClient(limits=limits, timeout=timeouts, follow_redirects=False)


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class CookielessClient(httpx.AsyncClient):
    """httpx's client, keeping no cookies: nothing the API sets travels on to image hosts,
    and answers are not parsed for them (8% of the client's CPU per request)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        pass


# ----- responses ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One image as the API delivers it: a URL or inline base64, and what it says about it."""

    url: str | None = None
    b64: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """A successful answer of the generation endpoint, in either documented shape."""

    images: tuple[Delivery, ...]
    seed: int | None = None
    credits: float | None = None
    nsfw: tuple[bool, ...] | None = None
    attempts: int = 1

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "credits": self.credits,
            "nsfw": list(self.nsfw) if self.nsfw is not None else None,
        }


def _first_bytes(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "replace")
    return repr(text) + ("..." if len(raw) > limit else "")


def parse_generation(request_id: str, raw: bytes) -> Generation:
    """Read a 200 answer: `data: [{url | b64_json}]` + `meta.usage`, or `images: [{url, ...}]`
    + `seed` + `has_nsfw_concepts`; credits as `credits_used` or `tokens_used`."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadResponse(request_id, f"the answer is not JSON: {_first_bytes(raw)}") from None
    if not isinstance(data, dict):
        raise BadResponse(request_id, f"the answer is not a JSON object: {_first_bytes(raw)}")
    items = data.get("data") or data.get("images")
    deliveries = [d for d in map(_delivery, items) if d] if isinstance(items, list) else []
    if not deliveries or len(deliveries) != len(items or ()):
        raise BadResponse(
            request_id,
            f"the answer holds no usable images (data[] or images[]): {_first_bytes(raw)}",
        )
    meta = data.get("meta")
    usage = meta.get("usage") if isinstance(meta, dict) else None
    credits = None
    if isinstance(usage, dict):
        credits = usage.get("credits_used", usage.get("tokens_used"))
    nsfw = data.get("has_nsfw_concepts")
    seed = data.get("seed")
    return Generation(
        images=tuple(deliveries),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        credits=credits
        if isinstance(credits, int | float) and not isinstance(credits, bool)
        else None,
        nsfw=tuple(bool(x) for x in nsfw) if isinstance(nsfw, list) else None,
    )


def _delivery(item: Any) -> Delivery | None:
    """One entry of `data[]` (`url` or `b64_json`) or `images[]` (`url`, `width`, `height`)."""
    if not isinstance(item, dict):
        return None
    url, b64 = item.get("url"), item.get("b64_json")
    width, height = item.get("width"), item.get("height")
    width = width if isinstance(width, int) else None
    height = height if isinstance(height, int) else None
    if isinstance(url, str) and url:
        return Delivery(url=url, width=width, height=height)
    if isinstance(b64, str) and b64:
        return Delivery(b64=b64, width=width, height=height)
    return None


def _api_message(raw: bytes) -> str:
    """The API's own error message, from its `{message, ...}` body when it has one."""
    try:
        data = json.loads(raw)
    except ValueError:
        return _first_bytes(raw)
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        details = data.get("details")
        if isinstance(details, list) and details:
            return f"{data['message']}: " + "; ".join(map(str, details))
        return str(data["message"])
    return _first_bytes(raw)


# ----- the client --------------------------------------------------------------------------


@dataclass
class Attempt:
    """One try of one request, for the run journal."""

    status: int | None
    seconds: float
    error: str | None = None


@dataclass
class ApiClient:
    """Generation and download against one base URL, with the run's retry policy.

    `before_send` is awaited before every attempt: the runner uses it for pacing and to stop
    sending once the run must stop. `sleep` and `rng` are the client's clock and randomness.
    """

    http: httpx.AsyncClient
    base_url: str
    api_key: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    before_send: Callable[[], Awaitable[None]] | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    max_image_bytes: int = MAX_IMAGE_BYTES
    spool_bytes: int = SPOOL_BYTES
    download_timeout: float = 120.0
    # Called with each stored image's path, sha256 and format, where the file was written
    # (on the loop or in a thread): the runner keeps a link in its cache of earlier outputs.
    keep: Callable[[Path, str, str], None] | None = None
    _api_url: httpx.URL = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._api_url = httpx.URL(self.base_url.rstrip("/") + API_PATH)  # parsed once

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "[redacted]") if self.api_key else text

    async def generate(
        self, request_id: str, body: Mapping[str, Any], attempts: list[Attempt]
    ) -> Generation:
        """POST one body, retrying as the policy allows. Raises RequestFailed or RunStopped."""
        url = self._api_url
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        for attempt in range(self.policy.retries + 1):
            if self.before_send is not None:
                await self.before_send()
            started = time.monotonic()
            wait: float | None = None
            try:
                response = await self.http.post(url, content=content, headers=headers)
                raw = response.content
            except httpx.TimeoutException as exc:
                reason = f"timed out ({type(exc).__name__})"
                attempts.append(Attempt(None, time.monotonic() - started, reason))
            except httpx.TransportError as exc:
                reason = self.redact(f"connection error: {type(exc).__name__}: {exc}")
                attempts.append(Attempt(None, time.monotonic() - started, reason))
            else:
                status = response.status_code
                elapsed = time.monotonic() - started
                if status == 200:
                    attempts.append(Attempt(status, elapsed))
                    generation = parse_generation(request_id, raw)
                    return Generation(
                        generation.images,
                        generation.seed,
                        generation.credits,
                        generation.nsfw,
                        attempt + 1,
                    )
                reason = self.redact(f"HTTP {status}: {_api_message(raw)}")
                attempts.append(Attempt(status, elapsed, reason))
                if status == 401:
                    raise RunStopped(
                        401, f"the API refused the key (401): {reason}. Check AIMLAPI_KEY."
                    )
                if status == 403:
                    raise RunStopped(403, f"the API refused further work (403): {reason}")
                if status not in RETRYABLE:
                    raise RequestFailed(request_id, reason, status)
                wait = retry_after(response)
                if wait is not None and wait > self.policy.max_retry_after:
                    raise RequestFailed(
                        request_id,
                        f"{reason}; the server asks to retry after {wait:.0f} s, more than the "
                        f"{self.policy.max_retry_after:.0f} s this run waits",
                        status,
                    )
            if attempt == self.policy.retries:
                break
            await self.sleep(wait if wait is not None else self.policy.backoff(attempt, self.rng))
        raise RequestFailed(request_id, f"{reason} (after {self.policy.retries + 1} attempts)")

    async def fetch(
        self,
        request_id: str,
        delivery: Delivery,
        stem: Path,
        expect_format: str | None,
        expect_size: tuple[int, int],
    ) -> tuple[Path, ImageInfo, str, int]:
        """Store one delivered image as `stem` plus the extension of its format, after
        checking it; a download that breaks off is tried again as the retry policy allows
        (it costs no credit).

        Returns the file's path, its info, sha256 and size in bytes. The temporary file is
        checked — format, size, integrity — before it is renamed, so a bad image never lands.
        """
        for attempt in range(self.policy.retries + 1):
            try:
                return await self._fetch_once(
                    request_id, delivery, stem, expect_format, expect_size
                )
            except _Interrupted as exc:
                if attempt == self.policy.retries:
                    raise BadImage(request_id, f"{exc} (after {attempt + 1} attempts)") from None
                await self.sleep(self.policy.backoff(attempt, self.rng))
        raise AssertionError("unreachable")

    async def _fetch_once(
        self,
        request_id: str,
        delivery: Delivery,
        stem: Path,
        expect_format: str | None,
        expect_size: tuple[int, int],
    ) -> tuple[Path, ImageInfo, str, int]:
        digest = hashlib.sha256()
        spool = Spool(stem.parent, self.spool_bytes)
        downloaded = delivery.b64 is None and not (delivery.url or "").startswith("data:")
        try:
            if downloaded:
                # One deadline for the whole download: a server that trickles a byte at a time
                # never trips a per-read timeout.
                try:
                    await asyncio.wait_for(
                        self._download(request_id, delivery.url or "", spool, digest),
                        self.download_timeout,
                    )
                except asyncio.TimeoutError:
                    raise _Interrupted(
                        f"downloading the image took longer than {self.download_timeout:g} s"
                    ) from None
                delivery = Delivery()  # nothing left to decode
            args = (request_id, delivery, spool, digest, stem, expect_format, expect_size)
            if downloaded and spool.file is None:
                # A downloaded image held in memory (at most spool_bytes) is checked and
                # written here: a few system calls, where a trip to a thread costs more than
                # the work itself (GIL hand-offs with this loop; see bench/runner.py).
                return self._store(*args)
            # Larger files and inline images: file work in one trip to a thread, off the loop.
            return await asyncio.to_thread(self._store, *args)
        except BaseException:
            spool.discard()
            raise

    def _store(
        self,
        request_id: str,
        inline: Delivery,
        spool: Spool,
        digest: Any,
        stem: Path,
        expect_format: str | None,
        expect_size: tuple[int, int],
    ) -> tuple[Path, ImageInfo, str, int]:
        if inline.b64 is not None or inline.url:
            data = self._decode_inline(request_id, inline)
            spool.write(data)
            digest.update(data)
        # An image held in memory is checked there and written only if it passes.
        held = len(spool.buffer) if spool.file is None else None
        try:
            info = probe(spool.buffer if spool.file is None else spool.file.path)
        except ValueError as exc:
            raise BadImage(request_id, f"the delivered image is unusable: {exc}") from None
        if expect_format is not None and info.format != expect_format:
            raise BadImage(request_id, f"expected a {expect_format} image, got {info.format}")
        if (info.width, info.height) != expect_size:
            raise BadImage(
                request_id,
                f"expected {expect_size[0]}x{expect_size[1]}, got {info.width}x{info.height}",
            )
        # Not fsynced: a killed run loses nothing (the page cache outlives the process), and
        # after a power loss a damaged image fails its recorded hash and is redone. Per-file
        # fsync would cost more than the whole request on a fast API.
        file = spool.spill()
        size = held if held is not None else os.fstat(file.fd).st_size
        target = stem.with_name(stem.name + EXTENSIONS[info.format])
        try:
            file.commit(target, durable=False)
        except FileNotFoundError:
            # The temporary file or its folder was removed under us (a user clearing the
            # output folder mid-run): the image costs nothing to fetch again.
            raise _Interrupted("the image file vanished while it was written") from None
        if self.keep is not None:
            self.keep(target, digest.hexdigest(), info.format)
        return target, info, digest.hexdigest(), size

    def _decode_inline(self, request_id: str, delivery: Delivery) -> bytes:
        text = delivery.b64 if delivery.b64 is not None else (delivery.url or "").split(",", 1)[-1]
        if len(text) * 3 // 4 > self.max_image_bytes:
            raise BadImage(
                request_id, f"the inline image is larger than {self.max_image_bytes:,} bytes"
            )
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadImage(request_id, "the inline image is not valid base64") from None

    async def _download(self, request_id: str, url: str, spool: Spool, digest: Any) -> None:
        if not url.startswith(("https://", "http://")):
            scheme = url.split(":", 1)[0] if ":" in url else "(none)"
            raise BadImage(request_id, f"refusing to download an image URL with scheme {scheme!r}")
        written = 0
        try:
            # No Authorization header: image URLs are public, and the key must not leak to them.
            async with self.http.stream("GET", url, follow_redirects=True) as response:
                status = response.status_code
                if status in RETRYABLE:
                    raise _Interrupted(f"downloading the image gave HTTP {status}")
                if status != 200:
                    raise BadImage(request_id, f"downloading the image gave HTTP {status}", status)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_image_bytes:
                    raise BadImage(
                        request_id,
                        f"the image is {int(declared):,} bytes, more than "
                        f"the {self.max_image_bytes:,} allowed",
                    )
                async for chunk in response.aiter_raw():
                    written += len(chunk)
                    if written > self.max_image_bytes:
                        raise BadImage(
                            request_id,
                            f"the image is larger than the {self.max_image_bytes:,} bytes allowed",
                        )
                    if spool.must_spill:
                        await asyncio.to_thread(spool.spill)
                    spool.write(chunk)
                    digest.update(chunk)
                if declared and declared.isdigit() and written != int(declared):
                    raise _Interrupted(
                        f"the download was cut short: {written:,} of {int(declared):,} bytes"
                    )
        except httpx.TimeoutException:
            raise _Interrupted("downloading the image timed out") from None
        except httpx.HTTPError as exc:
            raise _Interrupted(
                f"downloading the image failed: {type(exc).__name__}: {self.redact(str(exc))}"
            ) from None


class _Interrupted(Exception):
    """A download broke off for a reason that may pass: worth another try."""
