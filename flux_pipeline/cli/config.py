"""Project settings: `[tool.flux-pipeline]` in the nearest `pyproject.toml` from a spec's
folder upward (or a `flux-pipeline.toml` beside it, whose top level is that table), and the
prices a user gives (`[tool.flux-pipeline.prices]`, `--price MODEL=CREDITS`)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


def project_settings(start: Path) -> tuple[dict[str, Any], Path | None]:
    """The project's settings and the file they came from (none: {} and None)."""
    for folder in [start.resolve(), *start.resolve().parents]:
        own = folder / "flux-pipeline.toml"
        if own.is_file():
            return _read(own), own
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _read(pyproject).get("tool", {}).get("flux-pipeline")
            if isinstance(table, dict):
                return table, pyproject
    return {}, None


def _read(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        return data
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def prices(
    settings: Mapping[str, Any], source: Path | None, given: Iterable[str]
) -> tuple[dict[str, float], dict[str, str]]:
    """Credits per image by model (the project's, then `--price` over them) and where each
    came from. ConfigError for an unknown model or a price that is not a positive number."""
    from ..provider.registry import registry

    known = sorted(registry())
    found: dict[str, float] = {}
    origin: dict[str, str] = {}
    table = settings.get("prices", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [tool.flux-pipeline.prices] must be a table")
    pairs = [(str(m), v, f"{source} [tool.flux-pipeline.prices]") for m, v in table.items()]
    for text in given:
        model, sep, value = text.partition("=")
        if not sep:
            raise ConfigError(f"--price {text!r}: give MODEL=CREDITS (credits per image)")
        pairs.append((model.strip(), value.strip(), "--price"))
    for model, value, where in pairs:
        if model not in known:
            raise ConfigError(f"{where}: no model {model!r}{did_you_mean(model, known)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ConfigError(f"{where}: {model}'s price must be a positive number, not {value!r}")
        found[model], origin[model] = number, where
    return found, origin


def configured_remote(
    specs: Sequence[Path], options: dict[str, Any], *, read_only: bool = False
) -> Any:
    """The remote cache the options (popped from `options`), FLUX_PIPELINE_REMOTE or the
    project's settings name, opened and checked; None when there is none. RemoteError
    (exit 2) when it cannot be used, unless --remote-optional (then a warning on stderr)."""
    import os

    import click

    from ..store.remote import REMOTE_ENV, RemoteError, open_remote

    settings, _ = project_settings(specs[0].parent if specs else Path("."))
    url = options.pop("remote_url", None)
    no_remote = options.pop("no_remote", False)
    read_only = options.pop("remote_read_only", False) or read_only
    optional = options.pop("remote_optional", False)
    url = url or os.environ.get(REMOTE_ENV) or settings.get("remote")
    if no_remote or not url:
        return None
    try:
        return open_remote(str(url), read_only=read_only)
    except RemoteError as exc:
        if not optional:
            raise
        click.echo(f"warning: {exc}; going on without it (--remote-optional)", err=True)
        return None
