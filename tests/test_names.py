"""Request names become file paths: unsafe, reserved, clashing (even by case or with an image
number) names are validation errors; `/` makes subfolders."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import invoke, write_spec


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Kettle Shot", "may use only letters, digits"),
        ("con", "reserved file name on Windows"),
        ("a/./b", "'.' or '..' path segments"),
        ("C:x", "must be a relative path"),
        ("back\\\\slash", "must be a relative path"),
        ("x" * 201, "more than 200"),
    ],
)
def test_unsafe_names_are_rejected(tmp_path: Path, name: str, reason: str) -> None:
    spec = write_spec(tmp_path, f'version: 1\njobs: [{{name: "{name}", prompt: p}}]\n')
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert reason in result.stderr


def test_names_that_differ_only_in_case_clash(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - {name: Hero, prompt: p}
          - {name: hero, prompt: q}
    """,
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert "2 requests write the file 'hero'" in result.stderr


def test_image_numbers_clash_with_other_names(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - {name: a, prompt: p, request: {num_images: 2}}
          - {name: a-2, prompt: q}
    """,
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert "2 requests write the file 'a-2'" in result.stderr


def test_names_may_make_subfolders(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs: [{name: "{{ p }}/shot", prompt: p, matrix: {p: [kettle, toaster]}}]
    """,
    )
    assert invoke("validate", str(spec)).exit_code == 0
