"""Bad specs: each gives a clear one-line error with file:line, exit 1 and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_file_tree, invoke, write_spec

BILLION_LAUGHS = """
version: 1
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
jobs: [{name: x, prompt: *h}]
"""

CASES = {
    "yaml syntax": ("version: 1\njobs: [\n", ":3: YAML error: "),
    "not a mapping": ("- just\n- a list\n", ":1: the spec must be a mapping, not a list"),
    "empty": ("", ": the spec is empty"),
    "unknown key": (
        "version: 1\njobs:\n  - name: a\n    promt: x\n",
        ":4: jobs.0: unknown key 'promt' (did you mean 'prompt'?)",
    ),
    "unknown top key": (
        "version: 1\ndefault: {}\njobs: [{name: a, prompt: b}]\n",
        ":2: unknown key 'default' (did you mean 'defaults'?)",
    ),
    "undefined variable": (
        "version: 1\njobs:\n  - name: a\n    prompt: '{{ colour }}'\n",
        ":4 job \"a\": prompt: undefined variable 'colour'",
    ),
    "mro escape": (
        "version: 1\njobs:\n  - name: a\n    prompt: \"{{ ''.__class__.__mro__ }}\"\n",
        ":4 job \"a\": prompt: unsafe template: access to attribute '__class__'",
    ),
    "attr escape": (
        "version: 1\njobs:\n  - name: a\n    prompt: \"{{ ''|attr('__class__') }}\"\n",
        "prompt: unsafe template: access to attribute '__class__'",
    ),
    "format escape": (
        "version: 1\njobs:\n  - name: a\n    prompt: \"{{ '{0.__class__}'.format(1) }}\"\n",
        "prompt: unsafe template: access to attribute '__class__'",
    ),
    "huge string": (
        "version: 1\njobs:\n  - name: a\n    prompt: \"{{ 'x' * 10**9 }}\"\n",
        "prompt: unsafe template: the result of * would be too large",
    ),
    "python tag": (
        "version: 1\njobs: !!python/object/apply:os.system ['echo pwned']\n",
        ":2: YAML error: could not determine a constructor for the tag",
    ),
    "alias bomb": (BILLION_LAUGHS, ": YAML aliases expand to more than 1,000,000 values"),
    "duplicate key": (
        "version: 1\njobs: []\njobs: [{name: a, prompt: b}]\n",
        ":3: YAML error: duplicate key 'jobs' (first on line 2)",
    ),
    "dotdot name": (
        "version: 1\njobs:\n  - {name: ../escape, prompt: p}\n",
        ":3 job \"../escape\": name: the name must not contain empty, '.' or '..' path segments",
    ),
    "absolute name": (
        "version: 1\njobs:\n  - {name: /etc/x, prompt: p}\n",
        "name: the name must be a relative path",
    ),
    "duplicate names": (
        "version: 1\njobs:\n  - name: same\n    prompt: '{{ c }}'\n    matrix: {c: [red, blue]}\n",
        ":3 job \"same\": name: 2 requests write the file 'same': "
        'job "same" {c: red}; job "same" {c: blue}',
    ),
    "missing prompt_file": (
        "version: 1\njobs:\n  - {name: a, prompt_file: nowhere.j2}\n",
        ':3 job "a": prompt_file: template file not found in the spec\'s folder or templates/: '
        "nowhere.j2",
    ),
    "prompt_file outside": (
        "version: 1\njobs:\n  - {name: a, prompt_file: ../../../etc/passwd}\n",
        "template file not found",
    ),
    "unknown model": (
        "version: 1\nmodel: flux-ultra-max\njobs:\n  - {name: a, prompt: p}\n",
        ":2 job \"a\": model: unknown model 'flux-ultra-max'; close ones: ",
    ),
    "bad size": (
        "version: 1\njobs:\n  - name: hero\n    prompt: p\n    matrix: {style: [neon]}\n"
        "    request:\n      image_size: {width: 1000, height: 768}\n",
        ':7 job "hero" {style: neon}: image_size.width: 1000 is not a multiple of 32',
    ),
    "deep nesting": (
        "version: 1\njobs: " + "[" * 1000 + "]" * 1000 + "\n",
        ": YAML is nested too deeply",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_gives_one_clear_error(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    path = (
        write_spec(tmp_path, text)
        if text
        else build_file_tree(tmp_path, {"spec.yaml": ""}) / "spec.yaml"
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    *errors, count = result.stderr.splitlines()
    assert count.endswith(("problem found", "problems found"))
    assert all(line.startswith(f"error: {path}") for line in errors), errors
    assert any(expected in line for line in errors), errors


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: {path}:2: not UTF-8 text (byte 20)"


def test_cases_file_with_a_missing_column(tmp_path: Path) -> None:
    build_file_tree(tmp_path, {"rows.csv": "product,style\nkettle,neon\ntoaster\n"})
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "{{ product }}"
            prompt: "{{ style }}"
            cases_file: rows.csv
    """,
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"error: {tmp_path / 'rows.csv'}:3: cases_file: row 3 has a different number of "
        "columns than the header"
    )


