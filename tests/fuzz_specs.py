"""Hostile spec documents, made from a random source: random nesting, YAML tags and anchors,
templates built from filters, operators, loops and macros, huge literals. Shared by the fuzz
test (a seeded sample, through hypothesis's `randoms()`) and `bench/fuzz.py` (10,000)."""

from __future__ import annotations

import random

FRAGMENTS = [
    "{{ x }}",
    "{{ x|upper }}",
    "{{ x|slug }}",
    "{{ x * 100000 }}",
    "{{ 'ab' * 99999 }}",
    "{{ 10 ** 4096 }}",
    "{{ (10 ** 4096) ** 4096 }}",
    "{{ 'x'|center(900000000) }}",
    "{{ '%0900000000d' % 1 }}",
    "{{ '{:0900000000}'.format(1) }}",
    "{{ range(100000)|list|length }}",
    "{{ range(10**9) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(1000) %}{{ i }}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{% macro g() %}{{ g() }}{% endmacro %}{{ g() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ undefined_name }}",
    "{{ x|join(',') }}",
    "{{ [1, 2, 3]|sum }}",
    "{{ 1 / 0 }}",
    "{{ 'a'|int }}",
    "{{ x.y.z }}",
    "{% if %}",
    "{{",
    "}}",
    "{% raw %}{{ x }}{% endraw %}",
    "{{ lipsum(1000) }}",
    "{{ dict(a=1)|tojson }}",
    "{{ x|replace('a', 'a' * 10000) }}",
    "{{ [x] * 100000 }}",
    "{{ 'nan'|float }}",
    "{{ 10 ** 300 * 10 ** 300 }}",
    "{% set ns = namespace(a=1) %}{% set ns.a = 2 %}{{ ns.a }}",
]
SCALARS = [
    "p",
    "",
    0,
    -1,
    2**63,
    10**30,
    1.5,
    float("nan"),
    float("inf"),
    True,
    None,
    "x" * 5000,
    "square_hd",
    "flux-pro",
    "flux/schnell",
    "png",
    "1:1",
]
KEYS = [
    "version",
    "name",
    "model",
    "output",
    "vars",
    "defaults",
    "jobs",
    "prompt",
    "request",
    "matrix",
    "cases",
    "repeat",
    "include",
    "exclude",
    "image_size",
    "width",
    "height",
    "seed",
    "num_images",
    "guidance_scale",
    "output_format",
    "x",
    "on",
    "1",
    "prompt_file",
    "cases_file",
]
RAW = [  # text spliced into the YAML as it is: tags, anchors, aliases, odd scalars
    "!!python/object/apply:os.system ['true']",
    "!!binary aGVsbG8=",
    "&a [1, 2, 3]",
    "*a",
    ".nan",
    "-.inf",
    "0x7fffffffffffffffffff",
    "~",
    "'unterminated",
    "[[[[[[[[[[",
    "{a: 1, a: 2}",
    "<<: {x: 1}",
    "!!set {a, b}",
    "2001-12-14",
    "!!float 1e400",
    "&b {x: *b}",
]


def template(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS + ["a ", "b "]) for _ in range(rng.randint(1, 3)))


def value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth < 4 and roll < 0.2:
        return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 4 and roll < 0.35:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.65:
        return template(rng)
    return rng.choice(SCALARS)


FIELDS = ["seed", "num_images", "guidance_scale", "output_format", "image_size", "x"]
MODELS = ["flux-pro", "flux/schnell", "flux-pro/v1.1-ultra", "{{ x }}", "nope"]


def spec_document(rng: random.Random) -> object:
    """A spec-shaped document: mostly the right structure (so that most reach the templates
    and the schema of the API), with hostile parts anywhere."""
    job: dict[str, object] = {"name": rng.choice(["a", "{{ x }}", "n{{ index }}", template(rng)])}
    job["prompt"] = template(rng)
    if rng.random() < 0.7:
        job["matrix"] = {"x": [value(rng, 3) for _ in range(rng.randint(1, 4))]}
    if rng.random() < 0.5:
        job["request"] = {rng.choice(FIELDS): value(rng, 3) for _ in range(rng.randint(1, 3))}
    if rng.random() < 0.2:
        job["repeat"] = rng.choice([1, 2, 1000, 10**6])
    doc: dict[str, object] = {"version": rng.choice([1] * 9 + ["1"]), "jobs": [job]}
    if rng.random() < 0.3:
        doc["model"] = rng.choice(MODELS)
    if rng.random() < 0.3:
        doc["vars"] = {"y": value(rng, 2)}
    if rng.random() < 0.3:
        doc["defaults"] = {rng.choice(FIELDS): value(rng, 3)}
    if rng.random() < 0.1:
        doc[rng.choice(KEYS)] = value(rng, 1)
    return doc


def spec_text(rng: random.Random) -> str:
    """A spec file's text: the document as YAML, sometimes with raw hostile YAML spliced in."""
    import yaml

    text = yaml.safe_dump(spec_document(rng), allow_unicode=True, sort_keys=False)
    if rng.random() < 0.25:
        lines = text.splitlines()
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, f"{rng.choice(KEYS)}: {rng.choice(RAW)}")
        text = "\n".join(lines) + "\n"
    return text
