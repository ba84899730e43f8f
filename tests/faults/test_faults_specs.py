"""Hostile specs: each gives a clear error quickly, in bounded memory (the CLI runs in a
process capped at 1 GiB of address space and 20 s), and nothing escapes the sandbox."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

LIMIT = 1 << 30


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flux_pipeline", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=_cap,
    )


def job(prompt: str) -> str:
    return f'version: 1\njobs:\n  - name: a\n    prompt: "{prompt}"\n'


NESTED = "version: 1\njobs: " + "[" * 1000 + "]" * 1000 + "\n"
LAUGHS = (
    "version: 1\n"
    + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10 if i else ["lol"] * 10) + "]\n"
        for i in range(9)
    )
    + "jobs: [{name: a, prompt: *l8}]\n"
)

CASES: dict[str, tuple[str | bytes, str]] = {
    "mro": (job("{{ ''.__class__.__mro__ }}"), "unsafe template: access to attribute"),
    "attr format": (
        job("{{ ('{0.__class__}'|attr('format'))(1) }}"),
        "unsafe template: access to attribute '__class__'",
    ),
    "format_map": (
        job("{{ '{a.__class__}'.format_map({'a': 1}) }}"),
        "unsafe template: access to attribute '__class__'",
    ),
    "cycler globals": (
        job("{{ cycler.__init__.__globals__.os }}"),
        "unsafe template: access to attribute '__init__'",
    ),
    "huge range": (
        job("{{ range(10**9)|list|length }}"),
        "Range too big. The sandbox blocks ranges larger than MAX_RANGE",
    ),
    "huge string": (
        job("{{ 'x' * 10**9 }}"),
        "unsafe template: the result of * would be too large",
    ),
    "python tag": (
        "version: 1\njobs: !!python/object/apply:os.system ['touch pwned']\n",
        "could not determine a constructor for the tag",
    ),
    "nan": (
        "version: 1\njobs: [{name: a, prompt: p, request: {guidance_scale: .nan}}]\n",
        'spec.yaml:2 job "a": guidance_scale: nan is not a number JSON can carry',
    ),
    "infinity": (
        "version: 1\ndefaults: {guidance_scale: -.inf}\njobs: [{name: a, prompt: p}]\n",
        'spec.yaml:2 job "a": guidance_scale: -inf is not a number JSON can carry',
    ),
    "huge seed": (
        "version: 1\njobs: [{name: a, prompt: p, request: {seed: 10000000000000000000000000}}]\n",
        "seed: 10000000000000000000000000 is beyond JSON's safe integer range (2^53)",
    ),
    "on key": (
        "version: 1\njobs: [{name: a, prompt: p, matrix: {on: [1, 2]}}]\n",
        "spec.yaml:2: YAML error: the key 'on' is read by YAML as True, not as text; quote it",
    ),
    "nested loops": (
        job("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
        "unsafe template: the templates take more than 2,000,000 loop iterations and calls",
    ),
    "nested loops over text": (
        job("{% set s = 'x' * 99999 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"),
        "unsafe template: the templates take more than 2,000,000 loop iterations and calls",
    ),
    "macro fan-out": (
        job(
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(60) }}"
        ),
        "unsafe template: the templates take more than 2,000,000 loop iterations and calls",
    ),
    "center": (job("{{ 'x'|center(900000000) }}"), "center would pad past 100,000 characters"),
    "center method": (job("{{ 'x'.center(900000000) }}"), "center() would pad past 100,000"),
    "percent width": (job("{{ '%0900000000d' % 1 }}"), "a format pads past 100,000 characters"),
    "format width": (job("{{ '{:0900000000}'.format(1) }}"), "a format pads past 100,000"),
    "format filter": (job("{{ '%0900000000d'|format(1) }}"), "a format pads past 100,000"),
    "power tower": (
        job("{{ ((10**4096)**4096)**4096 }}"),
        "unsafe template: the result of ** would be too large a number",
    ),
    "big product": (
        job("{% set n = 10**4000 %}{{ n * n * n * n * n * n * n * n * n * n * n }}"),
        "unsafe template: the result of * would be too large a number",
    ),
    "output budget": (
        job("{% for i in range(100000) %}{{ 'xxxxxxxxxx' }}{% endfor %}"),
        "rendered text is longer than 100,000 characters",
    ),
    "too many requests": (
        "version: 1\njobs:\n  - name: '{{ a }}{{ b }}{{ c }}'\n    prompt: p\n    repeat: 1000\n"
        "    matrix: {a: [1, 2, 3], b: " + str(list(range(1000))) + ", c: [1]}\n",
        'spec.yaml:3 job "{{ a }}{{ b }}{{ c }}": the spec makes 3,000,000 requests or more by '
        "this job, more than the 100,000 allowed (--max-spec-requests)",
    ),
    "alias bomb": (LAUGHS, "YAML aliases expand to more than 1,000,000 values"),
    "deep nesting": (NESTED, "YAML is nested too deeply"),
    "duplicate keys": ("version: 1\nversion: 1\njobs: []\n", "duplicate key 'version'"),
    "not utf-8": (b"version: 1\nname: \xff\xfe\n", "not UTF-8 text"),
    "50 MB": (
        b"version: 1\n" + b"#" * (50 * 1024 * 1024) + b"\n",
        "spec file is 52,428,812 bytes, more than the 5,242,880 allowed",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_spec_gives_a_clear_error(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    path = tmp_path / "spec.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    result = validate(path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
