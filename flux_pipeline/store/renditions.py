"""Renditions: an asset file made from a picked image (Pillow).

`resize: WxH` with `fit: cover` (scale to fill, then crop the overflow evenly: no padding),
`contain` (scale to fit inside, then pad with `background`: nothing cropped) or `stretch`
(both sides scaled to the size). The format comes from the asset's extension; JPEG and WebP
take `quality`. Metadata (EXIF, text chunks) is dropped and the colour profile kept. The same
image and transform give the same bytes, so a rendition is made again only when one changes.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from ..language.assets import Transform

_SAVE = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def render(source: Path, transform: Transform) -> bytes:
    """The rendition's bytes."""
    with Image.open(source) as opened:
        opened.load()
        profile = opened.info.get("icc_profile")
        image = _fitted(opened, transform)
    image = _for_format(image, transform)
    out = io.BytesIO()
    options: dict[str, object] = {}
    if profile:
        options["icc_profile"] = profile
    if transform.format in ("jpeg", "webp"):
        options["quality"] = transform.quality or 90
    if transform.format == "webp":
        options["method"] = 4
    image.save(out, _SAVE[transform.format], **options)
    return out.getvalue()


def _fitted(image: Image.Image, transform: Transform) -> Image.Image:
    if transform.size is None:
        return image.copy()
    size = transform.size
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if transform.fit == "stretch":
        return image.resize(size, Image.Resampling.LANCZOS)
    if transform.fit == "cover":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    # Scaled to fit, at least a pixel each way (ImageOps.contain makes a 1x2 image 0x1 in 1x1).
    scale = min(size[0] / image.width, size[1] / image.height)
    inner_size = (
        max(1, min(size[0], round(image.width * scale))),
        max(1, min(size[1], round(image.height * scale))),
    )
    inner = image.resize(inner_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", size, _background(transform))
    canvas.paste(
        inner.convert("RGBA"), ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2)
    )
    return canvas


def _background(transform: Transform) -> tuple[int, int, int, int]:
    """The padding colour: as written, else transparent (white where JPEG has no alpha)."""
    if transform.background:
        hexa = transform.background.lstrip("#")
        parts = [int(hexa[i : i + 2], 16) for i in range(0, len(hexa), 2)]
        return (parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else 255)
    return (255, 255, 255, 255) if transform.format == "jpeg" else (0, 0, 0, 0)


def _for_format(image: Image.Image, transform: Transform) -> Image.Image:
    """The image in a mode the format takes: JPEG has no alpha (flattened onto the
    background); PNG and WebP keep it."""
    if transform.format == "jpeg":
        if "A" in image.getbands() or image.mode == "P":
            rgba = image.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, _background(transform))
            flat.alpha_composite(rgba)
            return flat.convert("RGB")
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image
