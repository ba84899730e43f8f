"""The command line: validate, plan, schema and help, on the shipped examples and specs."""

from __future__ import annotations

import json
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from helpers import invoke, schnell_spec, write_spec

from flux_pipeline.cli.app import cli
from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.language.spec import load_spec

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
SHIPPED = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("specs/*.yaml")])


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_validate_and_plan(spec: Path) -> None:
    result = invoke("validate", str(spec))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{spec}: valid, ")
    plan = invoke("plan", "--json", str(spec))
    assert plan.exit_code == 0
    (data,) = json.loads(plan.stdout)["specs"]
    assert data["totals"]["requests"] == len(data["requests"]) > 0


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.name)
def test_schema_accepts_every_shipped_spec(spec: Path) -> None:
    schema = json.loads(invoke("schema").stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(spec.read_text()), schema)


def test_schema_is_committed_for_editors() -> None:
    assert (ROOT / "docs/spec.schema.json").read_text() == invoke("schema").stdout


def test_plan_table_shows_sizes_seeds_and_totals(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        name: shots
        jobs:
          - name: "a-{{ size }}"
            prompt: p
            matrix: {size: [square_hd, portrait_16_9]}
            request: {image_size: "{{ size }}", num_images: 2}
          - name: ultra
            prompt: p
            request: {model: flux-pro/v1.1-ultra, aspect_ratio: "21:9"}
    """,
    )
    result = invoke("plan", str(spec))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STATE", "NAME", "MODEL", "SIZE", "SEED", "IMAGES", "CREDITS"]
    assert lines[1].split()[:4] == ["new", "a-square_hd", "flux-pro", "1024x1024"]
    assert lines[2].split()[:4] == ["new", "a-portrait_16_9", "flux-pro", "576x1024"]
    # 21:9's size is not documented: a likely one, marked, and the image's own is recorded.
    assert lines[3].split()[:4] == ["new", "ultra", "flux-pro/v1.1-ultra", "3136x1344?"]
    assert lines[1].split()[5:] == ["2", "4", "(estimate)"]  # 2 started megapixels each
    assert lines[-1] == (
        f"{spec}: 3 requests (3 new), 5 images in {tmp_path / 'out/shots'}/; to do: 3, "
        "estimated credits: 11 (price table "
        "of 2026-12-07 for flux-pro, flux-pro/v1.1-ultra; the first answers will show the "
        "real cost)"
    )


def test_plan_json_has_one_shape_for_one_spec_or_several(tmp_path: Path) -> None:
    one = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}]\n", "one.yaml")
    two = write_spec(tmp_path, "version: 1\njobs: [{name: b, prompt: p}]\n", "two.yaml")
    single = json.loads(invoke("plan", "--json", str(one)).stdout)
    assert [d["spec"] for d in single["specs"]] == ["one"]
    data = json.loads(invoke("plan", "--json", str(one), str(two)).stdout)["specs"]
    assert [(d["spec"], d["path"]) for d in data] == [("one", str(one)), ("two", str(two))]
    assert data[0]["requests"][0]["body"] == {
        "model": "flux-pro",
        "prompt": "p",
        "seed": data[0]["requests"][0]["seed"],
    }


def test_validate_reports_every_spec_and_fails_if_any_is_invalid(tmp_path: Path) -> None:
    good = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}]\n", "good.yaml")
    bad = write_spec(tmp_path, "version: 2\njobs: [{name: a, prompt: p}]\n", "bad.yaml")
    result = invoke("validate", str(good), str(bad))
    assert result.exit_code == 1
    assert result.stdout == f"{good}: valid, 1 request\n"
    assert result.stderr.startswith(f"error: {bad}:1: version: 1 was expected")


@pytest.mark.parametrize("command", ["", *sorted(cli.commands)])
def test_help_explains_each_command_and_its_exit_codes(command: str) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.stdout and len(result.stdout) > 200
    assert "Exit 0" in result.stdout or "Exit codes: 0 ok" in result.stdout
    # Every option says what it does.
    group = cli.commands[command] if command else cli
    options = [p for p in group.params if isinstance(p, click.Option)]
    assert all(p.help for p in options), [p.name for p in options if not p.help]


def test_global_options_work_after_the_command_and_validate_speaks_json(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "version: 1\njobs:\n  - {name: 'a-{{ i }}', prompt: p, matrix: {i: [1, 2, 3]}}\n",
    )
    assert invoke("validate", "--debug", str(spec)).exit_code == 0
    capped = invoke("validate", str(spec), "--max-spec-requests", "2")
    assert capped.exit_code == 1 and "more than the 2 allowed" in capped.stderr
    result = invoke("validate", "--json", str(spec))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "specs": [
            {"spec": "spec", "path": str(spec), "valid": True, "requests": 3, "problems": []}
        ],
        "problems": 0,
    }
    spec.write_text(spec.read_text().replace("prompt: p", "prompt: p, request: {seed: 0}"))
    failed = invoke("validate", "--json", str(spec))
    assert failed.exit_code == 1
    (entry,) = json.loads(failed.stdout)["specs"]
    assert not entry["valid"] and len(entry["problems"]) == 3
    assert {(p["line"], p["path"]) for p in entry["problems"]} == {(3, "seed")}


def test_requests_not_sent_for_one_reason_are_one_progress_line(tmp_path: Path) -> None:
    import io

    from flux_pipeline.cli.progress import Progress
    from flux_pipeline.running.results import RequestResult, Status

    spec = load_spec(write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}]\n"))
    stream = io.StringIO()
    with Progress(spec, [], stream=stream) as progress:
        for k in range(32):
            progress.update(RequestResult(f"r{k}", Status.NOT_SENT, "interrupted"))
        progress.update(RequestResult("x", Status.FAILED, "HTTP 400"))
    assert stream.getvalue() == "not sent: interrupted\n[33/0] failed: x (HTTP 400)\n"


def test_every_json_output_matches_its_schema_in_docs(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """One shape whatever the number of specs, the same keys across commands (`spec` is the
    name, `path` the file), each described by docs/json/COMMAND.schema.json."""
    spec = schnell_spec(tmp_path, 2)
    bad = write_spec(tmp_path, "version: 1\njobs: [{name: a, promt: p}]\n", "bad.yaml")
    assert (
        invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"}).exit_code
        == 0
    )
    outputs = {
        "validate": [invoke("validate", "--json", str(spec), str(bad))],
        "plan": [
            invoke("plan", "--json", str(spec)),
            invoke("plan", "--json", str(spec), str(spec)),
        ],
        "check": [invoke("check", "--json", str(spec))],
        "diff": [
            invoke("diff", str(spec), "--against", str(spec.with_name("spec.lock.json")), "--json")
        ],
    }
    for command, results in outputs.items():
        schema = json.loads((DOCS / "json" / f"{command}.schema.json").read_text())
        for result in results:
            data = json.loads(result.stdout)
            jsonschema.validate(data, schema)
            for entry in data.get("specs", [data]):
                assert entry["spec"] in ("spec", "bad") and entry["path"].endswith(".yaml")


IMPORTS = """
import sys
from flux_pipeline.cli import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
heavy = ("aiohttp", "httpx", "jsonschema")
print(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}))
"""


def test_validate_and_an_up_to_date_run_import_no_network_library_nor_jsonschema(
    tmp_path: Path,
) -> None:
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "examples/quickstart.yaml", tmp_path)

    def imported(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", IMPORTS, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout.strip().splitlines()[-1]

    assert imported("validate", "quickstart.yaml") == "[]"
    assert "httpx" in imported("run", "--emulator", "quickstart.yaml")  # it had work to do
    assert imported("run", "--emulator", "quickstart.yaml") == "[]"  # nothing to do
