"""The package's shape, as docs/architecture.md describes it: small modules and functions,
and every module named in the page."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "flux_pipeline"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
PAGE = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(module: Path) -> None:
    source = module.read_text(encoding="utf-8")
    assert source.count("\n") <= 400
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno < 60, f"{node.name} is too long"


def test_the_architecture_page_names_every_module() -> None:
    for module in MODULES:
        if module.name in ("__init__.py", "__main__.py") and module.parent == PACKAGE:
            continue
        name = module.stem if module.parent == PACKAGE else module.parent.name
        assert f"`{name}" in PAGE or f"{name}`" in PAGE or f"`{module.stem}`" in PAGE, name
