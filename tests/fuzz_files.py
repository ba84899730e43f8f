"""Hostile files a pull request can commit beside a spec, made from a random source: globs
with repeated `**` over deep trees, FIFOs where a spec reads a file, large rows and cases
files, filter bombs (`join`, `replace`), huge `vars:` lists. `scale` (0..1) sets how large:
the suite uses small ones, `bench/fuzz.py --files` the full ones.

Each attack writes its files under a folder and returns the spec's text; `validate` must
answer 0 or 1 (never hang, never crash) and, for the refused ones, name the problem.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image

HEAD = "version: 1\nmodel: flux/schnell\n"


def deep_glob(rng: random.Random, folder: Path, scale: float) -> str:
    depth = max(3, int(40 * scale))
    here = folder / "photos"
    for k in range(depth):
        here = here / f"d{k}"
    here.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(here / "x.jpg")
    stars = "/".join(["**"] * rng.randint(2, 8))
    return HEAD + (
        'jobs:\n  - name: "e-{{ p | stem }}"\n    prompt: p\n'
        f'    matrix: {{p: {{files: "photos/{stars}/*.jpg"}}}}\n'
    )


def fifo(rng: random.Random, folder: Path, scale: float) -> str:
    where = rng.choice(["rows", "cases_file", "prompt_file", "include"])
    name = {"rows": "rows.csv", "cases_file": "cases.csv"}.get(where, "prompt.j2")
    os.mkfifo(folder / name)
    if where == "rows":
        return (
            HEAD
            + 'jobs:\n  - name: "r-{{ i }}"\n    prompt: p\n    matrix: {i: {rows: rows.csv}}\n'
        )
    if where == "cases_file":
        return HEAD + 'jobs:\n  - name: "c-{{ i }}"\n    prompt: p\n    cases_file: cases.csv\n'
    if where == "prompt_file":
        return HEAD + "jobs:\n  - name: a\n    prompt_file: prompt.j2\n"
    return HEAD + "jobs:\n  - name: a\n    prompt: \"{% include 'prompt.j2' %}\"\n"


def large_rows(rng: random.Random, folder: Path, scale: float) -> str:
    rows = max(10, int(rng.choice([20_000, 200_000, 400_000]) * scale))
    with (folder / "rows.csv").open("w") as out:
        out.write("i,mood,guidance\n")
        for k in range(rows):
            out.write(f"{k},calm {k % 7},{k % 9}.5\n")
    axis = rng.choice(["matrix: {r: {rows: rows.csv}}", "cases_file: rows.csv"])
    return HEAD + f'jobs:\n  - name: "n-{{{{ i }}}}"\n    prompt: "{{{{ mood }}}}"\n    {axis}\n'


def filter_bomb(rng: random.Random, folder: Path, scale: float) -> str:
    size = max(100, int(99_999 * scale))
    bombs = [
        f"{{{{ range(10000) | join('y' * {size}) | length }}}}",
        f"{{{{ ('x' * {size}) | replace('x', 'yyyy') | replace('y', 'zzzz') | length }}}}",
        f"{{{{ 'y'.join(['a'] * 10000) | replace('a', 'b' * {size // 100 + 1}) | length }}}}",
        f"{{{{ ('ab' * {size // 2}).replace('a', 'ccc') | length }}}}",
    ]
    count = rng.choice([1, 30])
    values = ", ".join(str(k) for k in range(count))
    return HEAD + (
        f'jobs:\n  - name: "b-{{{{ k }}}}"\n    prompt: "{rng.choice(bombs)}"\n'
        f"    matrix: {{k: [{values}]}}\n"
    )


def big_vars(rng: random.Random, folder: Path, scale: float) -> str:
    items = max(10, int(rng.choice([150_000, 900_000]) * scale))
    return (
        HEAD
        + "vars:\n  big: ["
        + ",".join("1" for _ in range(items))
        + "]\n"
        + ("jobs: [{name: a, prompt: p}]\n")
    )


ATTACKS: dict[str, Callable[[random.Random, Path, float], str]] = {
    "deep glob": deep_glob,
    "fifo": fifo,
    "large rows": large_rows,
    "filter bomb": filter_bomb,
    "big vars": big_vars,
}


def attack(rng: random.Random, folder: Path, scale: float) -> tuple[str, Path]:
    """One attack, chosen by `rng`, written under `folder`: its name and the spec's path."""
    name = rng.choice(sorted(ATTACKS))
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    spec.write_text(ATTACKS[name](rng, folder, scale), encoding="utf-8")
    return name, spec
