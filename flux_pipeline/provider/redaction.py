"""The API key: checked once when it is read, and masked in every text that leaves the process.

`clean_key` strips what a shell or a file adds around a key (spaces, a trailing CR/LF) and
refuses a key with any other control or non-ASCII character, without printing it: such a key
cannot be sent in a header, and the transport's error would show it.

`Redactor` masks the key in a text: the key itself, its escaped forms (JSON, `repr`, URL), and
any run of 8 or more of its characters (an error body cut at 200 characters cuts the key too,
and what is left of it is still a secret). The client passes every text that comes back from
the server through it; the journal and the record pass every line they write; the CLI wraps
stdout and stderr in it (`RedactingStream`), so messages, progress and `--debug` tracebacks
are covered whatever produced them.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any, TextIO

from ..errors import ConfigError

MASK = "[redacted]"
RUN = 8  # this many characters of the key in a row are masked
SHORTEST = 4  # a shorter "key" (a test's "k") would garble every word it is part of


def clean_key(raw: str, name: str = "AIMLAPI_KEY") -> str:
    """The key without surrounding whitespace; ConfigError (never showing the key) if what is
    left holds a control, space or non-ASCII character."""
    key = raw.strip()
    for position, char in enumerate(key, 1):
        if not (0x21 <= ord(char) <= 0x7E):
            kind = "a non-ASCII" if ord(char) > 0x7E else "a control or space"
            raise ConfigError(
                f"{name} holds {kind} character at position {position} of {len(key)} (not "
                "shown); a key is printable ASCII: check how it was copied"
            )
    return key


class Redactor:
    """Masks one key in texts (see the module's docstring)."""

    def __init__(self, key: str) -> None:
        self.key = key
        forms = {key, json.dumps(key)[1:-1], repr(key)[1:-1], urllib.parse.quote(key, safe="")}
        self._forms = sorted((f for f in forms if len(f) >= SHORTEST), key=len, reverse=True)
        self._grams: dict[str, list[int]] = {}  # each run of RUN characters -> its offsets
        for offset in range(len(key) - RUN + 1):
            self._grams.setdefault(key[offset : offset + RUN], []).append(offset)

    def __call__(self, text: str) -> str:
        if len(self.key) < SHORTEST or not text:
            return text
        for form in self._forms:
            text = text.replace(form, MASK)
        if any(gram in text for gram in self._grams):
            text = self._mask_runs(text)
        return text

    def _mask_runs(self, text: str) -> str:
        """Mask every run of RUN or more characters of the key, as long as it goes on."""
        out, i = [], 0
        while i < len(text):
            offsets = self._grams.get(text[i : i + RUN])
            if offsets is None:
                out.append(text[i])
                i += 1
                continue
            end = i + RUN
            for offset in offsets:  # the longest run that starts here
                k = RUN
                while i + k < len(text) and offset + k < len(self.key):
                    if text[i + k] != self.key[offset + k]:
                        break
                    k += 1
                end = max(end, i + k)
            out.append(MASK)
            i = end
        return "".join(out)


def redact_json(value: Any, redact: Callable[[str], str]) -> Any:
    """`value` (JSON data) with every string passed through `redact`: for what a server sent,
    before it is kept on disk."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_json(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: redact_json(v, redact) for k, v in value.items()}
    return value


class RedactingStream:
    """A text stream that masks the key in everything written to it."""

    def __init__(self, stream: TextIO, redact: Redactor) -> None:
        self._stream = stream
        self._redact = redact

    def write(self, text: str) -> int:
        self._stream.write(self._redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":  # writing bytes beside the text would pass unmasked
            raise AttributeError(name)
        return getattr(self._stream, name)
