"""Text renderings of library results for people: the plan table, the check report, a diff,
the bodies of a dry run and a run's summary. The library returns values; this says them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import plural
from ..provider.prices import price_table
from ..provider.registry import SIZE_OF_INPUT, Model
from ..running.results import RunResult, Status
from ..store.planning import Plan, PlanItem

if TYPE_CHECKING:  # a run's summary needs neither: a run with nothing to do stays quick
    from ..review.compare import CheckReport, LockDiff
    from ..store.delivery import Assets, FileState


def table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns aligned with two spaces between them; columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def credits_text(item: PlanItem) -> str:
    if item.remote:
        return "0 (remote)"
    if item.cached:
        return "0 (cache)"
    return f"{item.credits:g}" + (" (estimate)" if item.from_table else "")


def plan_table(plan: Plan, over: frozenset[str] = frozenset()) -> str:
    """The plan as a table; `over`: the requests a --max-credits cap would not send."""
    rows: list[list[str]] = [["STATE", "NAME", "MODEL", "SIZE", "SEED", "IMAGES", "CREDITS"]]
    for item in plan.items:
        rows.append(
            [
                item.state.kind.value,
                item.request.id,
                item.request.model,
                f"{item.width}x{item.height}" + ("" if item.size_checked else "?"),
                str(item.request.seed),
                str(item.images),
                credits_text(item) + (" over budget" if item.request.id in over else ""),
            ]
        )
    counts = ", ".join(f"{n} {state}" for state, n in sorted(plan.counts.items()))
    summary = (
        f"{plan.spec.path}: {plural(len(plan.items), 'request')} ({counts}), "
        f"{plural(plan.images, 'image')} in {plan.spec.output}/; "
        f"to do: {len(plan.todo)}, estimated credits: {plan.credits:g}"
    )
    if plan.from_table:
        summary += (
            f" (price table of {price_table()['date']} for {', '.join(plan.from_table)}; "
            "the first answers will show the real cost)"
        )
    reasons = [f"  {i.request.id}: {i.state.reason}" for i in plan.items if i.state.reason]
    if not all(i.size_checked for i in plan.items):
        reasons.append(
            "  SIZE?: the documents do not state this size; the image's own size is recorded"
        )
    if plan.cached:
        summary += f" ({plan.cached} restored from the cache of earlier outputs)"
    if over:
        summary += f"; {len(over)} over budget: not sent under the cap"
    if plan.gone:
        summary += (
            f"; {len(plan.gone)} in the lock no longer in the spec "
            "(dropped by the next run; --prune deletes their images)"
        )
    return "\n".join([table(rows, right=frozenset({4, 5})), *reasons, summary])


def check_text(report: CheckReport) -> str:
    """What `check` prints for one spec."""
    text = _requests_check_text(report)
    if report.asset_problems:
        path = report.spec.path
        count = len(report.asset_problems)
        text += f"\n{path}: {plural(count, 'asset problem')}:"
        text += "".join(f"\n  {line}" for line in report.asset_problems)
    elif report.assets is not None:
        files = report.assets.files
        delivered = sum(1 for f in files if f.status.value == "up to date")
        text += f"; assets: {delivered} of {plural(len(files), 'file')} delivered"
    return text


def _requests_check_text(report: CheckReport) -> str:
    path = report.spec.path
    if not report.findings:
        text = f"{path}: up to date ({plural(report.requests, 'request')})"
        if report.mismatches:
            text += f"; {len(report.mismatches)} not as asked (--strict fails on them):"
            text += "".join(f"\n  {f.id}: {f.reason}" for f in report.mismatches)
        if report.leftovers:
            text += (
                f"\n  warning: {plural(len(report.leftovers), 'image')} in the output folder "
                "no lock entry names (`run --prune` deletes them; --strict fails on them):"
            )
            text += "".join(f"\n    {name}" for name in report.leftovers)
        return text
    summary = f"{len(report.findings) - report.gone} of {report.requests} requests are stale"
    if report.gone:
        summary += f"; {report.gone} in the lock no longer in the spec"
    lines = [f"{path}: {summary}"]
    lines += [f"  {f.state:8}  {f.id}: {f.reason}" for f in report.findings]
    if len(report.findings) > report.gone:
        lines.append(f"  to bring it up to date: flux-pipeline run {path}")
    elif report.gone:
        lines.append(f"  to drop them from the lock: flux-pipeline run {path}")
    return "\n".join(lines)


def diff_text(result: LockDiff, lock: str, ref: str) -> str:
    """What `diff` prints: requests added, removed and changed since REF."""
    if result.empty:
        return f"{lock}: no changes since {ref}"
    lines = [f"added    {key}" for key in result.added]
    lines += [f"removed  {key}" for key in result.removed]
    shown = {**result.changed, **result.shown}
    lines += [f"changed  {key}: {'; '.join(fields)}" for key, fields in shown.items()]
    lines += [f"asset    {path}: {what}" for path, what in result.assets.items()]
    return "\n".join(lines)


def dry_run_lines(items: Iterable[PlanItem]) -> Iterable[str]:
    """One JSON line per request a run would send: its id and exact body."""
    for item in items:
        yield json.dumps({"id": item.request.id, "body": item.request.body}, ensure_ascii=False)


def _counts(result: RunResult) -> list[str]:
    """How the run's requests ended, counted: done, restored (by where from), failed."""
    restored = Counter(r.reason for r in result.results if r.status is Status.RESTORED)
    from_cache = restored.pop("from the cache", 0)
    moved = Counter({k: n for k, n in restored.items() if k.startswith("moved from ")})
    parts = [f"{result.count(Status.DONE)} done"]
    parts += [f"{n} {where} (output: moved)" for where, n in sorted(moved.items())]
    if restored - moved:
        parts.append(f"{sum((restored - moved).values())} taken from an interrupted run")
    if from_cache:
        parts.append(f"{from_cache} restored from the cache")
    parts += [f"{result.count(Status.SKIPPED)} skipped", f"{result.count(Status.FAILED)} failed"]
    if result.count(Status.NOT_SENT):
        parts.append(f"{result.count(Status.NOT_SENT)} not sent")
    return parts