def test_cases_file_without_a_column_the_template_uses(tmp_path: Path) -> None:
    build_file_tree(tmp_path, {"rows.csv": "product\nkettle\n"})
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "{{ product }}"
            prompt: "{{ style }}"
            cases_file: rows.csv
    """,
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert (
        f'error: {path}:4 job "{{{{ product }}}}" {{product: kettle}}: prompt: '
        "undefined variable 'style'"
    ) in result.stderr


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "a-{{ w }}"
            prompt: p
            matrix: {w: [1000, 1024, 1030]}
            request: {image_size: {width: "{{ w }}", height: 768}, num_image: 2}
    """,
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == "5 problems found"
    assert sum("not a multiple of 32" in line for line in lines) == 2
    assert sum("num_image: unknown field" in line for line in lines) == 3


def test_missing_spec_file(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: {tmp_path / 'nope.yaml'}: spec file not found"


def test_every_failing_field_of_a_request_is_reported(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        model: flux-pro/v1.1
        jobs:
          - name: "a-{{ i }}"
            prompt: p
            matrix: {i: [1, 2, 3, 4, 5, 6]}
            request:
              guidance_scale: 3.5
              num_inference_steps: 20
              image_size: {width: 8192, height: 8192}
        """,
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    for field in ("guidance_scale", "num_inference_steps", "image_size.width", "image_size.height"):
        shown = [line for line in lines if f"}}: {field}: " in line]
        assert len(shown) == 3, (field, lines)  # the first three combinations, then counted
        assert any(line.startswith("  ... and 3 more like it (" + field) for line in lines)
    assert lines[-1] == "24 problems found"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (
            'version: 1\njobs:\n  - name: "abc\n    prompt: p\n  - name: b\n    prompt: q\n\n\n',
            3,
            "the quote opened at line 3 is never closed",
        ),
        ("version: 1\njobs:\n  - name: a\n     prompt: p\n", 4, "check the indentation of line 4"),
        (
            "version: 1\njobs:\n  - name:a\n    prompt: p\n",
            4,
            "a key needs a space after its colon",
        ),
        ("version: 1\njobs:\n\t- name: a\n", 3, "YAML indents with spaces, not tabs"),
    ],
    ids=["unclosed quote", "indentation", "no space after colon", "tab"],
)
def test_yaml_errors_point_where_the_mistake_is_with_a_hint(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {spec}:{line}: YAML error: ")
    assert f"hint: {says}" in result.stderr


def test_an_undefined_variable_close_to_a_defined_one_gets_a_did_you_mean(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {name: 'a-{{ style }}', prompt: '{{ stlye }}', matrix: {style: [x]}}\n",
    )
    result = invoke("validate", str(spec))
    assert "prompt: undefined variable 'stlye' (did you mean 'style'?)" in result.stderr


def test_every_phase_reports_its_problems_in_one_validate(tmp_path: Path) -> None:
    """A bad exclude key, an undefined variable, a misspelt field and a size out of range:
    one run of validate names all four."""
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "a-{{ style }}"
            prompt: "{{ subjekt }} in {{ style }}"
            matrix:
              style: [ink, oil]
              exclude: [{stlye: ink}]
          - name: "b-{{ style }}"
            prompt: "a fox in {{ style }}"
            matrix: {style: [ink]}
            request:
              guidance_scle: 3
              image_size: {width: 99999, height: 512}
        """,
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    said = result.stderr
    assert "'stlye' is no axis or row column (did you mean 'style'?)" in said
    assert "undefined variable 'subjekt'" in said
    assert "guidance_scle" in said
    assert "width" in said and "99999" in said


def test_a_variable_only_cases_rows_have_is_explained(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "{{ prompt_id }}-{{ style }}"
            prompt: "{{ text }} in {{ style }}"
            matrix: {style: [ink, oil]}
            cases: [{prompt_id: fox, text: a red fox, style: ink}]
        """,
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert "undefined variable 'prompt_id'" in result.stderr
    assert "cases rows are added to the matrix's combinations, not crossed with them" in (
        result.stderr
    )
