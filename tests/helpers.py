"""Helpers shared by the tests: file trees written inline, and the CLI run in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path

from click.testing import CliRunner, Result

from flux_pipeline.cli import cli


def build_file_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write each file (text dedented) under `root`; returns `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return root


def write_spec(root: Path, text: str, name: str = "spec.yaml") -> Path:
    build_file_tree(root, {name: text})
    return root / name


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process with stderr kept apart from stdout."""
    return CliRunner().invoke(
        cli, list(args), env=env, catch_exceptions=False, prog_name="flux-pipeline"
    )