def run_summary(result: RunResult) -> str:
    """A run's closing report: counts, credits, time, and each failure and stop."""
    parts = _counts(result)
    credits = f"credits {result.credits:g}"
    if result.estimated:
        credits += f" ({result.estimated:g} estimated: the answers did not say)"
    lines = [f"{result.spec.path}: " + ", ".join(parts) + f"; {credits}; {result.seconds:.1f} s"]
    spec = result.spec
    lines.append(f"  images in {spec.output}/, lock {spec.lock_path}")
    if result.overloads:
        settled = f"{result.limit:.0f}" if result.limit is not None else "?"
        lines.append(
            f"  the provider answered 429 (too many requests) {result.overloads} "
            f"time{'s' if result.overloads != 1 else ''}; requests in flight settled at {settled}"
        )
    for kept in (r for r in result.results if r.status is Status.DONE and r.reason):
        lines.append(f"  warning {kept.id}: {kept.reason}")
    for failure in (r for r in result.results if r.status is Status.FAILED):
        lines.append(f"  failed {failure.id}: {failure.reason}")
    unanswered = sum(1 for r in result.results if r.status is Status.FAILED and r.unanswered)
    if unanswered:
        lines.append(
            f"  {unanswered} timed out after sending: the provider may have billed "
            f"{'it' if unanswered == 1 else 'them'}; rerun to try again"
        )
    unsent = Counter(r.reason for r in result.results if r.status is Status.NOT_SENT)
    if result.stopped:
        lines.append(f"  stopped: {result.stopped}")
    else:
        lines += [f"  not sent: {reason} ({n})" for reason, n in unsent.items()]
    if result.from_remote:
        lines.append(
            f"  {plural(result.from_remote, 'request')} from the remote cache, for nothing"
        )
    if result.pushed:
        lines.append(f"  pushed {plural(result.pushed, 'request')} to the remote cache")
    lines += [f"  remote: {problem}" for problem in result.remote_problems]
    if result.delivery is not None:
        lines += [f"  {line}" for line in result.delivery.lines()]
    return "\n".join(lines)


