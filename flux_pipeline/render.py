"""Jinja rendering, in the sandbox.

Templates run in Jinja's immutable sandbox with `StrictUndefined`. On top of the sandbox's own
limits (`range` is capped), operators that can build huge values (`'x' * 10**9`, `10 ** 10**9`)
are checked, and every rendered value is capped in size.

Request fields are rendered to native types when the template is one expression:
`"{{ 1000 + index }}"` gives the integer 1000 and `"{{ size }}"` the mapping `size` holds.
A template with text around or between expressions always gives a string, and a string with no
template syntax is left exactly as written (`safety_tolerance: "2"` stays a string).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.nativetypes import NativeCodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RENDERED_CHARS = 100_000
MAX_POWER = 4096


def slug(value: Any) -> str:
    """`Red Kettle (2L)` -> `red-kettle-2l`: lower case ASCII letters, digits and dashes."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class _ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses files whose real path lies outside its folders."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        real = Path(filename).resolve()
        roots = [Path(p).resolve() for p in self.searchpath]
        if not any(real.is_relative_to(root) for root in roots):
            raise jinja2.TemplateNotFound(template)
        return source, filename, uptodate


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and (len(seq) * times > MAX_RENDERED_CHARS)
                ):
                    raise SecurityError("the result of * would be too large")
        return super().call_binop(context, operator, left, right)


def template_folders(spec_folder: Path) -> list[Path]:
    """Where `prompt_file` and `{% include %}` look: the spec's folder and `templates/` folders."""
    candidates = [spec_folder, spec_folder / "templates", spec_folder.parent / "templates"]
    return [p for p in candidates if p.is_dir()]


class _NativeSandbox(_Sandbox):
    """The sandbox, with expressions' values kept as they are instead of made into strings."""

    code_generator_class = NativeCodeGenerator


class Renderer:
    """The two sandboxed environments of one spec: text (prompts, names) and native (fields)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        loader = _ConfinedLoader([str(f) for f in folders])
        self.text = _Sandbox(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False)
        self.native = _NativeSandbox(loader=loader, undefined=jinja2.StrictUndefined)
        for env in (self.text, self.native):
            env.filters["slug"] = slug

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

    __slots__ = ("_template", "_native", "source", "variables")

    def __init__(
        self, env: jinja2.Environment, ast: nodes.Template, source: str, *, native: bool
    ) -> None:
        self.source = source
        self.variables = frozenset(meta.find_undeclared_variables(ast))
        self._template = env.from_string(ast)
        self._native = native

    def render(self, context: Mapping[str, Any]) -> Any:
        if self._native:
            chunks = list(
                self._template.root_render_func(self._template.new_context(dict(context)))
            )
            if len(chunks) == 1:
                return _capped(chunks[0])
            return _capped("".join(map(str, chunks)))
        return _capped(self._template.render(context))


def _single_expression(ast: nodes.Template) -> bool:
    return (
        len(ast.body) == 1
        and isinstance(ast.body[0], nodes.Output)
        and (
            len(ast.body[0].nodes) == 1 and not isinstance(ast.body[0].nodes[0], nodes.TemplateData)
        )
    )


def _capped(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_RENDERED_CHARS:
        raise SecurityError(f"rendered text is longer than {MAX_RENDERED_CHARS:,} characters")
    return value


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


def describe_error(exc: Exception) -> str:
    """A one-line account of a Jinja failure for a spec error message."""
    if isinstance(exc, jinja2.UndefinedError):
        match = re.search(r"'([^']+)' is undefined", str(exc))
        if match:
            return f"undefined variable {match.group(1)!r}"
        return str(exc)
    if isinstance(exc, SecurityError):
        return f"unsafe template: {exc}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax error: {exc.message} (template line {exc.lineno})"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template file not found in the spec's folder or templates/: {exc.name}"
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
