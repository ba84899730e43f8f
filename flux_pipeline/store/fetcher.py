"""Fetching one delivered image: download (or decode), check, and store it atomically.

An image is checked — format, size, integrity — before it gets its final name, so a bad image
never lands; a download that breaks off is tried again (it costs no credit). Small images are
held in memory and checked there; larger ones are streamed to a temporary file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..errors import BadImage, plural
from ..provider.client import RETRYABLE, TRANSPORT_ERRORS, RetryPolicy
from ..provider.images import EXTENSIONS, probe
from ..provider.responses import Delivery
from .atomic import Spool
from .lock import Output

MAX_IMAGE_BYTES = 64 * 1024 * 1024
DOWNLOAD_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, *TRANSPORT_ERRORS)
SPOOL_BYTES = 256 * 1024  # an image smaller than this is held in memory until it is checked
IDENTITY = {"Accept-Encoding": "identity"}


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image stored under its final name, with what the lock records of it."""

    path: Path
    sha256: str
    bytes: int
    width: int
    height: int
    format: str
    mismatch: str = ""  # how it differs from what was asked (it is kept all the same)

    def output(self, lock_path: Callable[[Path], str]) -> Output:
        """What the lock records of this image, its path as `lock_path` names it."""
        return Output(
            path=lock_path(self.path),
            sha256=self.sha256,
            bytes=self.bytes,
            width=self.width,
            height=self.height,
            format=self.format,
            mismatch=self.mismatch,
        )


@dataclass
class ImageFetcher:
    """Fetches delivered images with the run's HTTP client, retry policy and limits."""

    http: httpx.AsyncClient
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    redact: Callable[[str], str] = lambda text: text
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    max_image_bytes: int = MAX_IMAGE_BYTES
    spool_bytes: int = SPOOL_BYTES
    download_timeout: float = 120.0

    async def fetch(
        self,
        request_id: str,
        delivery: Delivery,
        stem: Path,
        expect_format: str | None,
        expect_size: tuple[int, int] | None,
    ) -> StoredImage:
        """Store one delivered image as `stem` plus the extension of its format, after
        checking it; a download that breaks off is tried again as the retry policy allows
        (it costs no credit).

        Returns the stored image: its path, sha256, size and what it is. The temporary file is
        checked before it is renamed, so an unusable image never lands. A sound image of
        another format or size than `expect_*` is paid for: it is stored all the same, and
        `mismatch` says how it differs.
        """
        for attempt in range(self.policy.retries + 1):
            try:
                return await self._fetch_once(
                    request_id, delivery, stem, expect_format, expect_size
                )
            except _Interrupted as exc:
                if attempt == self.policy.retries:
                    tried = plural(attempt + 1, "attempt")
                    raise BadImage(request_id, f"{exc} (after {tried})") from None
                await self.sleep(self.policy.backoff(attempt, self.rng))
        raise AssertionError("unreachable")

    async def _fetch_once(
        self,
        request_id: str,
        delivery: Delivery,
        stem: Path,
        expect_format: str | None,
        expect_size: tuple[int, int] | None,
    ) -> StoredImage:
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
        expect_size: tuple[int, int] | None,
    ) -> StoredImage:
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
        differences = []
        if expect_format is not None and info.format != expect_format:
            differences.append(f"asked for {expect_format}, got {info.format}")
        if expect_size is not None and (info.width, info.height) != expect_size:
            asked = f"{expect_size[0]}x{expect_size[1]}"
            differences.append(f"asked for {asked}, got {info.width}x{info.height}")
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
        return StoredImage(
            target,
            digest.hexdigest(),
            size,
            info.width,
            info.height,
            info.format,
            "; ".join(differences),
        )

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
            # The file's own bytes are wanted: no content encoding, and one a server applies
            # anyway is decoded (what is hashed and checked is what lands on disk).
            async with self.http.stream(
                "GET", url, follow_redirects=True, headers=IDENTITY
            ) as response:
                declared = self._declared_size(request_id, response)
                async for chunk in response.aiter_bytes():
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
                if declared is not None and written != declared:
                    raise _Interrupted(
                        f"the download was cut short: {written:,} of {declared:,} bytes"
                    )
        except httpx.TimeoutException:
            raise _Interrupted("downloading the image timed out") from None
        except DOWNLOAD_ERRORS as exc:
            raise _Interrupted(
                f"downloading the image failed: {type(exc).__name__}: {self.redact(str(exc))}"
            ) from None

    def _declared_size(self, request_id: str, response: httpx.Response) -> int | None:
        """The size the download's answer declares, after refusing an answer that is no
        image (a status worth retrying raises _Interrupted) or one declared too large."""
        status = response.status_code
        if status in RETRYABLE:
            raise _Interrupted(f"downloading the image gave HTTP {status}")
        if status != 200:
            raise BadImage(request_id, f"downloading the image gave HTTP {status}", status)
        # Content-Length counts the encoded bytes: compared only when there is no encoding.
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        declared = None if encoded else response.headers.get("content-length")
        if not (declared and declared.isdigit()):
            return None
        if int(declared) > self.max_image_bytes:
            raise BadImage(
                request_id,
                f"the image is {int(declared):,} bytes, more than "
                f"the {self.max_image_bytes:,} allowed",
            )
        return int(declared)


class _Interrupted(Exception):
    """A download broke off for a reason that may pass: worth another try."""
