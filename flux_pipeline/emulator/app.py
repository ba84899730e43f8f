"""The emulator's ASGI application: the generation endpoint, billing at receipt, and the
image files it serves."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..language.bodies import body_hash
from ..provider.inputs import input_values
from ..provider.registry import API_PATH, Model, check_body, get_model
from .config import CHUNK, FAULT_STATUSES, Counters, EmulatorConfig, credits_for
from .images import Picture
from .inputs import Source, read_input

USD_PER_CREDIT = 0.025  # the emulator's figure, not the provider's


def error_body(status: int, message: str, path: str, **extra: Any) -> dict[str, Any]:
    """An error in the provider's documented shape."""
    return {
        "message": message,
        "path": path,
        "requestId": str(uuid.uuid4()),
        "statusCode": status,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        **extra,
    }


@dataclass(frozen=True, slots=True)
class _Order:
    """What a valid body asks for, worked out once: its model, size, images and cost."""

    model: Model
    width: int
    height: int
    count: int
    cost: float
    source: bytes | None = None  # the first input image, for an edit

    @classmethod
    def of(cls, body: dict[str, Any], price_factor: float, source: Source | None) -> _Order:
        model = get_model(body["model"])
        assert model is not None  # check_body passed
        width, height = model.likely_size(body, (source.width, source.height) if source else None)
        count = model.num_images(body)
        cost = count * credits_for(model.name, width, height, price_factor)
        return cls(model, width, height, count, cost, source.data if source else None)


