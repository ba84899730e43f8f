"""The emulator: the API as its documents describe it, deterministic, with faults on cue."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from strategies import all_models, from_schema, models, required_inputs

from flux_pipeline.emulator import EmulatorConfig, EmulatorServer, credits_for, encode_png
from flux_pipeline.provider.registry import API_PATH, PRESETS, registry

ERROR_KEYS = {"message", "path", "requestId", "statusCode", "timestamp"}
AUTH = {"Authorization": "Bearer test-key"}

#: The `images` shape, as the worked example on the provider's page shows it.
IMAGES_SHAPE = {
    "type": "object",
    "required": ["images", "seed", "has_nsfw_concepts", "prompt", "timings"],
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["url", "width", "height", "content_type"],
                "properties": {
                    "url": {"type": "string"},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "content_type": {"enum": ["image/jpeg", "image/png", "image/webp"]},
                },
            },
        },
        "seed": {"type": "integer"},
        "has_nsfw_concepts": {"type": "array", "items": {"type": "boolean"}},
        "prompt": {"type": "string"},
        "timings": {"type": "object"},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def post(
    http: httpx.Client, server: EmulatorServer, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return http.post(server.url + API_PATH, json=body, headers=AUTH if headers is None else headers)


def fetch_images(http: httpx.Client, answer: dict[str, Any]) -> list[bytes]:
    items = answer.get("data") or answer["images"]
    out = []
    for item in items:
        url = item.get("url")
        if url and url.startswith("data:"):
            out.append(base64.b64decode(url.split(",", 1)[1]))
        elif url:
            out.append(http.get(url).content)
        else:
            out.append(base64.b64decode(item["b64_json"]))
    return out


# ----- contract ------------------------------------------------------------------------------

valid_bodies = all_models.flatmap(lambda m: from_schema(registry()[m].request_schema))


@settings(max_examples=60)
@given(body=valid_bodies, shape=st.sampled_from(["data", "images"]))
def test_valid_bodies_get_the_documented_answer(
    server: EmulatorServer, http: httpx.Client, body: dict[str, Any], shape: str
) -> None:
    server.emulator.configure(shape=shape, delivery="url")
    response = post(http, server, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    if shape == "data":
        jsonschema.validate(answer, registry()[body["model"]].response_schema)
        assert answer["meta"]["usage"]["credits_used"] > 0
        items = answer["data"]
    else:
        jsonschema.validate(answer, IMAGES_SHAPE)
        items = answer["images"]
        assert answer["prompt"] == body["prompt"]
        if "seed" in body:
            assert answer["seed"] == body["seed"]
    assert len(items) == body.get("num_images", 1)


MUTATIONS: list[tuple[str, Any]] = [
    ("prompt", None),
    ("prompt", "x" * 4001),
    ("num_images", 0),
    ("num_images", 9),
    ("seed", 0),
    ("num_image", 2),
    ("image_size", {"width": 1000, "height": 768}),
    ("image_size", "huge"),
    ("model", "flux-ultra"),
]


@settings(max_examples=40)
@given(body=valid_bodies, mutation=st.sampled_from(MUTATIONS))
def test_invalid_bodies_get_400_in_the_providers_error_shape(
    server: EmulatorServer,
    http: httpx.Client,
    body: dict[str, Any],
    mutation: tuple[str, Any],
) -> None:
    key, value = mutation
    bad = {**body}
    if value is None:
        bad.pop(key)
    else:
        bad[key] = value
    if key == "image_size" and "image_size" not in registry()[body["model"]].fields:
        pass  # still invalid: the model has no image_size at all
    response = post(http, server, bad)
    assert response.status_code == 400
    answer = response.json()
    assert set(answer) >= ERROR_KEYS
    assert answer["statusCode"] == 400
    assert answer["message"] == "Body validation error"
    assert answer["details"]


def test_missing_or_empty_key_is_401(server: EmulatorServer, http: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        response = post(http, server, {"model": "flux-pro", "prompt": "p"}, headers)
        assert response.status_code == 401
        assert set(response.json()) >= ERROR_KEYS


def test_bodies_that_are_not_json_objects_are_400(
    server: EmulatorServer, http: httpx.Client
) -> None:
    for content in (b"not json", b"[1, 2]"):
        response = http.post(server.url + API_PATH, content=content, headers=AUTH)
        assert response.status_code == 400


def test_unknown_paths_are_404_in_the_providers_shape(
    server: EmulatorServer, http: httpx.Client
) -> None:
    response = http.get(server.url + "/v1/nothing")
    assert response.status_code == 404
    assert response.json()["statusCode"] == 404


# ----- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["url", "b64"])
@pytest.mark.parametrize("shape", ["data", "images"])
def test_same_request_gives_the_same_bytes(
    server: EmulatorServer, http: httpx.Client, shape: str, delivery: str
) -> None:
    server.emulator.configure(shape=shape, delivery=delivery)
    body = {"model": "flux-pro", "prompt": "a kettle", "seed": 42, "image_size": "square"}
    first = fetch_images(http, post(http, server, body).json())
    second = fetch_images(http, post(http, server, body).json())
    other = fetch_images(http, post(http, server, {**body, "seed": 43}).json())
    assert first == second
    assert first != other


def test_shapes_and_deliveries_give_the_same_bytes(
    server: EmulatorServer, http: httpx.Client
) -> None:
    body = {"model": "flux/dev", "prompt": "a lamp", "seed": 5, "num_images": 2}
    seen = []
    for shape in ("data", "images"):
        for delivery in ("url", "b64"):
            server.emulator.configure(shape=shape, delivery=delivery)
            seen.append(fetch_images(http, post(http, server, body).json()))
    assert all(images == seen[0] for images in seen)
    assert seen[0][0] != seen[0][1]  # each image of a request differs


def test_a_seed_is_drawn_and_returned_when_the_request_has_none(
    server: EmulatorServer, http: httpx.Client
) -> None:
    server.emulator.configure(shape="images", delivery="url")
    answer = post(http, server, {"model": "flux-pro", "prompt": "p"}).json()
    assert isinstance(answer["seed"], int) and answer["seed"] >= 1


def decoded(data: bytes) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return (image.format or "").lower(), image.width, image.height


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_presets_give_images_of_their_size_and_format(
    server: EmulatorServer, http: httpx.Client, preset: str, fmt: str
) -> None:
    server.emulator.configure(shape="data", delivery="b64")
    body = {"model": "flux-pro", "prompt": "p", "image_size": preset, "output_format": fmt}
    (image,) = fetch_images(http, post(http, server, body).json())
    assert decoded(image) == (fmt, *PRESETS[preset])


@settings(max_examples=15)
@given(model=models, data=st.data())
def test_random_sizes_give_images_of_that_size(
    server: EmulatorServer, http: httpx.Client, model: str, data: st.DataObject
) -> None:
    low, high = registry()[model].size_range or (0, 0)
    side = st.integers(low // 32 + (low % 32 > 0), high // 32).map(lambda k: k * 32)
    width, height = data.draw(side), data.draw(side)
    server.emulator.configure(shape="images", delivery="url")
    size = {"width": width, "height": height}
    body = {"model": model, "prompt": "p", "image_size": size, **required_inputs(model)}
    (image,) = fetch_images(http, post(http, server, body).json())
    fmt = registry()[model].output_format(body) or "png"
    assert decoded(image) == (fmt, width, height)


def test_ultra_gives_about_four_megapixels(server: EmulatorServer, http: httpx.Client) -> None:
    server.emulator.configure(shape="data", delivery="b64")
    body = {"model": "flux-pro/v1.1-ultra", "prompt": "p", "aspect_ratio": "21:9"}
    (image,) = fetch_images(http, post(http, server, body).json())
    assert decoded(image) == ("jpeg", 3136, 1344)


# ----- faults, asserted through the counters ----------------------------------------------------

BODY = {"model": "flux-pro", "prompt": "p", "image_size": "square"}


@pytest.fixture
def fresh() -> Iterator[EmulatorServer]:
    with EmulatorServer() as running:
        yield running


def test_counters_count_every_request_by_outcome(fresh: EmulatorServer, http: httpx.Client) -> None:
    post(http, fresh, BODY)
    post(http, fresh, {**BODY, "num_images": 3})
    post(http, fresh, {**BODY, "seed": 0})
    post(http, fresh, BODY, headers={})
    snap = fresh.emulator.counters.snapshot()
    assert snap["requests"] == 4
    assert snap["statuses"] == {200: 2, 400: 1, 401: 1}
    assert snap["generated"] == 4


def test_latency_delays_each_answer(fresh: EmulatorServer, http: httpx.Client) -> None:
    fresh.emulator.configure(latency=(0.2, 0.2))
    started = time.monotonic()
    post(http, fresh, BODY)
    assert time.monotonic() - started >= 0.2


def test_fail_rate_answers_5xx_and_is_repeatable(http: httpx.Client) -> None:
    outcomes = []
    for _ in range(2):
        with EmulatorServer(EmulatorConfig(fail_rate=0.5, seed=7)) as running:
            outcomes.append([post(http, running, BODY).status_code for _ in range(40)])
            snap = running.emulator.counters.snapshot()
            assert sum(snap["statuses"].get(s, 0) for s in (500, 502, 503, 504)) == sum(
                s != 200 for s in outcomes[-1]
            )
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) - {200} <= {500, 502, 503, 504}
    assert 5 < sum(s != 200 for s in outcomes[0]) < 35
    assert len(set(outcomes[0]) - {200}) >= 2  # a mix of 5xx statuses


def test_rate_limit_answers_429_with_retry_after(fresh: EmulatorServer, http: httpx.Client) -> None:
    fresh.emulator.configure(rate_limit=2.0)
    statuses = [post(http, fresh, BODY) for _ in range(6)]
    limited = [r for r in statuses if r.status_code == 429]
    assert len(limited) >= 3
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert fresh.emulator.counters.snapshot()["statuses"][429] == len(limited)


def test_truncated_downloads_are_cut_short_under_a_full_length(
    fresh: EmulatorServer, http: httpx.Client
) -> None:
    fresh.emulator.configure(truncate_rate=1.0)
    url = post(http, fresh, BODY).json()["data"][0]["url"]
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(url)
    assert fresh.emulator.counters.snapshot()["downloads"] == {"truncated": 1}


def test_slow_downloads_trickle(fresh: EmulatorServer, http: httpx.Client) -> None:
    fresh.emulator.configure(slow_download=0.3)
    url = post(http, fresh, BODY).json()["data"][0]["url"]
    started = time.monotonic()
    assert decoded(http.get(url).content)[1:] == (512, 512)
    assert time.monotonic() - started >= 0.3


def test_credits_run_out_with_403(fresh: EmulatorServer, http: httpx.Client) -> None:
    per_image = credits_for("flux-pro", 512, 512)
    fresh.emulator.configure(credits=3 * per_image)
    statuses = [post(http, fresh, BODY).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 403, 403]
    forbidden = post(http, fresh, BODY).json()
    assert forbidden["statusCode"] == 403 and "credits" in forbidden["message"]
    assert fresh.emulator.counters.snapshot()["generated"] == 3


def test_helper_starts_and_stops_cleanly() -> None:
    server = EmulatorServer().start()
    url = server.url
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + API_PATH, json=BODY, headers=AUTH)


@given(st.data(), st.integers(1, 70), st.integers(1, 70))
def test_the_emulators_png_writer_gives_back_every_pixel(
    data: st.DataObject, width: int, height: int
) -> None:
    pixels = data.draw(st.binary(min_size=width * height * 3, max_size=width * height * 3))
    with Image.open(io.BytesIO(encode_png(width, height, pixels))) as image:
        image.verify()
    with Image.open(io.BytesIO(encode_png(width, height, pixels))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (width, height))
        assert image.tobytes() == pixels
