"""The generation endpoint's answers, in either documented shape, and its error messages."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import BadResponse


@dataclass(frozen=True, slots=True)
class Delivery:
    """One image as the API delivers it: a URL or inline base64, and what it says about it."""

    url: str | None = None
    b64: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """A successful answer of the generation endpoint, in either documented shape."""

    images: tuple[Delivery, ...]
    seed: int | None = None
    credits: float | None = None
    nsfw: tuple[bool, ...] | None = None
    attempts: int = 1

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "credits": self.credits,
            "nsfw": list(self.nsfw) if self.nsfw is not None else None,
        }


def _first_bytes(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "replace")
    return repr(text) + ("..." if len(raw) > limit else "")


def parse_generation(request_id: str, raw: bytes) -> Generation:
    """Read a 200 answer: `data: [{url | b64_json}]` + `meta.usage`, or `images: [{url, ...}]`
    + `seed` + `has_nsfw_concepts`; credits as `credits_used` or `tokens_used`."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadResponse(request_id, f"the answer is not JSON: {_first_bytes(raw)}") from None
    if not isinstance(data, dict):
        raise BadResponse(request_id, f"the answer is not a JSON object: {_first_bytes(raw)}")
    credits = _credits(data)
    items = data.get("data") or data.get("images")
    deliveries = [d for d in map(_delivery, items) if d] if isinstance(items, list) else []
    if not deliveries or len(deliveries) != len(items or ()):
        raise BadResponse(
            request_id,
            f"the answer holds no usable images (data[] or images[]): {_first_bytes(raw)}",
            credits=credits,
        )
    nsfw = data.get("has_nsfw_concepts")
    seed = data.get("seed")
    return Generation(
        images=tuple(deliveries),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        credits=credits,
        nsfw=tuple(bool(x) for x in nsfw) if isinstance(nsfw, list) else None,
    )


def _credits(data: dict[str, Any]) -> float | None:
    """What an answer says it cost (`meta.usage.credits_used` or `tokens_used`), if it says."""
    meta = data.get("meta")
    usage = meta.get("usage") if isinstance(meta, dict) else None
    if not isinstance(usage, dict):
        return None
    credits = usage.get("credits_used", usage.get("tokens_used"))
    if isinstance(credits, int | float) and not isinstance(credits, bool) and credits >= 0:
        return float(credits) if math.isfinite(credits) else None
    return None


def _delivery(item: Any) -> Delivery | None:
    """One entry of `data[]` (`url` or `b64_json`) or `images[]` (`url`, `width`, `height`)."""
    if not isinstance(item, dict):
        return None
    url, b64 = item.get("url"), item.get("b64_json")
    width, height = item.get("width"), item.get("height")
    width = width if isinstance(width, int) else None
    height = height if isinstance(height, int) else None
    if isinstance(url, str) and url:
        return Delivery(url=url, width=width, height=height)
    if isinstance(b64, str) and b64:
        return Delivery(b64=b64, width=width, height=height)
    return None


def api_message(raw: bytes) -> str:
    """The API's own error message on one line, from either shape it uses (`{message,
    statusCode, details?}` or `{error: {message, ...}}`), else the body's first bytes."""
    try:
        data = json.loads(raw)
    except ValueError:
        return _first_bytes(raw)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        message = " ".join(str(data["message"]).split())
        details = data.get("details")
        if isinstance(details, list) and details:
            return f"{message}: " + "; ".join(" ".join(str(d).split()) for d in details)
        return message
    return _first_bytes(raw)
