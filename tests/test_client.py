"""The HTTP client's pieces: response shapes, Retry-After, pacing."""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.errors import BadImage, BadResponse
from flux_pipeline.provider.client import (
    Action,
    ApiClient,
    CookielessClient,
    RetryPolicy,
    classify,
    retry_after,
)
from flux_pipeline.provider.responses import parse_generation
from flux_pipeline.store.atomic import sha256_file
from flux_pipeline.store.fetcher import ImageFetcher


def test_data_shape_with_url_or_base64_and_credits() -> None:
    generation = parse_generation(
        "r",
        b'{"data": [{"url": "https://x/a.png", "b64_json": null}, {"b64_json": "AAAA"}],'
        b' "meta": {"usage": {"credits_used": 42}}}',
    )
    assert [d.url for d in generation.images] == ["https://x/a.png", None]
    assert generation.images[1].b64 == "AAAA"
    assert generation.credits == 42 and generation.seed is None


def test_images_shape_with_seed_and_nsfw_flags() -> None:
    generation = parse_generation(
        "r",
        b'{"images": [{"url": "https://x/a.jpg", "width": 1024, "height": 320,'
        b' "content_type": "image/jpeg"}], "timings": {}, "seed": 711728385,'
        b' "has_nsfw_concepts": [false], "prompt": "p"}',
    )
    assert generation.images[0].width == 1024
    assert generation.seed == 711728385 and generation.nsfw == (False,)


def test_tokens_used_counts_as_credits() -> None:
    generation = parse_generation(
        "r", b'{"data": [{"url": "https://x/a"}], "meta": {"usage": {"tokens_used": 7}}}'
    )
    assert generation.credits == 7


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"<html>502 Bad Gateway</html>", "the answer is not JSON: '<html>502 Bad Gateway</html>'"),
        (b'{"result": "ok"}', "holds no usable images"),
        (b'{"data": []}', "holds no usable images"),
        (b'{"data": [{"url": null, "b64_json": null}]}', "holds no usable images"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_unusable_answers_name_the_request_and_show_the_body(raw: bytes, why: str) -> None:
    with pytest.raises(BadResponse) as info:
        parse_generation("kettle-retro", raw)
    assert str(info.value).startswith("kettle-retro: ")
    assert why in str(info.value)


def answer(**headers: str) -> httpx.Headers:
    return httpx.Response(429, headers=headers).headers


def test_retry_after_in_seconds_milliseconds_and_dates() -> None:
    assert retry_after(answer()) is None
    assert retry_after(answer(**{"Retry-After": "0"})) == 0
    assert retry_after(answer(**{"Retry-After": "1.5"})) == 1.5
    assert retry_after(answer(**{"Retry-After": "garbage"})) is None
    assert retry_after(answer(**{"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (retry_after(answer(**{"Retry-After": date}), now=now) or 0) <= 31
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after(answer(**{"Retry-After": past}), now=now) == 0


@pytest.mark.parametrize("mangle", [None, "not-image", "wrong-size"])
def test_an_image_held_in_memory_and_one_streamed_to_disk_are_stored_alike(
    tmp_path: Path, emulator: EmulatorServer, mangle: str | None
) -> None:
    """Small downloads are checked in memory and written on the event loop; larger ones
    stream into a temporary file and are checked in a thread. Both give the same file, or
    the same refusal with nothing left behind."""
    emulator.emulator.configure(mangle=mangle)
    body = {"model": "flux/schnell", "prompt": "p", "image_size": {"width": 256, "height": 128}}

    async def go() -> list[tuple[Path, str, int] | str]:
        async with httpx.AsyncClient() as http:
            generation = await ApiClient(http, emulator.url, "k").generate("r", body, [])
            outcomes: list[tuple[Path, str, int] | str] = []
            for spool_bytes, folder in ((1 << 20, "memory"), (64, "disk")):
                fetcher = ImageFetcher(http, spool_bytes=spool_bytes)
                stem = tmp_path / folder / "r"
                stem.parent.mkdir()
                try:
                    image = await fetcher.fetch("r", generation.images[0], stem, "png", (256, 128))
                except BadImage as exc:
                    outcomes.append(exc.reason)
                else:
                    size = (128, 64) if mangle == "wrong-size" else (256, 128)
                    assert (image.width, image.height, image.format) == (*size, "png")
                    assert image.mismatch == (
                        "asked for 256x128, got 128x64" if size[0] == 128 else ""
                    )
                    assert sha256_file(image.path) == image.sha256
                    assert image.path.stat().st_size == image.bytes
                    outcomes.append(
                        (image.path.relative_to(stem.parent), image.sha256, image.bytes)
                    )
            return outcomes

    in_memory, on_disk = asyncio.run(go())
    assert in_memory == on_disk
    assert isinstance(in_memory, str) == (mangle == "not-image")
    if mangle is None:
        with Image.open(tmp_path / "disk" / "r.png") as image:
            assert image.size == (256, 128)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == ([] if mangle == "not-image" else ["r.png", "r.png"])


def test_the_run_keeps_no_cookies() -> None:
    """A cookie the API sets is not sent anywhere else (image hosts included)."""
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=secret; Path=/"})

    async def go() -> None:
        async with CookielessClient(transport=httpx.MockTransport(answer)) as client:
            await client.post("https://api.example/v1/images/generations")
            await client.get("https://api.example/files/a.png")
            await client.get("https://cdn.example/a.png")

    asyncio.run(go())
    assert seen == [None, None, None]


@pytest.mark.parametrize(
    ("status", "headers", "body", "action", "reason", "wait"),
    [
        (
            401,
            {},
            b'{"message": "bad key"}',
            Action.STOP,
            "refused the key (401): HTTP 401: bad key",
            None,
        ),
        (403, {}, b'{"message": "no credits"}', Action.STOP, "refused further work (403)", None),
        (
            400,
            {},
            b'{"message": "Body validation error", "details": ["x"]}',
            Action.FAIL,
            "HTTP 400: Body validation error: x",
            None,
        ),
        (404, {}, b"not json", Action.FAIL, "HTTP 404: 'not json'", None),
        (429, {"Retry-After": "2"}, b"{}", Action.THROTTLE, "HTTP 429", 2.0),
        (429, {}, b"{}", Action.THROTTLE, "HTTP 429", None),
        (429, {}, b'{"message": "Quota exceeded"}', Action.STOP, "quota is spent (429)", None),
        (
            429,
            {},
            b'{"error": {"message": "Insufficient balance"}}',
            Action.STOP,
            "quota",
            None,
        ),
        (503, {}, b'{"message": "Service overloaded"}', Action.THROTTLE, "HTTP 503", None),
        (503, {}, b'{"message": "Internal"}', Action.RETRY, "HTTP 503", None),
        (
            429,
            {"Retry-After": "3600"},
            b"{}",
            Action.FAIL,
            "retry after 3600 s, more than the 120 s",
            None,
        ),
        (503, {"retry-after-ms": "1500"}, b"{}", Action.RETRY, "HTTP 503", 1.5),
        (408, {}, b"", Action.RETRY, "HTTP 408", None),
        (409, {}, b"", Action.RETRY, "HTTP 409", None),
    ],
)
def test_classify_decides_by_status_headers_and_body(
    status: int,
    headers: dict[str, str],
    body: bytes,
    action: Action,
    reason: str,
    wait: float | None,
) -> None:
    verdict = classify(status, httpx.Headers(headers), body, RetryPolicy())
    assert verdict.action is action
    assert reason in verdict.reason
    assert verdict.wait == wait
