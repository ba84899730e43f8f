"""The input images of an edit, read as the API reads them."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ..provider.images import probe
from .images import indexed_png

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class Source:
    """An input image the emulator received (or fetched)."""

    data: bytes
    width: int
    height: int


async def read_input(value: str) -> Source:
    """An input image as the API would read it: a `data:` URI of an image, or a URL. A
    loopback URL is fetched; another host's is not (the emulator is offline): a stand-in
    picture is drawn from the URL. ValueError if it cannot be read."""
    if value.startswith("data:"):
        header, _, text = value.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("an input data: URI must be base64")
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:
            raise ValueError("an input data: URI is not valid base64") from None
    elif urlsplit(value).hostname in LOOPBACK:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(value)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise ValueError(f"cannot fetch the input {value}: {exc}") from None
        data = answer.content
    elif value.startswith(("https://", "http://")):
        digest = hashlib.sha256(value.encode()).digest()
        data = indexed_png(512, 512, digest, value[-60:])
    else:
        raise ValueError(f"{value[:40]!r} is neither a URL nor a data: URI")
    try:
        info = probe(data)
    except ValueError as exc:
        raise ValueError(f"an input is not an image: {exc}") from None
    return Source(data, info.width, info.height)
