"""Text renderings of library results for people: the plan table and run summaries."""

from __future__ import annotations

from collections.abc import Sequence

from .planning import Plan


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


def credits_text(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


def plan_table(plan: Plan) -> str:
    rows: list[list[str]] = [["STATE", "NAME", "MODEL", "SIZE", "SEED", "IMAGES", "CREDITS"]]
    for item in plan.items:
        rows.append(
            [
                item.state.kind.value,
                item.request.id,
                item.request.model,
                f"{item.width}x{item.height}",
                str(item.request.seed),
                str(item.images),
                "0 (cache)" if item.cached else credits_text(item.credits),
            ]
        )
    counts = ", ".join(f"{n} {state}" for state, n in sorted(plan.counts.items()))
    summary = (
        f"{plan.spec.path}: {len(plan.items)} requests, {plan.images} images ({counts}); "
        f"to do: {len(plan.todo)}, estimated credits: {credits_text(plan.credits)}"
    )
    reasons = [f"  {i.request.id}: {i.state.reason}" for i in plan.items if i.state.reason]
    if plan.cached:
        summary += f" ({plan.cached} restored from the cache of earlier outputs)"
    if plan.gone:
        summary += (
            f"; {len(plan.gone)} in the lock no longer in the spec "
            "(dropped by the next run; --prune deletes their images)"
        )
    return "\n".join([table(rows, right=frozenset({4, 5})), *reasons, summary])
