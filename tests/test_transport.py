"""The transport maps its library's errors where they enter, keeping apart what cannot have
reached the provider (a failure to connect) from what may have been billed (no answer after
sending); and a run works in-process through any httpx transport."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from helpers import schnell_spec

import flux_pipeline
from flux_pipeline.emulator import Emulator, EmulatorConfig
from flux_pipeline.provider.client import make_http_client


def test_a_run_works_in_process_through_an_asgi_transport(tmp_path: Path) -> None:
    emulator = Emulator(EmulatorConfig())
    spec = schnell_spec(tmp_path, count=3)
    result = flux_pipeline.run(
        spec,
        base_url="http://emulator.test",
        api_key="k",
        transport=httpx.ASGITransport(app=emulator.app),
    )
    assert result.ok, result.results
    assert emulator.counters.snapshot()["requests"] == 3
    assert all(p.exists() for paths in result.outputs().values() for p in paths)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _post(url: str, timeout: float = 5.0) -> BaseException:
    async with make_http_client(1, timeout, "aiohttp") as http:
        with pytest.raises(httpx.TransportError) as caught:
            await http.post(url, content=b"{}")
    return caught.value


def test_a_refused_connection_is_a_connect_error_that_names_its_cause() -> None:
    error = asyncio.run(_post(f"http://127.0.0.1:{_closed_port()}/"))
    assert isinstance(error, httpx.ConnectError)
    causes = []
    seen: BaseException | None = error
    while seen is not None:
        causes.append(seen)
        seen = seen.__cause__
    assert any(isinstance(c, ConnectionRefusedError) for c in causes)


def _post_to_a_silent_server(behaviour: str) -> BaseException:
    """POST to a server that reads the request, then hangs up or never answers."""

    async def main() -> BaseException:
        done = asyncio.Event()
        handlers: list[asyncio.Task[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            await reader.read(65536)
            if behaviour != "hang up":
                await done.wait()  # until the client has given up
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            error = await _post(f"http://127.0.0.1:{port}/", timeout=0.3)
            done.set()
            await asyncio.gather(*handlers, return_exceptions=True)
        return error

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("hang up", httpx.RemoteProtocolError), ("no answer", httpx.ReadTimeout)],
)
def test_a_request_sent_without_an_answer_is_not_a_connect_error(
    behaviour: str, expected: type[Exception]
) -> None:
    error = _post_to_a_silent_server(behaviour)
    assert isinstance(error, expected), repr(error)
    assert not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
