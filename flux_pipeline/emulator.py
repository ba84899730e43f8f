"""A local emulator of the FLUX image API, on a real HTTP server (starlette + uvicorn).

It serves `POST /v1/images/generations` as the provider's documents describe it: a bearer key
must be present (any value), bodies are validated with the same embedded schemas as the client,
and it answers in either documented response shape, delivering images by URL (served from
`GET /files/...` by the same server) or as base64. Images are deterministic: the same (model,
prompt, seed, size, format, index) gives the same bytes.

Faults are switches on `EmulatorConfig`, changeable while the server runs: latency, 5xx
failures, a rate limit answered with 429 and `Retry-After`, truncated or slow downloads, and a
credit balance that ends in 403. A seedable random source makes fault runs repeatable, and
`Counters` tell a test exactly what the server saw.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import math
import random
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .bodies import body_hash
from .registry import API_PATH, check_body, get_model

FAULT_STATUSES = (500, 502, 503, 504)
MANGLES = (
    None,
    "html",
    "no-images",
    "empty",
    "bad-b64",
    "not-image",
    "wrong-size",
    "wrong-format",
    "bomb",
)
CHUNK = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator answers. Every field can be changed while it runs (`Emulator.configure`)."""

    shape: str = "data"  # "data": data[] + meta.usage; "images": images[] + seed + nsfw flags
    delivery: str = "url"  # "url": served from /files/; "b64": inline base64
    latency: tuple[float, float] = (0.0, 0.0)  # seconds before answering a generation, min..max
    fail_rate: float = 0.0  # share of generations answered with 500/502/503/504
    rate_limit: float | None = None  # generations per second before 429
    retry_after: str | None = None  # Retry-After sent with 429 (default: seconds to next slot)
    truncate_rate: float = 0.0  # share of downloads cut short under a full Content-Length
    slow_download: float = 0.0  # seconds over which each download trickles
    credits: float | None = None  # balance; 403 "out of credits" once spent
    api_key: str | None = None  # the only key accepted (401 for others); None: any key
    # Misbehaviour on cue, for fault tests: answer a paid generation with "html", "no-images",
    # "empty", "bad-b64", or deliver an image that is "not-image", "wrong-size",
    # "wrong-format" or a decompression "bomb".
    mangle: str | None = None
    redirect_to: str | None = None  # answer generations 307 to this base URL
    file_url_prefix: str | None = None  # image URLs start with this instead of /files/
    seed: int = 0  # seeds the random source of faults and of drawn seeds

    def __post_init__(self) -> None:
        if self.mangle not in MANGLES:
            raise ValueError(f"mangle must be one of {sorted(filter(None, MANGLES))}")
        if self.shape not in ("data", "images"):
            raise ValueError(f"shape must be 'data' or 'images', not {self.shape!r}")
        if self.delivery not in ("url", "b64"):
            raise ValueError(f"delivery must be 'url' or 'b64', not {self.delivery!r}")


