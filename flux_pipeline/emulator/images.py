"""The emulator's images: deterministic pictures (the same model, prompt, seed, size, format
and index give the same bytes), a small PNG writer, and the broken images fault tests ask for.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from ..provider.images import EXTENSIONS, MEDIA_TYPES
from .config import PNG_SIGNATURE


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
    more to set up than this whole function on a small image (docs/benchmarks.md)."""
    stride = width * 3
    rows = b"".join(b"\x00" + rgb[i : i + stride] for i in range(0, len(rgb), stride))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 1))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=64)
def _indexed_pixels(width: int, height: int) -> bytes:
    """The compressed pixels of an indexed PNG of this size: a diagonal ramp of the palette's
    256 entries. Made once per size: a picture then costs the same whatever its size."""
    rows = b"".join(
        b"\x00" + bytes(((x + y) * 255 // max(1, width + height - 2)) for x in range(width))
        for y in range(height)
    )
    return _png_chunk(b"IDAT", zlib.compress(rows, 6))


def indexed_png(width: int, height: int, digest: bytes, caption: str) -> bytes:
    """A PNG whose palette (a blend between two colours drawn from `digest`) and caption
    (a tEXt chunk) make it this picture; its pixels are shared by every picture of its size."""
    start, end = _palette(digest)[:2]
    palette = bytearray(768)
    for channel, (a, b) in enumerate(zip(start, end, strict=True)):
        palette[channel::3] = bytes((a * (255 - i) + b * i) // 255 for i in range(256))
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"PLTE", bytes(palette))
        + _png_chunk(b"tEXt", b"Description\x00" + caption.encode("latin-1", "replace"))
        + _indexed_pixels(width, height)
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=32)
def render_image(
    model: str, prompt: str, seed: int, width: int, height: int, fmt: str, index: int
) -> bytes:
    """A deterministic picture. A PNG is indexed: a palette from the inputs' hash over pixels
    shared by its size, captioned in its metadata, so that serving one costs the emulator the
    same at 64x64 as at 1440x1440 and it is never what a benchmark measures. A JPEG or WebP
    is drawn: a gradient and shapes from the hash, with a caption."""
    from PIL import Image, ImageDraw

    digest = hashlib.sha256(
        json.dumps([model, prompt, seed, width, height, fmt, index]).encode()
    ).digest()
    if fmt == "png":
        return indexed_png(width, height, digest, f"{' '.join(prompt.split()[:12])} / seed {seed}")
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
    out = io.BytesIO()
    image.save(out, format=fmt.upper(), quality=85)
    return out.getvalue()


#: How much of an edit's picture is the prompt's tint (the rest is the input, resized).
EDIT_TINT = 0.2


def edited_image(
    source: bytes, prompt: str, seed: int, width: int, height: int, fmt: str, index: int
) -> bytes:
    """An edit's picture: the input resized to the output, tinted by a colour from the
    prompt and seed, captioned; so a test can see that the input was used."""
    from PIL import Image, ImageDraw

    digest = hashlib.sha256(json.dumps([prompt, seed, index]).encode()).digest()
    with Image.open(io.BytesIO(source)) as opened:
        image = opened.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    image = Image.blend(image, Image.new("RGB", image.size, _palette(digest)[0]), EDIT_TINT)
    if min(width, height) >= 128:
        draw = ImageDraw.Draw(image)
        font = _font(max(10, min(width, height) // 32))
        text = f"{' '.join(prompt.split()[:6])} / seed {seed}"
        left, top, right, bottom = draw.textbbox((8, height - 8), text, font=font, anchor="ls")
        draw.rectangle((left - 4, top - 4, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((8, height - 8), text, fill=(255, 255, 255), font=font, anchor="ls")
    out = io.BytesIO()
    image.save(out, format=fmt.upper(), **({"quality": 85} if fmt != "png" else {}))
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Picture:
    model: str
    prompt: str
    seed: int
    width: int
    height: int
    fmt: str
    index: int
    mangle: str | None = None
    source: bytes | None = None  # the input image of an edit: the picture is derived from it

    @property
    def file_name(self) -> str:
        inputs = hashlib.sha256(self.source).hexdigest() if self.source else ""
        key = json.dumps(
            [self.model, self.prompt, self.seed, self.width, self.height, self.fmt, self.index]
            + ([inputs] if inputs else [])
        )
        return f"{hashlib.sha256(key.encode()).hexdigest()[:32]}{EXTENSIONS[self.fmt]}"

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES[self.fmt]

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
        if self.source is not None:
            return edited_image(self.source, self.prompt, self.seed, width, height, fmt, self.index)
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
