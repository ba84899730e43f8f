"""Helpers shared by the tests: file trees written inline, and the CLI run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from click.testing import CliRunner, Result

from flux_pipeline.cli import cli
from flux_pipeline.emulator import EmulatorServer


def build_file_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write each file (text dedented) under `root`; returns `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return root


def write_spec(root: Path, text: str, name: str = "spec.yaml") -> Path:
    build_file_tree(root, {name: text})
    return root / name


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process with stderr kept apart from stdout."""
    return CliRunner().invoke(
        cli, list(args), env=env, catch_exceptions=False, prog_name="flux-pipeline"
    )


def start_run(url: str, spec: Path, key: str) -> subprocess.Popen[str]:
    """`flux-pipeline run -j 1 SPEC` against `url`, in a process of its own (to signal it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flux_pipeline", "run", "--base-url", url, "-j", "1", str(spec)],
        env={**os.environ, "AIMLAPI_KEY": key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lock(lock_path: Path, entries: int, timeout: float = 30) -> None:
    """Return once the lock records at least `entries` requests (or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_path.exists() and len(json.loads(lock_path.read_text())["requests"]) >= entries:
            return
        time.sleep(0.01)


KEY = {"AIMLAPI_KEY": "test-key"}
#: Screenshots kept for whoever changes a layout (looked at, not asserted pixel by pixel).
ARTIFACTS = Path(os.environ.get("FLUX_PIPELINE_ARTIFACTS", "build/test-artifacts"))
GRID = """
    version: 1
    name: grid
    defaults: {{output_format: png, image_size: {{width: 256, height: 256}}}}
    jobs:
      - name: "{{{{ product }}}}-{{{{ style }}}}"
        prompt: {prompt}
        matrix:
          product: [kettle, toaster]
          style: {styles}
"""


def grid(
    root: Path, prompt: str = "A {{ style }} {{ product }}", styles: str = "[minimal, retro]"
) -> Path:
    """A product x style grid spec of 256x256 PNGs."""
    return write_spec(root, GRID.format(prompt=prompt, styles=styles))


def run_ok(server: EmulatorServer, spec: Path, *args: str) -> None:
    """`run SPEC` against the emulator, which must succeed."""
    result = invoke("run", "--base-url", server.url, *args, str(spec), env=KEY)
    assert result.exit_code == 0, result.stdout + result.stderr


def known_answers(output: Path) -> set[str]:
    """The requests a run's write-ahead record holds a stored result or a fetchable answer of
    (read here independently of the code under test)."""
    record = output / ".flux-cache" / "pending.jsonl"
    known = set()
    for line in record.read_text().splitlines() if record.exists() else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        images = event.get("generation", {}).get("images", [])
        if event["kind"] == "done" or not any(image["inline"] for image in images):
            known.add(event["id"])
    return known


def schnell_spec(root: Path, count: int, size: int = 64, name: str = "spec.yaml") -> Path:
    """`count` requests of flux/schnell (n0, n1, ...) at `size` square."""
    values = ", ".join(map(str, range(count)))
    return write_spec(
        root,
        f"""
        version: 1
        model: flux/schnell
        defaults: {{image_size: {{width: {size}, height: {size}}}}}
        jobs: [{{name: "n{{{{ i }}}}", prompt: "p {{{{ i }}}}", matrix: {{i: [{values}]}}}}]
        """,
        name,
    )


class ServedApp:
    """An ASGI app (with its lifespan) on a free loopback port, served from a thread."""

    def __init__(self, app: object) -> None:
        import socket
        import threading

        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self._thread.start()
        while not self._server.started:
            assert self._thread.is_alive(), "the app did not start"
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
