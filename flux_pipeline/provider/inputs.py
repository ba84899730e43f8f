"""Input images from local files: what `image_file(PATH)` puts in a request, and what is sent.

A request that edits a local photo does not carry the photo's base64 while it is planned,
hashed and locked: it carries a *reference*, ``file:photos/mug.jpg#sha256=<hex>&size=640x480``.
The reference is part of the body, so the body's hash covers the input's bytes (through their
sha256) and editing a photo makes exactly the requests that use it stale; the lock records the
reference, so a lock of 1,000 edits stays small and diffable. Only when a request is sent does
the client replace each reference by the file's bytes as a `data:` URI (`wire_body`), after
checking they still hash to the recorded sha256.

Files are read and hashed once per run however many requests use them (`InputFiles`), and
only files inside the spec's folder tree are read.
"""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Explained, RequestFailed
from .images import MEDIA_TYPES, probe

#: The request fields that hold input images (one URI, or a list of them).
IMAGE_FIELDS = ("image_url", "image_urls")
#: The documents state no limit on inputs; these keep a request's body (the base64 of its
#: inputs) within what an HTTP API takes in one JSON body.
MAX_INPUT_BYTES = 20_000_000
MAX_INPUT_PIXELS = 40_000_000
#: How much of the encoded inputs a run keeps to send again (a few large photos).
KEEP_URI_CHARS = 200_000_000

_REFERENCE = re.compile(
    r"file:(?P<path>[^#]+)#sha256=(?P<sha>[0-9a-f]{64})&size=(?P<w>\d+)x(?P<h>\d+)"
)
_URL = re.compile(r"(https?://|data:image/[a-z]+;base64,)", re.IGNORECASE)


class InputError(Explained):
    """An input image that cannot be sent: missing, outside the spec's folder, not an image,
    too large, or changed since the request was planned."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A local input image, as a request body refers to it: its path from the spec's folder,
    the sha256 of its bytes and its size."""

    path: str  # POSIX, relative to the spec's folder
    sha256: str
    width: int
    height: int

    @property
    def text(self) -> str:
        """What a request body carries in place of the image's bytes. The path is
        percent-encoded (a camera's or a screenshot tool's names hold spaces, `#`, even line
        breaks); a plain name reads the same either way."""
        path = urllib.parse.quote(self.path, safe="/")
        return f"file:{path}#sha256={self.sha256}&size={self.width}x{self.height}"

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def parse_reference(text: Any) -> Reference | None:
    """The reference `text` is, or None if it is not one."""
    if not isinstance(text, str) or not text.startswith("file:"):
        return None
    match = _REFERENCE.fullmatch(text)
    if match is None:
        return None
    try:
        path = urllib.parse.unquote(match["path"], errors="strict")
    except UnicodeDecodeError:
        return None
    reference = Reference(path, match["sha"], int(match["w"]), int(match["h"]))
    return reference if reference.text == text else None  # only what image_file() makes


def input_values(body: Mapping[str, Any]) -> list[Any]:
    """Every value of a body's image fields, in order (a single URI or each of a list)."""
    values: list[Any] = []
    for field in IMAGE_FIELDS:
        value = body.get(field)
        if isinstance(value, list):
            values += value
        elif value is not None:
            values.append(value)
    return values


def references(body: Mapping[str, Any]) -> list[Reference]:
    """The local input images a body refers to, in order."""
    found = (parse_reference(v) for v in input_values(body))
    return [r for r in found if r is not None]


def value_problem(value: Any) -> str | None:
    """Why an image field's value cannot be sent, or None if it can."""
    if not isinstance(value, str):
        return None  # the schema explains a wrong type
    if parse_reference(value) is not None or _URL.match(value):
        return None
    if value.startswith("file:"):
        return f"{value[:60]!r} is not a reference image_file() made; use image_file(PATH)"
    shown = value if len(value) <= 60 else value[:57] + "..."
    return (
        f"{shown!r} is not an https:// URL or a data: URI; a local file is sent with "
        f"image_file({shown!r})"
    )


