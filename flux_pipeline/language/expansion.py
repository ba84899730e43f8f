"""Grid expansion: a `Spec` becomes the ordered list of API requests it describes.

For each job, the combinations come from `matrix` (GitHub Actions semantics; an axis written
`{files: GLOB}` or `{rows: FILE}` takes its values from files: `matrix.py`), then `cases`,
then `cases_file`; each combination is repeated `repeat` times. Templates see the spec's
`vars`, the combination's values, `repeat` (1..N) and `index` (the combination's 0-based
position in its job). Expansion order is the order of the spec, so it is deterministic.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Explained, Problem, SpecInvalid
from ..provider.inputs import InputFiles
from .bodies import body_hash, canonical_json
from .matrix import columns, matrix_combinations, read_cases_file, usable_matrix
from .render import (
    TEMPLATE_ERRORS,
    Renderer,
    Template,
    describe_error,
    render_value,
    step_budget,
    template_folders,
)
from .spec import Job, Spec

SEED_MAX = 2**31 - 1  # within every backend's 32-bit signed range; the API's minimum is 1


@dataclass(frozen=True, slots=True)
class Request:
    """One API request of a spec, fully rendered."""

    id: str
    job: str
    vars: Mapping[str, Any]  # the combination's values (the lock's `vars`)
    body: Mapping[str, Any]
    seed: int
    line: int
    field_lines: Mapping[str, int]
    _body_sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def body_sha256(self) -> str:
        """The body's identity in the lock (computed once: plan, cache and lock all ask)."""
        digest = self._body_sha256
        if digest is None:
            digest = body_hash(self.body)
            object.__setattr__(self, "_body_sha256", digest)
        return digest

    def line_of(self, path: str) -> int:
        """The spec line where the field at `path` (`image_size.width`) is set."""
        return self.field_lines.get(path.split(".", 1)[0], self.line)