class Emulator:
    """The emulator's state and its ASGI app (`.app`)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.counters = Counters()
        self._random = random.Random(self.config.seed)
        self._files: dict[str, Picture] = {}
        self._spent = 0.0
        self._in_flight = 0  # billed generations not yet answered
        self._family_in_flight: Counter[str] = Counter()  # the same, by capped family
        self.most_in_flight: Counter[str] = Counter()  # the most a family had at once
        self._tokens = max(self.config.rate_limit or 0.0, 1.0)
        self._refilled = time.monotonic()
        self.app = Starlette(
            routes=[
                Route(API_PATH, self._generate, methods=["POST"]),
                Route("/files/{name}", self._download, methods=["GET"], name="file"),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    def configure(self, **changes: Any) -> None:
        """Change switches while running, e.g. `emulator.configure(fail_rate=0.3)`."""
        self.config = replace(self.config, **changes)
        if "seed" in changes:
            self._random.seed(self.config.seed)
        if "credits" in changes:
            self._spent = 0.0
        if "rate_limit" in changes:  # a new limit starts with a full bucket
            self._tokens = max(self.config.rate_limit or 0.0, 1.0)
            self._refilled = time.monotonic()

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "error")
        return JSONResponse(error_body(status, str(detail), request.url.path), status)

    def _answer(self, status: int, message: str, path: str, **extra: Any) -> JSONResponse:
        with self.counters.lock:
            self.counters.statuses[status] += 1
        headers = extra.pop("headers", None)
        return JSONResponse(error_body(status, message, path, **extra), status, headers=headers)

    def _take_token(self) -> float:
        """0 if a request may pass the rate limit now, else seconds until one may."""
        rate = self.config.rate_limit
        if rate is None:
            return 0.0
        now = time.monotonic()
        self._tokens = min(max(rate, 1.0), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / rate

    async def _generate(self, request: Request) -> Response:
        """Answer a generation. As the real API does, a request is billed as soon as its body
        is received and accepted, before the work (the latency): a client that goes away
        while waiting has paid all the same. Refusals (401, 429, 400, 403) are not billed."""
        config = self.config
        path = request.url.path
        with self.counters.lock:
            self.counters.requests += 1
            self.counters.authorizations.append(request.headers.get("authorization", ""))
        refused = self._refusal(request)
        if refused is not None:
            return refused
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            source = await self._source(body)
        except ValueError as exc:
            return self._answer(400, f"Body validation error: {exc}", path)
        order = _Order.of(body, config.price_factor, source)
        family, cap = self._family(order.model.name)
        if cap is not None and self._family_in_flight[family] >= cap:
            return self._answer(429, f"Too many requests: at most {cap} {family}* tasks", path)
        failing = bool(config.fail_rate) and self._random.random() < config.fail_rate
        refused = None if failing else self._bill(body, order)
        if refused is not None:
            return refused  # out of credits
        self._in_flight += 1
        self._family_in_flight[family] += 1
        self.most_in_flight[family] = max(
            self.most_in_flight[family], self._family_in_flight[family]
        )
        try:
            low, high = config.latency
            if high > 0:
                await asyncio.sleep(self._random.uniform(low, high))
        finally:
            self._in_flight -= 1
            self._family_in_flight[family] -= 1
        if failing:
            status = self._random.choice(FAULT_STATUSES)
            return self._answer(status, "Internal server error (emulated)", path)
        answer = self._answer_generation(request, body, order)
        with self.counters.lock:
            self.counters.delivered += 1
        return answer

    def _family(self, model: str) -> tuple[str, int | None]:
        """The capped family `model` belongs to and its cap, or ("", None): the rest, under
        max_in_flight."""
        caps = self.config.family_in_flight
        return next(((p, n) for p, n in caps if model.startswith(p)), ("", None))

    async def _source(self, body: dict[str, Any]) -> Source | None:
        """The first input image of an edit, every input checked as the API would: a `data:`
        URI of an image, or a URL. A loopback URL is fetched; another host's is not (the
        emulator is offline): a stand-in picture is drawn from the URL. ValueError if an
        input cannot be read."""
        values = input_values(body)
        with self.counters.lock:
            self.counters.inputs += len(values)
        sources = [await read_input(v) for v in values]
        return sources[0] if sources else None

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        """The request's body, or the 400 that refuses it (not billed): not JSON, not an
        object, not the model's schema, or a prompt the emulator was told to refuse."""
        path = request.url.path
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._answer(400, "Body validation error: the body is not JSON", path)
        if not isinstance(body, dict):
            return self._answer(400, "Body validation error: the body must be an object", path)
        refuse = self.config.refuse_prompt
        if refuse and refuse in str(body.get("prompt", "")):
            return self._answer(400, "Content moderation: the prompt was refused", path)
        problems = check_body(body)
        if problems:
            details = [f"{p.path}: {p.message}" for p in problems]
            return self._answer(400, "Body validation error", path, details=details)
        return body

    def _refusal(self, request: Request) -> Response | None:
        """The answer to a request refused before its body is read: no key (401), a
        redirect, or a limit (429: the rate, or the generations in flight)."""
        config, path = self.config, request.url.path
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not key or (config.api_key is not None and key != config.api_key):
            return self._answer(401, "Unauthorized: missing or invalid API key", path)
        if config.redirect_to:
            with self.counters.lock:
                self.counters.statuses[307] += 1
            return Response(status_code=307, headers={"Location": config.redirect_to + path})
        if config.quota_exhausted:
            return self._answer(429, "Quota exceeded: insufficient balance", path)
        if config.max_in_flight is not None and self._in_flight >= config.max_in_flight:
            message = f"Too many requests: at most {config.max_in_flight} tasks at once"
            return self._answer(429, message, path)
        wait = self._take_token()
        if not wait:
            return None
        headers = {}
        if config.send_retry_after:
            headers["Retry-After"] = config.retry_after or str(max(1, math.ceil(wait)))
            if config.retry_after is None:  # the precise wait, as some providers send it
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        return self._answer(429, "Too many requests", path, headers=headers)

    def _bill(self, body: dict[str, Any], order: _Order) -> Response | None:
        """Charge a received body; a 403 once the balance is spent, else None."""
        if self.config.credits is not None and self._spent + order.cost > self.config.credits:
            return self._answer(403, "Forbidden: out of credits", API_PATH)
        self._spent += order.cost
        with self.counters.lock:
            self.counters.paid += 1
            self.counters.credits += order.cost
            self.counters.generated += order.count
            # The hash the lock records for a text-to-image body; an edit's is of its inputs
            # as sent (the same bytes give the same hash, so paying twice still shows).
            self.counters.paid_bodies[body_hash(body)] += 1
        return None

    def _answer_generation(self, request: Request, body: dict[str, Any], order: _Order) -> Response:
        config = self.config
        model, width, height, count, cost = (
            order.model,
            order.width,
            order.height,
            order.count,
            order.cost,
        )
        seed = body.get("seed") or self._random.randint(1, 2**31 - 1)
        fmt = model.output_format(body) or "png"
        images = [
            Picture(
                model.name, body["prompt"], seed, width, height, fmt, i, config.mangle, order.source
            )
            for i in range(count)
        ]
        with self.counters.lock:
            self.counters.statuses[200] += 1
        mangled = self._mangled(config.mangle, cost, request.headers.get("authorization", ""))
        if mangled is not None:
            return mangled
        links = [self._link(request, image) for image in images]
        if config.shape == "data":
            key = "b64_json" if config.delivery == "b64" else "url"
            other = "url" if key == "b64_json" else "b64_json"
            return JSONResponse(
                {
                    "data": [{key: link, other: None} for link in links],
                    # The newer documents require usd_spent too: the emulator's own rate.
                    "meta": {"usage": {"credits_used": cost, "usd_spent": cost * USD_PER_CREDIT}},
                }
            )
        return JSONResponse(
            {
                "images": [
                    {
                        "url": link
                        if config.delivery == "url"
                        else f"data:{image.content_type};base64,{link}",
                        "width": width,
                        "height": height,
                        "content_type": image.content_type,
                    }
                    for link, image in zip(links, images, strict=True)
                ],
                "timings": {"inference": 0.0},
                "seed": seed,
                "has_nsfw_concepts": [False] * count,
                "prompt": body["prompt"],
            }
        )

    def _link(self, request: Request, image: Picture) -> str:
        """How an answer delivers one image: its URL (served from /files/), or its base64."""
        config = self.config
        if config.delivery == "b64":
            return base64.b64encode(image.render()).decode()
        self._files[image.file_name] = image
        # The same as url_for("file", ...), without a walk through the routes.
        prefix = config.file_url_prefix or f"{request.base_url}files/"
        if config.mangle == "key-url":  # a server that leaks the key into its URLs
            token = request.headers.get("authorization", "").removeprefix("Bearer ")
            prefix = f"{request.base_url}gone/{token}/"
        return prefix + image.file_name

    @staticmethod
    def _mangled(mangle: str | None, cost: float, authorization: str) -> Response | None:
        """A paid generation's answer, broken as `mangle` says (None: answer normally)."""
        usage = {"meta": {"usage": {"credits_used": cost}}}
        if mangle in ("echo", "echo-500"):
            # A proxy that echoes the request: the key lands past the 190th character, where
            # a message cut at 200 characters cuts it.
            echoed = "." * 168 + "Authorization: " + authorization
            return Response(echoed, 200 if mangle == "echo" else 500, media_type="text/plain")
        if mangle == "html":
            return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")
        if mangle == "no-images":
            return JSONResponse({"result": "ok", **usage})
        if mangle == "empty":
            return JSONResponse({"data": [], **usage})
        if mangle == "bad-b64":
            return JSONResponse({"data": [{"url": None, "b64_json": "!!not*base64!!"}], **usage})
        return None

    async def _download(self, request: Request) -> Response:
        config = self.config
        image = self._files.get(request.path_params["name"])
        if image is None:
            with self.counters.lock:
                self.counters.downloads["missing"] += 1
            return JSONResponse(error_body(404, "Not found", request.url.path), 404)
        data = image.render()
        truncate = config.truncate_rate and self._random.random() < config.truncate_rate
        with self.counters.lock:
            self.counters.downloads["truncated" if truncate else "ok"] += 1
        if config.mangle == "gzip":
            encoded = gzip.compress(data, compresslevel=1)
            headers = {"Content-Encoding": "gzip"}
            return Response(encoded, media_type=image.content_type, headers=headers)
        if not truncate and not config.slow_download:
            return Response(data, media_type=image.content_type)
        sent = data[: len(data) // 2] if truncate else data
        return StreamingResponse(
            self._trickle(sent, config.slow_download),
            media_type=image.content_type,
            headers={"Content-Length": str(len(data))},
        )

    @staticmethod
    async def _trickle(data: bytes, seconds: float) -> AsyncIterator[bytes]:
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        for chunk in chunks:
            if seconds:
                await asyncio.sleep(seconds / len(chunks))
            yield chunk
