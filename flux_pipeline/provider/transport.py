"""The HTTP transport under the run's `httpx.AsyncClient`: httpx-aiohttp's, with aiohttp's
exceptions mapped to httpx's where they enter (as httpx maps httpcore's in
`_transports/default.py`), so that this is the one module that imports aiohttp.

The mapping keeps the one distinction money depends on: whether the request can have reached
the provider. A failure to connect (DNS, a refused connection, a connect timeout, TLS) proves
nothing was sent: `httpx.ConnectError` or `httpx.ConnectTimeout`. A read timeout or a connection
dropped after the body went out may have been billed: `httpx.ReadTimeout`, `httpx.ReadError`,
`httpx.RemoteProtocolError`. (httpx-aiohttp's own map calls a dropped connection a
`ConnectTimeout`, which would retry a request the provider may have billed.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# The most specific class first: the first match wins.
_MAP: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # DNS, refused, TLS, proxy: not sent
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),  # not sent
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),  # sent: no answer in time
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),  # sent: dropped
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),  # anything else: it may have been sent
)


def map_error(exc: BaseException) -> BaseException:
    """httpx's exception for what aiohttp raised (also under httpx-aiohttp's own mapping,
    whose cause is aiohttp's); anything else as it is."""
    original = exc
    if isinstance(exc, httpx.TransportError) and isinstance(exc.__cause__, aiohttp.ClientError):
        original = exc.__cause__
    for source, target in _MAP:
        if isinstance(original, source):
            mapped = target(str(original) or type(original).__name__)
            mapped.__cause__ = original
            return mapped
    return exc


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose read errors are mapped too."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except (aiohttp.ClientError, httpx.TransportError) as exc:
            mapped = map_error(exc)
            raise mapped from mapped.__cause__

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        except (aiohttp.ClientError, httpx.TransportError) as exc:
            mapped = map_error(exc)
            raise mapped from mapped.__cause__


class MappedAiohttpTransport(httpx.AsyncBaseTransport):
    """httpx-aiohttp's transport, raising only httpx's exceptions."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._inner = AiohttpTransport(limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except (aiohttp.ClientError, httpx.TransportError) as exc:
            mapped = map_error(exc)
            raise mapped from mapped.__cause__
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_MappedStream(response.stream),
            request=request,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()
