"""Answers that are not what the documents promise: each request fails with a clear reason
naming it, no file lands, the lock records nothing for it, and the run goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import invoke, write_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.atomic import TEMP_PREFIX

SPEC = """
    version: 1
    name: r
    defaults: {image_size: {width: 256, height: 256}, output_format: png}
    jobs:
      - {name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1]}}
"""

CASES = {
    "html": ("url", "n0: the answer is not JSON: '<html><body>502 Bad Gateway</body></html>'"),
    "no-images": ("url", "n0: the answer holds no usable images (data[] or images[])"),
    "empty": ("url", "n0: the answer holds no usable images (data[] or images[])"),
    "bad-b64": ("b64", "n0: the inline image is not valid base64"),
    "not-image": ("url", "n0: the delivered image is unusable: cannot identify image file"),
    "bomb": ("url", "n0: the delivered image is unusable: Image size (10000000000 pixels)"),
}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("mangle", sorted(CASES))
def test_bad_answers_fail_clearly_and_leave_nothing(
    tmp_path: Path, emulator: EmulatorServer, mangle: str, transport: str
) -> None:
    delivery, reason = CASES[mangle]
    emulator.emulator.configure(mangle=mangle, delivery=delivery)
    spec = write_spec(tmp_path, SPEC)
    result = invoke(
        "run",
        "--base-url",
        emulator.url,
        "--transport",
        transport,
        str(spec),
        env={"AIMLAPI_KEY": "k"},
    )
    assert result.exit_code == 3
    assert "Traceback" not in result.stdout + result.stderr
    failed = [line.strip() for line in result.stdout.splitlines() if "failed n0" in line]
    assert failed and failed[0].startswith(f"failed {reason}"), result.stdout
    assert not spec.with_name("spec.lock.json").exists()  # nothing recorded: no empty lock
    assert not [p for p in (tmp_path / "out").rglob("*") if p.suffix in (".png", ".jpg")]
    assert not list(tmp_path.rglob(TEMP_PREFIX + "*"))
    assert emulator.emulator.counters.snapshot()["requests"] == 2  # not retried: not transient


def test_an_image_past_the_size_cap_is_refused(tmp_path: Path, emulator: EmulatorServer) -> None:
    import asyncio

    import httpx

    from flux_pipeline.errors import BadImage
    from flux_pipeline.provider.client import ApiClient
    from flux_pipeline.store.fetcher import ImageFetcher

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            client = ApiClient(http, emulator.url, "k")
            fetcher = ImageFetcher(http, max_image_bytes=1000)
            body = {"model": "flux-pro", "prompt": "p", "image_size": "square"}
            generation = await client.generate("big", body, [])
            with pytest.raises(BadImage, match="more than the 1,000 allowed"):
                await fetcher.fetch("big", generation.images[0], tmp_path / "big", None, (512, 512))

    asyncio.run(go())
    assert list(tmp_path.iterdir()) == []
