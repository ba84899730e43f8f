"""The emulator's switches (`EmulatorConfig`) and what it counts (`Counters`)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..provider.prices import estimate

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
    "gzip",
    "echo",
    "echo-500",
    "key-url",  # image URLs carry the request's bearer token, and are not served
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
    send_retry_after: bool = True  # False: a 429 says nothing of when to come back
    max_in_flight: int | None = None  # generations at once before 429 (BFL's active task cap)
    # Generations at once of a model family (by model-name prefix) before 429, e.g.
    # (("flux/kontext-max/", 6),) as Black Forest Labs caps Kontext Max.
    family_in_flight: tuple[tuple[str, int], ...] = ()
    quota_exhausted: bool = False  # every generation answered 429 "quota exceeded"
    truncate_rate: float = 0.0  # share of downloads cut short under a full Content-Length
    slow_download: float = 0.0  # seconds over which each download trickles
    credits: float | None = None  # balance; 403 "out of credits" once spent
    price_factor: float = 1.0  # charge this times the price table's figure
    api_key: str | None = None  # the only key accepted (401 for others); None: any key
    refuse_prompt: str | None = None  # a prompt holding this is refused (400), not billed
    # Misbehaviour on cue, for fault tests: answer a paid generation with "html", "no-images",
    # "empty", "bad-b64", or deliver an image that is "not-image", "wrong-size",
    # "wrong-format", a decompression "bomb", or send it "gzip"-encoded (Content-Encoding)
    # whatever the client asked for; "echo" answers 200 (or "echo-500" 500) with the request's
    # Authorization header in plain text, as a misconfigured proxy might.
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
    credits: float = 0.0  # credits billed
    delivered: int = 0  # billed generations whose answer was written back
    paid_bodies: Counter[str] = field(default_factory=Counter)  # sha256 of bodies that were paid
    inputs: int = 0  # input images received (data: URIs and URLs)
    downloads: Counter[str] = field(default_factory=Counter)  # "ok", "truncated", "missing"
    authorizations: list[str] = field(default_factory=list)  # Authorization headers seen

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "statuses": dict(self.statuses),
                "generated": self.generated,
                "paid": self.paid,
                "credits": self.credits,
                "delivered": self.delivered,
                "inputs": self.inputs,
                "downloads": dict(self.downloads),
            }


def credits_for(model: str, width: int, height: int, price_factor: float = 1.0) -> float:
    """What the emulator charges for one image: the price table's figure (one credit per
    started megapixel) times `price_factor` (a provider whose prices are not the table's)."""
    return estimate(model, width, height, 1) * price_factor
