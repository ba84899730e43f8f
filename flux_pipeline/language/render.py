"""Jinja rendering, in the sandbox.

Templates run in Jinja's immutable sandbox with `StrictUndefined`. On top of the sandbox's own
limits (`range` is capped), everything a template can do is bounded before it is done:

- steps: every loop iteration and every call counts against one budget for the whole spec
  (`step_budget`), so nested loops or a macro that calls itself twice end quickly;
- values: `*`, `**` and `%` are checked before they compute (strings and lists past
  `MAX_RENDERED_CHARS`, integers past `MAX_INT_BITS`), and so are the widths that `%`,
  `format`, `center` and their kin would pad to;
- output: a template stops as soon as it has written more than `MAX_RENDERED_CHARS`, and what
  it wrote counts against the step budget (a spec renders at most about 10 M characters).

Request fields are rendered to native types when the template is one expression:
`"{{ 1000 + index }}"` gives the integer 1000 and `"{{ size }}"` the mapping `size` holds.
A template with text around or between expressions always gives a string, and a string with no
template syntax is left exactly as written (`safety_tolerance: "2"` stays a string).

`image_file(PATH)` reads a local input image (inside the spec's folder) once, checks it, and
gives the reference that a request carries in its place (`inputs.py`); `stem` is a path's file
name without its extension.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.nativetypes import NativeCodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from ..errors import Explained, did_you_mean
from ..provider.inputs import InputFiles
from .sizes import MAX_RENDERED_CHARS, check_method, check_widths, guard_filters
from .yaml_lines import MAX_SPEC_BYTES, not_regular

COUNTED = "__flux_counted"  # the global that counts a loop's iterations
MAX_ITEMS = 10_000  # items of a rendered list or mapping, nested ones included
MAX_POWER = 4096
TOO_LONG = f"rendered text is longer than {MAX_RENDERED_CHARS:,} characters"
MAX_INT_BITS = 100_000  # about 30,000 digits
MAX_STEPS = 2_000_000  # loop iterations and calls, across all templates of a spec
OUTPUT_CHARS_PER_STEP = 5  # so a spec renders at most 10 M characters in all
CALL_STEPS = 20  # a call (a macro's above all) costs about as much as 20 loop iterations
_steps: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("steps", default=None)


@contextlib.contextmanager
def step_budget(limit: int = MAX_STEPS) -> Iterator[None]:
    """Count every loop iteration and call of the templates rendered in the block against
    one budget (a spec's expansion); SecurityError once it is spent."""
    token = _steps.set([limit])
    try:
        yield
    finally:
        _steps.reset(token)


def _spend(steps: int = 1) -> None:
    left = _steps.get()
    if left is not None:
        left[0] -= steps
        if left[0] < 0:
            raise SecurityError(
                f"the templates take more than {MAX_STEPS:,} loop iterations and calls "
                "(nested loops, or a macro that calls itself?)"
            )


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """A loop's items, each one counted against the step budget."""
    for item in iterable:
        _spend()
        yield item


def stem(value: Any) -> str:
    """A path's file name without its extension: `photos/mug.jpg` -> `mug`."""
    return PurePosixPath(str(value)).stem


def _image_file(inputs: InputFiles) -> Callable[[Any], str]:
    def image_file(path: Any) -> str:
        """A local input image, checked, as the reference the client sends as a data: URI."""
        return inputs.load(path).text

    return image_file


def slug(value: Any) -> str:
    """`Red Kettle (2L)` -> `red-kettle-2l`: lower case ASCII letters, digits and dashes."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class _ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses files whose real path lies outside its folders, and
    what is not a regular file (a FIFO would block the read forever), saying what it is."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        pieces = jinja2.loaders.split_template_path(template)
        for folder in self.searchpath:
            path = Path(folder, *pieces)
            kind = not_regular(path)
            if kind not in (None, "a folder"):  # a folder is passed over, as Jinja does
                raise Explained(f"template file {template!r} is {kind}, not a regular file")
            if kind is None and path.is_file() and path.stat().st_size > MAX_SPEC_BYTES:
                raise Explained(
                    f"template file {template!r} is larger than {MAX_SPEC_BYTES:,} bytes"
                )
        source, filename, uptodate = super().get_source(environment, template)
        real = Path(filename).resolve()
        roots = [Path(p).resolve() for p in self.searchpath]
        if not any(real.is_relative_to(root) for root in roots):
            raise jinja2.TemplateNotFound(template)
        return source, filename, uptodate


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "%"])

    def call(
        __self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any
    ) -> Any:
        _spend(CALL_STEPS)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            check_method(owner, name, args)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map`, refused at access if a field pads past the cap."""
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            check_widths(value.__self__)
        return wrapped

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "%" and isinstance(left, str):
            check_widths(left)
        if _int_bits(operator, left, right) > MAX_INT_BITS:
            raise SecurityError(f"the result of {operator} would be too large a number")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    size = len(seq) * times
                    if size > (MAX_RENDERED_CHARS if isinstance(seq, str) else MAX_ITEMS):
                        raise SecurityError("the result of * would be too large")
                    _spend(size // (1000 if isinstance(seq, str) else 10))
        return super().call_binop(context, operator, left, right)


def _int_bits(operator: str, left: Any, right: Any) -> int:
    """At least how many bits an integer `*` or `**` makes (0 for anything else)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right)):
        return 0
    if operator == "*":
        return int(left.bit_length() + right.bit_length())
    if operator == "**" and right > 0:
        return int((left.bit_length() - 1) * right)
    return 0


def template_folders(spec_folder: Path) -> list[Path]:
    """Where `prompt_file` and `{% include %}` look: the spec's folder and `templates/` folders."""
    candidates = [spec_folder, spec_folder / "templates", spec_folder.parent / "templates"]
    return [p for p in candidates if p.is_dir()]


class _NativeSandbox(_Sandbox):
    """The sandbox, with expressions' values kept as they are instead of made into strings."""

    code_generator_class = NativeCodeGenerator


class Renderer:
    """The two sandboxed environments of one spec: text (prompts, names) and native (fields)."""

    def __init__(self, folders: Iterable[Path], inputs: InputFiles | None = None) -> None:
        loader = _ConfinedLoader([str(f) for f in folders])
        self.text = _Sandbox(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False)
        self.native = _NativeSandbox(loader=loader, undefined=jinja2.StrictUndefined)
        for env in (self.text, self.native):
            env.filters["slug"] = slug
            env.filters["stem"] = stem
            if inputs is not None:
                env.globals["image_file"] = _image_file(inputs)
            guard_filters(env.filters)
            env.globals[COUNTED] = _counted
            env.globals["range"] = _range
            del env.globals["lipsum"]  # placeholder text, at any length: no use in a prompt

    def text_template(self, source: str) -> Template:
        return Template(self.text, self.text.parse(source), source, native=False)

    def file_template(self, name: str) -> Template:
        source, _, _ = self.text.loader.get_source(self.text, name)  # type: ignore[union-attr]
        return self.text_template(source)

    def compile_value(self, value: Any) -> Any:
        """Compile every templated string inside a request value; others stay as they are."""
        if isinstance(value, str):
            if not is_template(value):
                return value
            ast = self.native.parse(value)
            if _single_expression(ast):
                return Template(self.native, ast, value, native=True)
            return Template(self.text, ast, value, native=False)
        if isinstance(value, dict):
            return {k: self.compile_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.compile_value(v) for v in value]
        return value


class Template:
    """A compiled template that renders to a string or, for one expression, a native value."""

    __slots__ = ("_template", "_native", "_globals", "source", "variables")

    def __init__(
        self, env: jinja2.Environment, ast: nodes.Template, source: str, *, native: bool
    ) -> None:
        self.source = source
        self.variables = frozenset(meta.find_undeclared_variables(ast))
        for loop in ast.find_all(nodes.For):  # every iteration is counted
            counter = nodes.Name(COUNTED, "load", lineno=loop.lineno)
            loop.iter = nodes.Call(counter, [loop.iter], [], None, None, lineno=loop.lineno)
        self._template = env.from_string(ast)
        self._native = native
        # The globals as one plain dict, merged with each context in one step (Jinja's own
        # new_context walks a ChainMap of them per render: a third of a request's expansion).
        self._globals = dict(self._template.globals)

    def render(self, context: Mapping[str, Any]) -> Any:
        if _steps.get() is None:
            with step_budget():
                return self._render(context)
        return self._render(context)

    def _render(self, context: Mapping[str, Any]) -> Any:
        """Render, stopping as soon as the output passes the size cap."""
        chunks, size = [], 0
        template = self._template
        state = jinja2.runtime.new_context(
            template.environment, template.name, template.blocks, {**self._globals, **context}, True
        )
        for chunk in template.root_render_func(state):
            if isinstance(chunk, jinja2.Undefined):
                str(chunk)  # a native value left undefined: StrictUndefined raises here
            chunks.append(chunk)
            size += len(chunk) if isinstance(chunk, str) else 0
            if size > MAX_RENDERED_CHARS:
                raise SecurityError(TOO_LONG)
        _spend(size // OUTPUT_CHARS_PER_STEP)  # what a spec renders in all is bounded too
        if self._native and len(chunks) == 1:
            return _capped(chunks[0])
        return _capped("".join(map(str, chunks)))


def _single_expression(ast: nodes.Template) -> bool:
    return (
        len(ast.body) == 1
        and isinstance(ast.body[0], nodes.Output)
        and (
            len(ast.body[0].nodes) == 1 and not isinstance(ast.body[0].nodes[0], nodes.TemplateData)
        )
    )


def _capped(value: Any) -> Any:
    """The value, if it is within the caps: text up to MAX_RENDERED_CHARS, a list or mapping
    of up to MAX_ITEMS items in all (a request body holds it, for every request)."""
    if isinstance(value, str) and len(value) > MAX_RENDERED_CHARS:
        raise SecurityError(TOO_LONG)
    if isinstance(value, list | tuple | dict) and _items(value, MAX_ITEMS) > MAX_ITEMS:
        raise SecurityError(f"a rendered value holds more than {MAX_ITEMS:,} items")
    return value


def _items(value: Any, limit: int) -> int:
    """How many items a value holds in all, counting no further than past `limit`."""
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if not isinstance(value, list | tuple):
        return 0
    count = len(value)
    for item in value:
        if count > limit:
            break
        if isinstance(item, list | tuple | dict):
            count += _items(item, limit - count)
    return count


def _range(*args: int) -> range:
    """The sandbox's range, its length counted against the step budget (filters such as
    `list` and `join` walk it without a loop)."""
    made: range = safe_range(*args)
    _spend(len(made) // 4)
    return made


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render what `compile_value` compiled."""
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def describe_error(exc: Exception, names: Iterable[str] = ()) -> str:
    """A one-line account of a Jinja failure for a spec error message; an undefined variable
    close to one of `names` (the variables the template had) gets a "did you mean"."""
    if isinstance(exc, jinja2.UndefinedError):
        match = re.search(r"'([^']+)' is undefined", str(exc))
        if match:
            known = [n for n in names if not n.startswith("__")]
            return f"undefined variable {match.group(1)!r}{did_you_mean(match.group(1), known)}"
        return str(exc)
    if isinstance(exc, SecurityError):
        return f"unsafe template: {exc}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax error: {exc.message} (template line {exc.lineno})"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template file not found in the spec's folder or templates/: {exc.name}"
    if isinstance(exc, Explained):
        return str(exc)
    return f"template error: {type(exc).__name__}: {exc}"


#: What rendering can raise, to be turned into a Problem by the caller.
TEMPLATE_ERRORS: tuple[type[Exception], ...] = (
    jinja2.TemplateError,
    ArithmeticError,
    TypeError,
    ValueError,
    AttributeError,
    KeyError,
    IndexError,
    RecursionError,
    MemoryError,
)
