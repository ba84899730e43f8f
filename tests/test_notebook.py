"""The Python API where the README sends people: the README's notebook snippet in a real
Jupyter kernel (nbclient + ipykernel), `run` and `run_async` inside a running event loop, and
the errors the README names, importable from the package."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

import flux_pipeline

ROOT = Path(__file__).parents[1]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("In a notebook")
    return re.search(r"```python\n(.*?)```", text[start:], re.DOTALL).group(1)  # type: ignore[union-attr]


def test_the_readme_snippet_runs_in_a_jupyter_kernel(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    ignore = shutil.ignore_patterns("out", "*.lock*.json")
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=ignore)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(readme_snippet()),
        nbformat.v4.new_code_cell("print('ok', result.ok, len(paths))"),
    ]
    # ipykernel's own kernel spec: this interpreter, where flux_pipeline is installed.
    client = nbclient.NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = notebook.cells[-1].outputs
    assert outputs and outputs[0].get("text", "").startswith("ok True 4"), outputs
    shown = notebook.cells[0].outputs[-1]
    assert "image/png" in shown.get("data", {})  # the image shows in the notebook


def test_run_works_inside_a_running_event_loop_and_run_async_awaits(tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples/quickstart.yaml", tmp_path)
    spec = tmp_path / "quickstart.yaml"

    async def main() -> tuple[bool, bool]:
        first = flux_pipeline.run(spec, emulator=True)  # no "asyncio.run() cannot be called"
        second = await flux_pipeline.run_async(spec, emulator=True, force=True)
        return first.ok, second.ok

    # Warnings are errors in this suite: a coroutine never awaited would fail it.
    assert asyncio.run(main()) == (True, True)


def test_the_errors_the_readme_names_are_the_packages_and_speak_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert issubclass(flux_pipeline.SpecInvalid, flux_pipeline.FluxPipelineError)
    assert issubclass(flux_pipeline.ConfigError, flux_pipeline.FluxPipelineError)
    monkeypatch.delenv("AIMLAPI_KEY", raising=False)
    shutil.copy(ROOT / "examples/quickstart.yaml", tmp_path)
    with pytest.raises(flux_pipeline.ConfigError) as refused:
        flux_pipeline.run(tmp_path / "quickstart.yaml")
    assert "emulator=True" in str(refused.value) and "--emulator" not in str(refused.value)