def derive_seed(spec_name: str, request_name: str, repeat: int) -> int:
    """The seed of a request that sets none: stable across machines, grid edits and rewording."""
    digest = hashlib.sha256(f"{spec_name}\0{request_name}\0{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_MAX + 1


# ----- combinations ------------------------------------------------------------------------


def _inside(folder: Path, relative: str) -> Path | None:
    target = (folder / relative).resolve()
    return target if target.is_relative_to(folder.resolve()) else None


def job_combinations(
    spec: Spec, job: Job, matrix: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Every combination of one job, in order: matrix (resolved), cases, then cases_file rows."""
    combos: list[dict[str, Any]] = []
    if matrix is not None:
        combos += matrix_combinations(matrix)
    combos += [dict(c) for c in job.cases]
    if job.cases_file is not None:
        file = str(spec.path)
        path = _inside(spec.folder, job.cases_file)
        if path is None:
            raise SpecInvalid(
                [
                    Problem(
                        f"cases_file {job.cases_file!r} is outside the spec's folder",
                        file=file,
                        line=job.cases_line,
                        path="cases_file",
                    )
                ]
            )
        combos += read_cases_file(path, file, job.cases_line, spec.max_requests)
    if job.matrix is None and not job.cases and job.cases_file is None:
        combos.append({})
    return combos


# ----- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CompiledJob:
    job: Job
    name: Template
    prompt: Template
    fields: Mapping[str, Any]
    field_lines: Mapping[str, int]


def _compile_job(spec: Spec, renderer: Renderer, job: Job) -> _CompiledJob:
    file = str(spec.path)

    def problem(exc: Exception, line: int, path: str) -> SpecInvalid:
        return SpecInvalid([Problem(describe_error(exc), file, line, job.name, path=path)])

    try:
        name = renderer.text_template(job.name)
    except TEMPLATE_ERRORS as exc:
        raise problem(exc, job.line, "name") from exc
    try:
        if job.prompt_file is not None:
            prompt = renderer.file_template(job.prompt_file)
        else:
            prompt = renderer.text_template(job.prompt or "")
    except TEMPLATE_ERRORS as exc:
        raise problem(exc, job.prompt_line, "prompt_file" if job.prompt_file else "prompt") from exc
    merged = {"model": spec.model, **spec.defaults, **job.request}
    lines = {**spec.defaults_lines, **job.request_lines}
    fields: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            fields[key] = renderer.compile_value(value)
        except TEMPLATE_ERRORS as exc:
            raise problem(exc, lines.get(key, job.line), key) from exc
    return _CompiledJob(job, name, prompt, fields, lines)


def _seed_key(job: Job, name: str, context: Mapping[str, Any]) -> str:
    """What a derived seed depends on besides the spec and the repeat: the request's name, or
    the values of the job's `seed_from` variables."""
    if job.seed_from is None:
        return name
    missing = [v for v in job.seed_from if v not in context]
    if missing:
        raise Explained(f"seed_from names {missing[0]!r}, which is no variable of this request")
    return canonical_json({v: context[v] for v in job.seed_from})


def _shown(combo: Mapping[str, Any]) -> Mapping[str, Any]:
    """A combination as the lock's `vars` show it: a row once, under its axis's name."""
    hidden = columns(combo)
    if not hidden:
        return combo
    return {k: v for k, v in combo.items() if k not in hidden}


def _render_job(
    spec: Spec, compiled: _CompiledJob, combos: Sequence[Mapping[str, Any]], problems: list[Problem]
) -> Iterator[Request]:
    job = compiled.job
    file = str(spec.path)
    suffix_repeat = job.repeat > 1 and "repeat" not in compiled.name.variables
    elsewhere = {name for combo in combos for name in combo}  # some combination's variables
    for index, combo in enumerate(combos):
        for repeat in range(1, job.repeat + 1):
            context = {**spec.vars, **combo, "repeat": repeat, "index": index}
            shown = _shown(combo)
            shown = {**shown, "repeat": repeat} if job.repeat > 1 else shown
            path, line = "name", job.line
            try:
                name = str(compiled.name.render(context))
                if suffix_repeat:
                    name = f"{name}-r{repeat}"
                path, line = "prompt", job.prompt_line
                body = {"prompt": compiled.prompt.render(context).strip()}
                for key, value in compiled.fields.items():
                    path, line = key, compiled.field_lines.get(key, job.line)
                    rendered = render_value(value, context)
                    if rendered is not None:  # null, or a template giving none: left out
                        body[key] = rendered
                path, line = "seed_from", job.line
                seed = body.get("seed")
                if seed is None:
                    seed = body["seed"] = derive_seed(
                        spec.name, _seed_key(job, name, context), repeat
                    )
            except TEMPLATE_ERRORS as exc:
                said = describe_error(exc, context) + _only_elsewhere(exc, elsewhere)
                problems.append(Problem(said, file, line, job.name, shown, path))
                continue
            yield Request(
                id=name,
                job=job.name,
                vars=shown,
                body=body,
                seed=seed if isinstance(seed, int) else 0,
                line=job.line,
                field_lines=compiled.field_lines,
            )


def _only_elsewhere(exc: Exception, elsewhere: set[str]) -> str:
    """A hint for an undefined variable that other combinations of the job have: `cases:`
    rows are added to the matrix's combinations, not crossed with them."""
    match = re.search(r"'([^']+)' is undefined", str(exc))
    if match is None or match.group(1) not in elsewhere:
        return ""
    return (
        f"; {match.group(1)!r} is a variable of other combinations only: cases rows are added "
        "to the matrix's combinations, not crossed with them (to cross, make an axis of "
        "mappings: `p: [{id: fox, text: ...}]`)"
    )


def expand_collect(spec: Spec) -> tuple[list[Request], list[Problem]]:
    """Every request the spec describes, and every problem met while rendering them. The
    number of requests is checked against the spec's cap before any is made, and all of its
    templates share one step budget (`render.step_budget`)."""
    requests: list[Request] = []
    problems: list[Problem] = []
    matrices: list[Mapping[str, Any] | None] = []
    broken: set[int] = set()  # jobs whose axes cannot be made: not expanded
    for job in spec.jobs:
        matrix, found = usable_matrix(spec, job)
        if matrix is None and job.matrix is not None:
            broken.add(job.position)
        matrices.append(matrix)
        problems += found
    _check_count(spec, matrices)
    renderer = Renderer(template_folders(spec.folder), InputFiles(spec.folder))
    with step_budget():
        for job, matrix in zip(spec.jobs, matrices, strict=True):
            if job.position in broken:
                continue
            try:
                compiled = _compile_job(spec, renderer, job)
                combos = job_combinations(spec, job, matrix)
            except SpecInvalid as exc:
                problems += exc.problems
                continue
            requests += _render_job(spec, compiled, combos, problems)
    return requests, problems


def _check_count(spec: Spec, matrices: Sequence[Mapping[str, Any] | None]) -> None:
    """SpecInvalid, at the job's line, once the jobs would make more requests than the cap:
    counted from their axes, cases and repeats (an upper bound), before anything is made."""
    total = 0
    for job, matrix in zip(spec.jobs, matrices, strict=True):
        count = len(job.cases) + (job.cases_file is not None)  # a file's rows: bounded by size
        if matrix is not None:
            axes = [v for k, v in matrix.items() if k not in ("include", "exclude")]
            count += math.prod(len(v) for v in axes) if axes else 0
            count += len(matrix.get("include", ()))
        total += max(count, 1) * job.repeat
        if total > spec.max_requests:
            raise SpecInvalid(
                [
                    Problem(
                        f"the spec makes {total:,} requests or more by this job, more than "
                        f"the {spec.max_requests:,} allowed (--max-spec-requests)",
                        str(spec.path),
                        job.line,
                        job.name,
                    )
                ]
            )


def expand(spec: Spec) -> list[Request]:
    """Every request the spec describes, in spec order. Raises SpecInvalid on template errors."""
    requests, problems = expand_collect(spec)
    if problems:
        raise SpecInvalid(problems)
    return requests
