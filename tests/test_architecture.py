"""The package's shape, as docs/architecture.md describes it: stage folders that import only
the stages below them (import-linter's contract), small modules and functions, and the page
naming every module under its folder."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "flux_pipeline"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
PAGE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _sections() -> dict[str, str]:
    """The page's module tables by folder ("" for the root)."""
    parts = re.split(r"^### `?([\w/ ]+?)/?`?$", PAGE, flags=re.M)
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    return {("" if name == "The root" else name): text for name, text in found.items()}


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(module: Path) -> None:
    source = module.read_text(encoding="utf-8")
    assert source.count("\n") <= 400
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno < 60, f"{node.name} is too long"


def test_the_page_names_every_module_under_its_folder() -> None:
    sections = _sections()
    for module in MODULES:
        if module.name in ("__init__.py", "__main__.py"):
            continue
        folder = module.parent.relative_to(PACKAGE).parts
        section = sections.get(folder[0] if folder else "", "")
        assert f"| `{module.stem}` |" in section, f"{module.relative_to(PACKAGE)}"


def test_the_folders_are_the_ones_on_the_page() -> None:
    folders = {
        p.name
        for p in PACKAGE.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name != "__pycache__"
    }
    assert folders == set(_sections()) - {""}
    for folder in folders:  # each says what it owns and what it may import
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, folder


def test_the_root_holds_at_most_six_modules() -> None:
    assert len([p for p in PACKAGE.glob("*.py")]) <= 6


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_the_layers_contract_holds_and_catches_an_upward_import(tmp_path: Path) -> None:
    kept = _lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "1 kept, 0 broken" in kept.stdout

    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(PACKAGE, copy / "flux_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    client = copy / "flux_pipeline" / "provider" / "client.py"
    client.write_text(client.read_text() + "\nfrom ..running import runner  # upward\n")
    broken = _lint_imports(copy)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "0 kept, 1 broken" in broken.stdout
    assert "flux_pipeline.provider.client -> flux_pipeline.running.runner" in broken.stdout
