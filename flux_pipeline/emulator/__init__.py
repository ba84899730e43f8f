"""A local emulator of the FLUX image API, on a real HTTP server (starlette + uvicorn).

It sits beside `running` (it may import `store`, `language` and `provider`, never `cli`).

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

from .app import Emulator, error_body
from .config import Counters, EmulatorConfig, credits_for
from .images import encode_png, render_image
from .server import EmulatorServer, serve_forever

__all__ = [
    "Counters",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "credits_for",
    "encode_png",
    "error_body",
    "render_image",
    "serve_forever",
]
