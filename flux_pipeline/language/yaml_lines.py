"""Safe YAML with line numbers, for specs and the files they read (prompts, cases).

PyYAML's safe loader (the C one when available) with three changes: mappings and sequences
remember the line of every key and item, duplicate keys are errors, and a document whose
aliases would expand past a fixed size (a "billion laughs") is refused.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import Problem, SpecInvalid

MAX_SPEC_BYTES = 5 * 1024 * 1024
MAX_NODES = 1_000_000  # values in the document once every alias is expanded
# Values written in one document (scalars, lists, mappings), counted while it is parsed: any
# file under MAX_SPEC_BYTES then loads in well under a second (bench/fuzz.py).
MAX_WRITTEN_NODES = 100_000
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


class LineDict(dict[Any, Any]):
    """A YAML mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}


class LineList(list[Any]):
    """A YAML sequence that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe loader that records lines and rejects duplicate keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    data = LineDict()
    data.line = node.start_mark.line + 1
    yield data
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str) and isinstance(key_node, yaml.ScalarNode):
            # `on:` is true to YAML 1.1, `1:` a number: names in a spec are text.
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the key {key_node.value!r} is read by YAML as {key!r}, not as text; quote it "
                f"('{key_node.value}':)",
                key_node.start_mark,
            )
        try:
            first = seen.setdefault(key, line)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if first != line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Any:
    data = LineList()
    data.line = node.start_mark.line + 1
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values `value` holds once aliases are expanded (shared objects count each time)."""
    if not isinstance(value, dict | list):
        return 1
    known = memo.get(id(value))
    if known is not None:
        return known
    children = value.values() if isinstance(value, dict) else value
    total = 1
    for child in children:
        total += _expanded_size(child, memo)
        if total > MAX_NODES:
            break
    memo[id(value)] = total
    return total


_NO_SPACE_AFTER_COLON = re.compile(r"^\s*(?:-\s+)?[A-Za-z_][\w-]*:[^\s/]")


def yaml_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[str, int | None]:
    """PyYAML's error as a user can act on it: at the line where the construct began (an
    unclosed quote's), saying where the parser gave up, with a hint for common mistakes."""
    problem, begun = exc.problem_mark, exc.context_mark
    gave_up = problem.line + 1 if problem else None
    line = begun.line + 1 if begun else gave_up
    message = " ".join(str(x) for x in (exc.context, exc.problem) if x)
    if begun and problem and begun.line != problem.line:
        message += f" (it began at line {begun.line + 1}; the parser gave up at line {gave_up})"
    lines = text.splitlines()
    near = lines[max(0, (gave_up or 1) - 2) : gave_up or 1]
    if "\t" in "".join(near) or "'\\t'" in message:
        hint = "YAML indents with spaces, not tabs"
    elif "quoted scalar" in message:
        hint = f"the quote opened at line {line} is never closed"
    elif any(_NO_SPACE_AFTER_COLON.match(n) for n in near):
        hint = "a key needs a space after its colon (`name: a`, not `name:a`)"
    elif "mapping values are not allowed" in message or "expected <block end>" in message:
        hint = f"check the indentation of line {gave_up}: the keys of one mapping line up"
    else:
        return message, line
    return f"{message}; hint: {hint}", line


def read_text(path: Path, *, what: str = "spec") -> str:
    """A file a spec reads, as text: a regular file (never a FIFO, which would block, or a
    device) of at most MAX_SPEC_BYTES, in UTF-8. Raises SpecInvalid naming the file."""
    file = str(path)

    def fail(message: str, line: int | None = None) -> SpecInvalid:
        return SpecInvalid([Problem(message, file=file, line=line)])

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else _kind(info.st_mode)
            raise fail(f"{what} file is {kind}, not a regular file")
        if info.st_size > MAX_SPEC_BYTES:
            raise fail(
                f"{what} file is {info.st_size:,} bytes, more than the {MAX_SPEC_BYTES:,} allowed"
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail(f"{what} file not found") from None
    except OSError as exc:
        raise fail(f"cannot read {what} file: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise fail(f"not UTF-8 text (byte {exc.start})", line) from None


def not_regular(path: Path) -> str | None:
    """What `path` is if it exists and is no regular file ("a named pipe (FIFO)", "a
    folder", ...): reading it could block or never end. None otherwise."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else _kind(mode)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def load_yaml(path: Path, *, what: str = "spec") -> Any:
    """Parse one YAML file safely, raising SpecInvalid with the file and line on any problem."""
    text = read_text(path, what=what)
    try:
        data = _parse(text)
        if _expanded_size(data, {}) > MAX_NODES:
            raise ValueError(f"YAML aliases expand to more than {MAX_NODES:,} values")
    except RecursionError:
        raise _problem(path, "YAML is nested too deeply") from None
    except _Failed as exc:
        raise _problem(path, str(exc), exc.line) from None
    except ValueError as exc:
        raise _problem(path, str(exc)) from None
    return data


class _Failed(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _problem(path: Path, message: str, line: int | None = None) -> SpecInvalid:
    return SpecInvalid([Problem(message, file=str(path), line=line)])


def _count_values(text: str) -> None:
    """_Failed once the document holds more than MAX_WRITTEN_NODES values: counted from the
    parser's events (fast, in constant memory), before any is built."""
    count = 0
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, _NODE_EVENTS):
            count += 1
            if count > MAX_WRITTEN_NODES:
                raise _Failed(
                    f"the file holds more than {MAX_WRITTEN_NODES:,} values; a list this long "
                    "belongs in a CSV (rows: or cases_file:)",
                    event.start_mark.line + 1 if event.start_mark else None,
                )


def _parse(text: str) -> Any:
    """The YAML document in `text`; _Failed with the line of a problem."""
    try:
        _count_values(text)
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        if "nesting depth" in message:  # newer PyYAML parsers have a limit of their own
            raise _Failed("YAML is nested too deeply", mark.line + 1 if mark else None) from None
        message, line = yaml_problem(exc, text)
        raise _Failed(f"YAML error: {message}", line) from None
    except yaml.YAMLError as exc:
        raise _Failed(f"YAML error: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a tag's constructor: `!!float x`
        shown = str(exc) if len(str(exc)) <= 120 else str(exc)[:120] + "..."
        raise _Failed(f"YAML error: a value does not fit its tag ({shown})") from None


def line_of(doc: Any, path: Sequence[Any]) -> int | None:
    """The line of the deepest part of `path` inside a loaded document that has one."""
    line: int | None = getattr(doc, "line", None)
    node = doc
    for part in path:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line
