"""Checking delivered images with Pillow: format and size from the header, without decoding
pixels, plus the format's own integrity check (PNG chunk CRCs, for instance)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_PIXELS = 64_000_000  # far past any FLUX size; anything larger is refused unread


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # "png", "jpeg", "webp"
    width: int
    height: int


def probe(source: Path | bytes | bytearray) -> ImageInfo:
    """Format and size of an image file (or of its bytes, held in memory). Raises
    ValueError if it is not a sound image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = source if isinstance(source, Path) else io.BytesIO(source)
            with Image.open(opened) as image:
                fmt = (image.format or "").lower()
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"{width}x{height} is too many pixels")
                image.verify()
    except UnidentifiedImageError:
        # Pillow's message names the file object (a temporary path or a memory address).
        raise ValueError("cannot identify image file (not an image format Pillow reads)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(str(exc).split(" Use ")[0]) from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"broken image: {exc}") from None
    if fmt not in EXTENSIONS:
        raise ValueError(f"unexpected image format {fmt or 'unknown'!r}")
    return ImageInfo(fmt, width, height)
