"""Grid expansion: a `Spec` becomes the ordered list of API requests it describes.

For each job, the combinations come from `matrix` (GitHub Actions semantics; an axis written
`{files: GLOB}` takes one value per matching file, sorted), then `cases`, then `cases_file`;
each combination is repeated `repeat` times. Templates see the spec's
`vars`, the combination's values, `repeat` (1..N) and `index` (the combination's 0-based
position in its job). Expansion order is the order of the spec, so it is deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .bodies import body_hash
from .errors import Problem, SpecInvalid
from .inputs import InputFiles
from .render import (
    TEMPLATE_ERRORS,
    Renderer,
    Template,
    describe_error,
    render_value,
    step_budget,
    template_folders,
)
from .spec import Job, Spec, load_yaml

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


def matrix_combinations(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The combinations of a matrix, exactly as GitHub Actions computes them.

    `exclude` entries remove every combination they match (a partial match is enough) and
    apply first. Each `include` entry is then added to every original combination whose
    original values it does not overwrite (values added by an earlier include may be
    overwritten); an entry that fits no combination becomes a new one.
    """
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    include = list(matrix.get("include", ()))
    exclude = list(matrix.get("exclude", ()))
    if not axes:
        return [dict(entry) for entry in include]
    names = list(axes)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]
    combos = [c for c in combos if not any(_matches(c, e) for e in exclude)]
    originals = [dict(c) for c in combos]
    extra: list[dict[str, Any]] = []
    for entry in include:
        fitted = False
        for combo, original in zip(combos, originals, strict=True):
            if all(original[k] == v for k, v in entry.items() if k in original):
                combo.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    return combos + extra


def _matches(combo: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(k in combo and combo[k] == v for k, v in entry.items())


def _cell(text: str) -> Any:
    """A CSV cell as YAML would read the plain scalar: numbers and booleans get their type."""
    if text == "":
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool) else text


def read_cases_file(path: Path, file: str, line: int) -> list[dict[str, Any]]:
    """Rows of a CSV, YAML or JSON file as mappings. Raises SpecInvalid on a bad file."""

    def fail(message: str, at: int | None = line, where: str = file) -> SpecInvalid:
        return SpecInvalid([Problem(message, file=where, line=at, path="cases_file")])

    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                rows = []
                for row in reader:
                    if None in row or any(v is None for v in row.values()):
                        raise fail(
                            f"row {reader.line_num} has a different number of columns "
                            f"than the header",
                            reader.line_num,
                            str(path),
                        )
                    rows.append({k: _cell(v) for k, v in row.items()})
                return rows
        except FileNotFoundError:
            raise fail(f"cases_file not found: {path}") from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise fail(f"cannot read cases_file {path}: {exc}") from exc
    if suffix in (".yaml", ".yml", ".json"):
        data = load_yaml(path, what="cases")  # JSON is YAML
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise fail(f"cases_file {path} must hold a list of mappings")
        return [dict(r) for r in data]
    raise fail(f"cases_file must be .csv, .yaml, .yml or .json, not {path.name!r}")


def files_axis(folder: Path, pattern: str) -> list[str]:
    """The values of a `{files: GLOB}` axis: the files the glob matches inside the spec's
    folder, as sorted POSIX paths relative to it. ValueError if it matches none."""
    if Path(pattern).is_absolute() or ".." in PurePosixPath(pattern).parts:
        raise ValueError(f"files: {pattern!r} must stay inside the spec's folder")
    root = folder.resolve()
    found = sorted(
        p.relative_to(root).as_posix()
        for p in root.glob(pattern)
        if p.is_file() and p.resolve().is_relative_to(root)
    )
    if not found:
        raise ValueError(f"files: {pattern!r} matches no file in {folder}")
    return found


def resolved_matrix(spec: Spec, job: Job) -> Mapping[str, Any] | None:
    """The job's matrix with each `{files: GLOB}` axis made its list of paths."""
    if job.matrix is None or not any(isinstance(v, dict) for v in job.matrix.values()):
        return job.matrix
    matrix = dict(job.matrix)
    for axis, value in job.matrix.items():
        if isinstance(value, dict) and axis not in ("include", "exclude"):
            try:
                matrix[axis] = files_axis(spec.folder, value["files"])
            except ValueError as exc:
                where = f"matrix.{axis}"
                problem = Problem(str(exc), str(spec.path), job.line, job.name, path=where)
                raise SpecInvalid([problem]) from None
    return matrix


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
        combos += read_cases_file(path, file, job.cases_line)
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


def _render_job(
    spec: Spec, compiled: _CompiledJob, combos: Sequence[Mapping[str, Any]], problems: list[Problem]
) -> Iterator[Request]:
    job = compiled.job
    file = str(spec.path)
    suffix_repeat = job.repeat > 1 and "repeat" not in compiled.name.variables
    for index, combo in enumerate(combos):
        for repeat in range(1, job.repeat + 1):
            context = {**spec.vars, **combo, "repeat": repeat, "index": index}
            shown = {**combo, "repeat": repeat} if job.repeat > 1 else combo
            path, line = "name", job.line
            try:
                name = str(compiled.name.render(context))
                if suffix_repeat:
                    name = f"{name}-r{repeat}"
                path, line = "prompt", job.prompt_line
                body = {"prompt": compiled.prompt.render(context).strip()}
                for key, value in compiled.fields.items():
                    path, line = key, compiled.field_lines.get(key, job.line)
                    body[key] = render_value(value, context)
            except TEMPLATE_ERRORS as exc:
                problems.append(Problem(describe_error(exc), file, line, job.name, shown, path))
                continue
            seed = body.get("seed")
            if seed is None:
                seed = body["seed"] = derive_seed(spec.name, name, repeat)
            yield Request(
                id=name,
                job=job.name,
                vars=shown,
                body=body,
                seed=seed if isinstance(seed, int) else 0,
                line=job.line,
                field_lines=compiled.field_lines,
            )


def expand_collect(spec: Spec) -> tuple[list[Request], list[Problem]]:
    """Every request the spec describes, and every problem met while rendering them. The
    number of requests is checked against the spec's cap before any is made, and all of its
    templates share one step budget (`render.step_budget`)."""
    requests: list[Request] = []
    problems: list[Problem] = []
    matrices: list[Mapping[str, Any] | None] = []
    for job in spec.jobs:
        try:
            matrices.append(resolved_matrix(spec, job))
        except SpecInvalid as exc:
            problems += exc.problems
            matrices.append(None)
    if problems:
        return requests, problems
    _check_count(spec, matrices)
    renderer = Renderer(template_folders(spec.folder), InputFiles(spec.folder))
    with step_budget():
        for job, matrix in zip(spec.jobs, matrices, strict=True):
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