class InputFiles:
    """The input images of one spec, each read, checked and hashed once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self._seen: dict[tuple[Path, int, int], Reference] = {}

    def resolve(self, relative: str) -> Path:
        """The file `relative` names, inside the spec's folder tree (InputError otherwise)."""
        if not isinstance(relative, str) or not relative:
            raise InputError(f"image_file() takes a file path, not {relative!r}")
        if Path(relative).is_absolute():
            raise InputError(f"input {relative!r} must be a path relative to the spec's folder")
        target = (self.folder / relative).resolve()
        if not target.is_relative_to(self.folder):
            raise InputError(f"input {relative!r} is outside the spec's folder")
        return target

    def load(self, relative: str) -> Reference:
        """The checked input image at `relative` (read and hashed once while it is unchanged)."""
        target = self.resolve(relative)
        try:
            stat = target.stat()
        except FileNotFoundError:
            raise InputError(f"input {relative!r} not found") from None
        except OSError as exc:
            raise InputError(f"input {relative!r} cannot be read: {exc.strerror}") from None
        key = (target, stat.st_mtime_ns, stat.st_size)
        image = self._seen.get(key)
        if image is None:
            image = self._seen[key] = self._check(relative, target, stat.st_size)
        return image

    def _check(self, relative: str, target: Path, size: int) -> Reference:
        if not target.is_file():
            raise InputError(f"input {relative!r} is not a file")
        if size > MAX_INPUT_BYTES:
            raise InputError(
                f"input {relative!r} is {size:,} bytes, more than the {MAX_INPUT_BYTES:,} an "
                "input may have"
            )
        data = target.read_bytes()
        try:
            info = probe(data)
        except ValueError as exc:
            raise InputError(f"input {relative!r} is not an image the API reads: {exc}") from None
        if info.width * info.height > MAX_INPUT_PIXELS:
            raise InputError(
                f"input {relative!r} is {info.width}x{info.height}, more than the "
                f"{MAX_INPUT_PIXELS // 1_000_000} megapixels an input may have"
            )
        path = target.relative_to(self.folder).as_posix()
        digest = hashlib.sha256(data).hexdigest()
        return Reference(path, digest, info.width, info.height)


class Sender:
    """Turns bodies with references into the bodies sent: each reference becomes its file's
    `data:` URI, checked against the recorded hash (encoded once per file and kept)."""

    def __init__(self, folder: Path) -> None:
        self.files = InputFiles(folder)
        self._uris: dict[str, str] = {}
        self._held = 0  # characters of the URIs kept

    def wire_body(self, request_id: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """`body` as sent: unchanged when it refers to no local file. RequestFailed if an
        input cannot be read, or changed since it was planned (nothing is sent then)."""
        if not any(parse_reference(v) for v in input_values(body)):
            return body
        try:
            return self._wire_body(body)
        except InputError as exc:
            raise RequestFailed(request_id, str(exc)) from None

    def _wire_body(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        sent = dict(body)
        for field in IMAGE_FIELDS:
            value = body.get(field)
            if isinstance(value, list):
                sent[field] = [self._uri(v) for v in value]
            elif value is not None:
                sent[field] = self._uri(value)
        return sent

    def _uri(self, value: Any) -> Any:
        reference = parse_reference(value)
        if reference is None:
            return value
        uri = self._uris.get(reference.sha256)
        if uri is None:
            target = self.files.resolve(reference.path)
            try:
                data = target.read_bytes()
            except OSError as exc:
                raise InputError(f"input {reference.path!r} cannot be read: {exc}") from None
            if hashlib.sha256(data).hexdigest() != reference.sha256:
                raise InputError(
                    f"input {reference.path!r} changed since the request was planned; "
                    "run again to plan it anew"
                )
            media = MEDIA_TYPES[probe(data).format]
            uri = f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
            if self._held + len(uri) > KEEP_URI_CHARS:
                self._uris.clear()
                self._held = 0
            self._uris[reference.sha256] = uri
            self._held += len(uri)
        return uri


def input_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """How two bodies' image fields differ when only the content of local files changed
    ("input photos/mug.jpg changed"); None when they differ otherwise, or not at all."""
    before, after = references(old), references(new)
    if [r.path for r in before] != [r.path for r in after]:
        return None
    if [v for v in input_values(old) if parse_reference(v) is None] != [
        v for v in input_values(new) if parse_reference(v) is None
    ]:
        return None
    changed = [b.path for a, b in zip(before, after, strict=True) if a.sha256 != b.sha256]
    if not changed:
        return None
    return "input " + ", ".join(changed) + " changed"
