"""The HTTP client's pieces: response shapes, Retry-After, pacing."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from flux_pipeline.client import parse_generation, retry_after
from flux_pipeline.errors import BadResponse
from flux_pipeline.runner import Pacer, Rate


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


def answer(**headers: str) -> httpx.Response:
    return httpx.Response(429, headers=headers)


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


@pytest.mark.parametrize(("text", "per_second"), [("10/s", 10), ("120/m", 2), ("0.5/s", 0.5)])
def test_rates(text: str, per_second: float) -> None:
    assert Rate.parse(text).per_second == per_second


@pytest.mark.parametrize("text", ["10", "fast", "0/s", "-1/s", "10/h"])
def test_bad_rates_are_clear_errors(text: str) -> None:
    with pytest.raises(Exception, match="--rate must look like 10/s or 100/m"):
        Rate.parse(text)


def test_pacer_spaces_starts_evenly_for_all_workers() -> None:
    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(Rate(4), clock=lambda: clock[0], sleep=sleep)

    async def go() -> None:
        await asyncio.gather(*(pacer.wait() for _ in range(5)))

    asyncio.run(go())
    assert slept == [0.25, 0.5, 0.75, 1.0]
