"""What a template's filters and string methods would make, checked before it is made.

A template's output is capped (`MAX_RENDERED_CHARS`), but some filters and methods build a
large string in one step, before the cap sees it: padding (`center`, `%9999999d`, `format`),
`join` with a long separator over many items, `replace` of a frequent text by a long one.
Each is refused with a SecurityError when what it would make passes the cap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from jinja2.exceptions import SecurityError

MAX_RENDERED_CHARS = 100_000
_WIDTH = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?|\{[^{}]*?:[^{}\d]*(\d+)(?:\.(\d+))?")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def check_widths(text: str) -> None:
    """SecurityError if a `%` or `{}` format in `text` pads past the size cap."""
    for match in _WIDTH.finditer(text):
        if any(n and int(n) > MAX_RENDERED_CHARS for n in match.groups()):
            raise SecurityError(f"a format pads past {MAX_RENDERED_CHARS:,} characters")


def _too_large(what: str, size: int) -> None:
    if size > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} would make more than {MAX_RENDERED_CHARS:,} characters")


def joined_size(items: Iterable[Any], separator: str) -> int:
    """The length of `separator.join(items)` (as text), summed without building it."""
    count = size = 0
    for item in items:
        size += len(item) if isinstance(item, str) else len(str(item))
        count += 1
        _too_large("join", size + max(0, count - 1) * len(separator))
    return size + max(0, count - 1) * len(separator)


def replaced_size(text: str, old: str, new: str, count: int = -1) -> int:
    """The length of `text.replace(old, new, count)`, without building it."""
    found = len(text) + 1 if old == "" else text.count(old)
    if count is not None and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def check_method(owner: str, name: str, args: tuple[Any, ...]) -> None:
    """SecurityError if a string method called from a template would make too much."""
    if name in _PADDING_METHODS and any(
        isinstance(a, int) and a > MAX_RENDERED_CHARS for a in args
    ):
        raise SecurityError(f"{name}() would pad past {MAX_RENDERED_CHARS:,} characters")
    if name == "join" and args and isinstance(args[0], list | tuple | str | range):
        _too_large("join", joined_size(args[0], owner))
    if name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        limit = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        _too_large("replace", replaced_size(owner, args[0], args[1], limit))


def _padding(name: str, builtin: Callable[..., Any], at: int) -> Callable[..., Any]:
    """A filter whose argument `at` is a width, refused past the size cap."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        width = args[at] if len(args) > at else kwargs.get("width")
        if isinstance(width, int) and width > MAX_RENDERED_CHARS:
            raise SecurityError(f"{name} would pad past {MAX_RENDERED_CHARS:,} characters")
        return builtin(*args, **kwargs)

    return guarded


def _format_filter(builtin: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(value: Any, *args: Any, **kwargs: Any) -> Any:
        check_widths(str(value))
        return builtin(value, *args, **kwargs)

    return guarded


def _join_filter(builtin: Callable[..., Any]) -> Callable[..., Any]:
    """`join`, refused when what it would make passes the cap (items made a list first)."""

    def guarded(context: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value) if not isinstance(value, str) else value
        if attribute is None:
            _too_large("join", joined_size(items, str(d)))
        return builtin(context, items, d, attribute)

    guarded.jinja_pass_arg = builtin.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


def _replace_filter(builtin: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(context: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        text = s if isinstance(s, str) else str(s)
        limit = count if isinstance(count, int) else -1
        _too_large("replace", replaced_size(text, str(old), str(new), limit))
        return builtin(context, s, old, new, count)

    guarded.jinja_pass_arg = builtin.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


def guard_filters(filters: MutableMapping[str, Callable[..., Any]]) -> None:
    """Replace an environment's filters that can make a large string in one step."""
    filters["center"] = _padding("center", filters["center"], 1)
    filters["indent"] = _padding("indent", filters["indent"], 1)
    filters["format"] = _format_filter(filters["format"])
    filters["join"] = _join_filter(filters["join"])
    filters["replace"] = _replace_filter(filters["replace"])
