"""Serving the emulator: on a free loopback port from a thread (tests, `run --emulator`), or
in the foreground (`flux-pipeline emulator`)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from .app import Emulator
from .config import EmulatorConfig


def _server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=1
    )
    return uvicorn.Server(config)


class EmulatorServer:
    """The emulator on a free loopback port, served from a background thread.

    with EmulatorServer() as server:
        client.post(server.url + "/v1/images/generations", ...)
        server.emulator.counters.requests
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.emulator = Emulator(config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = _server(self.emulator.app)
        self._thread = threading.Thread(target=self._serve, name="flux-emulator", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start(); a thread cannot raise to its parent
            self._error = exc

    def start(self) -> EmulatorServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the emulator did not start: {self._error!r}")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(config: EmulatorConfig, host: str, port: int, access_log: bool) -> None:
    """Serve in the foreground until interrupted (`flux-pipeline emulator`)."""
    import uvicorn

    uvicorn.run(
        Emulator(config).app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
