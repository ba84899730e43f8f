"""Hostile files a pull request can commit beside a spec (`validate` runs on pull requests):
each is refused at the spec's line, never hangs, never crashes. Times are measured in
`bench/fuzz.py --files`; here, what is answered, and a seeded sample of the generator."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzz_files import ATTACKS, attack
from helpers import invoke, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flux_pipeline.language.matrix import MAX_GLOB_FOLDERS


def validate(spec: Path) -> tuple[int, str]:
    result = invoke("validate", str(spec))
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    return result.exit_code, result.stdout + result.stderr


def test_repeated_globstars_walk_the_tree_once(tmp_path: Path) -> None:
    here = tmp_path / "photos"
    for k in range(30):
        here = here / f"d{k}"
    here.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(here / "x.jpg")
    spec = write_spec(
        tmp_path,
        """
        version: 1
        model: flux/kontext-pro/image-to-image
        jobs:
          - name: "e-{{ p | stem }}"
            prompt: p
            matrix: {p: {files: "photos/**/**/**/**/**/**/*.jpg"}}
            request: {image_url: "{{ image_file(p) }}"}
        """,
    )
    assert validate(spec) == (0, f"{spec}: valid, 1 request\n")


def test_a_glob_through_too_many_folders_is_refused_at_its_line(tmp_path: Path) -> None:
    for k in range(MAX_GLOB_FOLDERS + 1):
        (tmp_path / "photos" / f"d{k}").mkdir(parents=True)
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "e-{{ p | stem }}"
            prompt: p
            matrix: {p: {files: "photos/**/*.jpg"}}
        """,
    )
    code, said = validate(spec)
    assert code == 1
    assert "spec.yaml:5" in said and "looks through more than 10,000 folders" in said


def test_brace_globs_offer_alternatives(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.png", "c.gif"):
        (tmp_path / "photos").mkdir(exist_ok=True)
        Image.new("RGB", (64, 64)).save(tmp_path / "photos" / name)
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "e-{{ p | stem }}"
            prompt: "{{ p }}"
            matrix: {p: {files: "photos/*.{jpg,png}"}}
        """,
    )
    assert validate(spec) == (0, f"{spec}: valid, 2 requests\n")


@pytest.mark.parametrize("where", ["rows", "cases_file", "prompt_file", "include"])
def test_a_fifo_is_refused_as_what_it_is(tmp_path: Path, where: str) -> None:
    spec = tmp_path / "spec.yaml"
    for seed in range(50):  # the generator's choice of place, made `where`
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        rng = random.Random(seed)
        if rng.choice(["rows", "cases_file", "prompt_file", "include"]) == where:
            spec = folder / "spec.yaml"
            spec.write_text(ATTACKS["fifo"](random.Random(seed), folder, 0.0))
            break
    code, said = validate(spec)
    assert code == 1
    assert "named pipe (FIFO)" in said and "not found" not in said


def test_rows_past_the_request_cap_are_refused_while_reading(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("i\n" + "".join(f"{k}\n" for k in range(120)))
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "n-{{ i }}"
            prompt: p
            cases_file: rows.csv
        """,
    )
    result = invoke("--max-spec-requests", "100", "validate", str(spec))
    assert result.exit_code == 1
    assert "spec.yaml:5" in result.stderr and "more than 100 rows" in result.stderr


def test_a_rows_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("i,t\n" + "1,x\n" * 1_400_000)  # 5.6 MB
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "n-{{ i }}"
            prompt: p
            matrix: {r: {rows: rows.csv}}
        """,
    )
    code, said = validate(spec)
    assert code == 1 and "more than the 5,242,880 allowed" in said


def test_csv_cells_are_read_by_a_plain_rule(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("n,g,flag,id,word\n3,2.5,true,007,yes\n")
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "n-{{ n }}"
            prompt: "{{ (n + 1) }} {{ g * 2 }} {{ flag is sameas true }} {{ id }} {{ word }}"
            cases_file: cases.csv
        """,
    )
    result = invoke("plan", "--json", str(spec))
    assert result.exit_code == 0, result.stderr
    assert '"prompt": "4 5.0 True 007 yes"' in result.stdout


@pytest.mark.parametrize(
    "bomb",
    [
        "{{ range(10000) | join('y' * 99999) | length }}",
        "{{ ('x' * 90000) | replace('x', 'yy') | length }}",
        "{{ 'y'.join(['a'] * 9000) | replace('a', 'b' * 100) | length }}",
        "{{ ('ab' * 50000).replace('a', 'ccc') | length }}",
    ],
)
def test_join_and_replace_are_refused_before_they_make_too_much(tmp_path: Path, bomb: str) -> None:
    spec = write_spec(tmp_path, f'version: 1\njobs: [{{name: a, prompt: "{bomb}"}}]\n')
    code, said = validate(spec)
    assert code == 1 and "would make more than 100,000 characters" in said


def test_a_huge_vars_list_is_refused_while_parsing(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nvars:\n  big: [" + ",".join("1" for _ in range(150_000)) + "]\n")
    code, said = validate(spec)
    assert code == 1
    assert "spec.yaml:3" in said and "holds more than 100,000 values" in said


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
def test_generated_hostile_files_are_answered_never_a_crash(tmp_path: Path, seed: int) -> None:
    folder = tmp_path / f"case-{seed}"
    _, spec = attack(random.Random(seed), folder, scale=0.02)
    code, _ = validate(spec)
    assert code in (0, 1)