def models_table(models: Iterable[Model]) -> str:
    """Every model: its sizes, whether it takes input images, its fields."""
    rows = [["MODEL", "SIZES", "FORMATS", "INPUTS", "FIELDS"]]
    for model in models:
        formats = model.request_schema["properties"].get("output_format", {}).get("enum", ["-"])
        rows.append(
            [
                model.name,
                sizes_text(model),
                "/".join(formats),
                inputs_text(model),
                fields_text(model),
            ]
        )
    return table(rows)


def sizes_text(model: Model) -> str:
    if model.size_range:
        low, high = model.size_range
        return f"image_size {low}..{high} (x32) or preset"
    if model.ratios:
        return f"aspect_ratio {model.ratios[0]}..{model.ratios[-1]}"
    if model.name in SIZE_OF_INPUT:
        return "the input's size"
    return "not stated (recorded)"


def inputs_text(model: Model) -> str:
    schema = model.request_schema["properties"]
    if "image_urls" in schema:
        item = schema["image_urls"]
        return f"image_urls {item.get('minItems', 0)}..{item['maxItems']}"
    if "image_url" in schema:
        arrays = [b for b in schema["image_url"].get("anyOf", []) if b.get("type") == "array"]
        return f"image_url (1..{arrays[0]['maxItems']})" if arrays else "image_url"
    return "-"


def fields_text(model: Model) -> str:
    hidden = {"model", "prompt", "image_size", "aspect_ratio", "output_format"}
    hidden |= {"image_url", "image_urls"}
    return ", ".join(sorted(model.fields - hidden))


def slots_text(assets: Assets) -> str:
    """What `pick --list` prints: each slot, its candidates and pick, each file's state."""
    path = assets.spec.path
    if not assets.slots:
        return f"{path}: no assets (a job declares them with `assets:`)"
    lines = [f"{path}: {plural(len(assets.slots), 'slot')}"]
    files: dict[str, list[FileState]] = {}
    for file in assets.files:
        files.setdefault(file.slot, []).append(file)
    for state in assets.slots:
        slot = state.slot
        said = str(state.status)
        if state.pick.candidate and state.status.value != "unpicked":
            said = f"{said}: {state.pick.candidate}"
        if state.reason:
            said += f" ({state.reason})"
        lines.append(f"  {slot.name}: {said}")
        rejected = set(state.pick.rejected)
        names = [c.name + (" (rejected)" if c.name in rejected else "") for c in slot.candidates]
        lines.append(f"    candidates: {', '.join(names)}")
        if state.pick.note:
            lines.append(f"    note: {state.pick.note}")
        for file in files.get(slot.name, []):
            lines.append(f"    {file.path}: {file.status}")
    return "\n".join(lines)


def assets_table(assets: Assets) -> str:
    """What `plan` shows of a spec's assets: each file, its slot's state and what a run does."""
    states = {s.slot.name: s for s in assets.slots}
    rows = [["ASSET", "SLOT", "FROM", "STATE"]]
    for file in assets.files:
        slot = states[file.slot]
        source = slot.source.candidate if slot.source else (slot.pick.candidate or "-")
        state = str(file.status) if slot.source else str(slot.status)
        rows.append([file.path, file.slot, source, state])
    picked = sum(1 for s in assets.slots if s.source is not None)
    summary = f"assets: {plural(len(assets.slots), 'slot')} ({picked} with a usable pick)"
    reasons = [f"  {s.slot.name}: {s.reason}" for s in assets.slots if s.status.value == "stale"]
    counts = Counter(s.status.value for s in assets.slots)
    if counts["waiting"]:
        summary += f"; {counts['waiting']} wait for their images (`run` makes them, then delivers)"
    if counts["unpicked"]:
        spec = assets.spec.path
        summary += f"; {counts['unpicked']} to pick (`flux-pipeline review {spec}`)"
    return "\n".join([table(rows), *reasons, summary])