@dataclass
class Counters:
    """What the emulator has seen, for tests to assert on. Read them under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    requests: int = 0  # POSTs to the generation endpoint
    statuses: Counter[int] = field(default_factory=Counter)  # generation answers by status
    generated: int = 0  # images generated and paid for
    paid: int = 0  # generations billed: at receipt of the body, before any latency
    delivered: int = 0  # billed generations whose answer was written back
    paid_bodies: Counter[str] = field(default_factory=Counter)  # sha256 of bodies that were paid
    downloads: Counter[str] = field(default_factory=Counter)  # "ok", "truncated", "missing"
    authorizations: list[str] = field(default_factory=list)  # Authorization headers seen

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "statuses": dict(self.statuses),
                "generated": self.generated,
                "paid": self.paid,
                "delivered": self.delivered,
                "downloads": dict(self.downloads),
            }


def credits_for(width: int, height: int) -> int:
    """What the emulator charges for one image: one credit per started megapixel."""
    return max(1, math.ceil(width * height / 1_000_000))


# ----- images ------------------------------------------------------------------------------


def _palette(digest: bytes) -> list[tuple[int, int, int]]:
    return [(digest[i], digest[i + 1], digest[i + 2]) for i in range(0, 30, 3)]


@functools.lru_cache(maxsize=16)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=256)
def _ramp(turn: int) -> Any:
    """A 256x256 ramp, rotated and cropped to its centre (which the rotation never leaves
    empty); it has one channel, so it is cheap to scale."""
    from PIL import Image

    ramp = Image.linear_gradient("L").rotate(turn * 360 / 256, Image.Resampling.BILINEAR)
    return ramp.crop((64, 64, 192, 192))


def _scaled_ramp(turn: int, width: int, height: int) -> Any:
    """The ramp at an image's size. Scaling costs more than the rest of a small picture,
    so small ones (at most 64 KB each) are kept."""
    scale = _kept_ramp if width * height <= 256 * 256 else _ramp_at
    return scale(turn, width, height)


def _ramp_at(turn: int, width: int, height: int) -> Any:
    from PIL import Image

    return _ramp(turn).resize((width, height), Image.Resampling.BILINEAR)


_kept_ramp = functools.lru_cache(maxsize=512)(_ramp_at)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """8-bit RGB pixels as a PNG: unfiltered rows, zlib level 1. Pillow's encoder costs
    about 140 us to set up, six times this whole function on a 64x64 image."""
    stride = width * 3
    rows = b"".join(b"\x00" + rgb[i : i + stride] for i in range(0, len(rgb), stride))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 1))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=32)
def render_image(
    model: str, prompt: str, seed: int, width: int, height: int, fmt: str, index: int
) -> bytes:
    """A deterministic picture: a gradient and shapes from the inputs' hash, with a caption."""
    from PIL import Image, ImageDraw

    digest = hashlib.sha256(
        json.dumps([model, prompt, seed, width, height, fmt, index]).encode()
    ).digest()
    colours = _palette(digest)
    # A ramp at the image's size blends two colours.
    ramp = _scaled_ramp(digest[30], width, height)
    size = (width, height)
    image = Image.composite(
        Image.new("RGB", size, colours[1]), Image.new("RGB", size, colours[0]), ramp
    )
    draw = ImageDraw.Draw(image)
    for i in range(2, 8):
        x, y = digest[i] * width // 256, digest[i + 8] * height // 256
        r = (16 + digest[i + 16]) * min(width, height) // 600
        box = (x - r, y - r, x + r, y + r)
        if i % 2:
            draw.ellipse(box, fill=colours[i])
        else:
            draw.rectangle(box, fill=colours[i])
    if min(width, height) >= 128:  # captions only where they fit
        font = _font(max(10, min(width, height) // 24))
        caption = " ".join(prompt.split()[:6])
        for xy, text, anchor in (((8, 8), caption, "la"), ((8, height - 8), f"seed {seed}", "ls")):
            left, top, right, bottom = draw.textbbox(xy, text, font=font, anchor=anchor)
            draw.rectangle((left - 4, top - 4, right + 4, bottom + 4), fill=(0, 0, 0))
            draw.text(xy, text, fill=(255, 255, 255), font=font, anchor=anchor)
    if fmt == "png":
        return encode_png(width, height, image.tobytes())
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class _ImageSpec:
    model: str
    prompt: str
    seed: int
    width: int
    height: int
    fmt: str
    index: int
    mangle: str | None = None

    @property
    def file_name(self) -> str:
        key = json.dumps(
            [self.model, self.prompt, self.seed, self.width, self.height, self.fmt, self.index]
        )
        ext = "png" if self.fmt == "png" else "jpg"
        return f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.{ext}"

    @property
    def content_type(self) -> str:
        return "image/png" if self.fmt == "png" else "image/jpeg"

    def render(self) -> bytes:
        width, height, fmt = self.width, self.height, self.fmt
        if self.mangle == "not-image":
            return b"this is not an image\n" * 8
        if self.mangle == "bomb":
            return _bomb_png()
        if self.mangle == "wrong-size":
            width, height = width // 2, height // 2
        if self.mangle == "wrong-format":
            fmt = "jpeg" if fmt == "png" else "png"
        return render_image(self.model, self.prompt, self.seed, width, height, fmt, self.index)


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 100000 x 100000 pixels: a decompression bomb."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


# ----- the application ---------------------------------------------------------------------


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


class Emulator:
    """The emulator's state and its ASGI app (`.app`)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.counters = Counters()
        self._random = random.Random(self.config.seed)
        self._files: dict[str, _ImageSpec] = {}
        self._spent = 0.0
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
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not key or (config.api_key is not None and key != config.api_key):
            return self._answer(401, "Unauthorized: missing or invalid API key", path)
        if config.redirect_to:
            with self.counters.lock:
                self.counters.statuses[307] += 1
            return Response(status_code=307, headers={"Location": config.redirect_to + path})
        wait = self._take_token()
        if wait:
            headers = {"Retry-After": config.retry_after or str(max(1, math.ceil(wait)))}
            if config.retry_after is None:  # the precise wait, as some providers send it
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
            return self._answer(429, "Too many requests", path, headers=headers)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._answer(400, "Body validation error: the body is not JSON", path)
        if not isinstance(body, dict):
            return self._answer(400, "Body validation error: the body must be an object", path)
        problems = check_body(body)
        if problems:
            details = [f"{p.path}: {p.message}" for p in problems]
            return self._answer(400, "Body validation error", path, details=details)
        failing = bool(config.fail_rate) and self._random.random() < config.fail_rate
        paid = None if failing else self._bill(body)
        if isinstance(paid, Response):
            return paid  # out of credits
        low, high = config.latency
        if high > 0:
            await asyncio.sleep(self._random.uniform(low, high))
        if paid is None:
            status = self._random.choice(FAULT_STATUSES)
            return self._answer(status, "Internal server error (emulated)", path)
        answer = self._generated(request, body, paid)
        with self.counters.lock:
            self.counters.delivered += 1
        return answer

    def _bill(self, body: dict[str, Any]) -> int | Response:
        """Charge a received body: its cost, or a 403 once the balance is spent."""
        model = get_model(body["model"])
        assert model is not None  # check_body passed
        width, height = model.size(body)
        count = model.num_images(body)
        cost = count * credits_for(width, height)
        if self.config.credits is not None and self._spent + cost > self.config.credits:
            return self._answer(403, "Forbidden: out of credits", API_PATH)
        self._spent += cost
        with self.counters.lock:
            self.counters.paid += 1
            self.counters.generated += count
            self.counters.paid_bodies[body_hash(body)] += 1  # as the lock records it
        return cost

    def _generated(self, request: Request, body: dict[str, Any], cost: int) -> Response:
        config = self.config
        model = get_model(body["model"])
        assert model is not None  # check_body passed
        width, height = model.size(body)
        count = model.num_images(body)
        seed = body.get("seed") or self._random.randint(1, 2**31 - 1)
        fmt = model.output_format(body) or "png"
        images = [
            _ImageSpec(model.name, body["prompt"], seed, width, height, fmt, i, config.mangle)
            for i in range(count)
        ]
        with self.counters.lock:
            self.counters.statuses[200] += 1
        mangled = self._mangled(config.mangle, cost)
        if mangled is not None:
            return mangled
        links = []
        for image in images:
            if config.delivery == "b64":
                links.append(base64.b64encode(image.render()).decode())
            else:
                self._files[image.file_name] = image
                # The same as url_for("file", ...), without a walk through the routes.
                prefix = config.file_url_prefix or f"{request.base_url}files/"
                links.append(prefix + image.file_name)
        if config.shape == "data":
            key = "b64_json" if config.delivery == "b64" else "url"
            other = "url" if key == "b64_json" else "b64_json"
            return JSONResponse(
                {
                    "data": [{key: link, other: None} for link in links],
                    "meta": {"usage": {"credits_used": cost}},
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

    @staticmethod
    def _mangled(mangle: str | None, cost: int) -> Response | None:
        """A paid generation's answer, broken as `mangle` says (None: answer normally)."""
        usage = {"meta": {"usage": {"credits_used": cost}}}
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


# ----- serving -----------------------------------------------------------------------------


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
