"""`flux-pipeline review`: a local page to compare each slot's candidates and pick with the
keyboard, live while a run works (issue 27).

`create_app(spec, token=...)` is a Starlette app: the page, `/api/state` (every slot with its
candidates, pick and state; answered 204 when nothing changed since the version the page
has), `POST /api/slots/{slot}` (a slot's whole decision, written at once to SPEC.picks.yaml by
`store.picks.decide`), and two mounts that serve only image files: the output folder
(`images`) and the spec's folder (`inputs`, for an edit's input photos). What the page reads
is recomputed from the lock and the picks file when either changes: a run saves its lock as
it works, so new images appear without the review ever taking the output folder's writer
lock. Every request needs the token of the printed URL (a cookie after the first page); a
state change needs it in a header too, and an `Origin` of this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigError, FluxPipelineError
from ..language.assets import Slot, slots_of
from ..language.expansion import Request
from ..language.spec import Spec
from ..language.validation import validate
from ..provider.inputs import references
from ..store.delivery import Assets, FileStatus, SlotStatus, assess
from ..store.lock import Lock, read_lock
from ..store.picks import decide, picks_path

COOKIE = "flux_review"
HEADER = "x-review-token"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})


class ImageFiles(StaticFiles):
    """StaticFiles that serves image files only, and nothing under a dot-folder (the tool's
    own `.flux-cache`, a `.git`): a page can show images, never read the folder's records."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        parts = Path(path).parts
        if Path(path).suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith(".") for p in parts):
            return "", None
        return super().lookup_path(path)


class TokenGuard:
    """Every request carries the token (the query's `token`, else the cookie); a request that
    changes state carries it in a header as well and comes from this server's own page."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = HttpRequest(scope)
        given = request.query_params.get("token") or request.cookies.get(COOKIE, "")
        allowed = hmac.compare_digest(given.encode(), self.token.encode())
        if allowed and request.method not in ("GET", "HEAD"):
            header = request.headers.get(HEADER, "")
            origin = request.headers.get("origin", "")
            here = f"{request.url.scheme}://{request.headers.get('host', '')}"
            allowed = hmac.compare_digest(header.encode(), self.token.encode()) and origin == here
        if not allowed:
            await Response("forbidden: open the URL `flux-pipeline review` printed", 403)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


@dataclass
class Review:
    """What the page shows, reloaded when the spec, its lock or its picks change."""

    spec: Spec
    requests: Sequence[Request] = ()
    slots: Sequence[Slot] = ()
    version: str = ""
    assets: Assets | None = None
    lock: Lock | None = None

    def stamp(self) -> str:
        stamps = []
        for path in (self.spec.path, self.spec.lock_path, picks_path(self.spec)):
            with contextlib.suppress(OSError):
                stat = path.stat()
                stamps.append(f"{stat.st_mtime_ns:x}.{stat.st_size:x}")
            stamps.append("-")
        return "".join(stamps)

    def refresh(self) -> None:
        """Read again whatever changed (the spec is expanded again only if it changed)."""
        stamp = self.stamp()
        if stamp == self.version:
            return
        if not self.requests or stamp.split("-")[0] != self.version.split("-")[0]:
            self.requests = validate(self.spec)
            self.slots = slots_of(self.spec, self.requests)
        self.lock = read_lock(self.spec.lock_path)
        self.assets = assess(self.spec, self.requests, self.lock, slots=self.slots)
        self.version = stamp


def create_app(spec: Spec, *, token: str) -> Starlette:
    """The review app of one spec (already loaded and valid); `token` guards every route."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        review = Review(spec)
        await asyncio.to_thread(review.refresh)
        yield {"review": review, "writes": asyncio.Lock()}

    routes = [
        Route("/", page, name="page"),
        Route("/api/state", state, name="state"),
        Route("/api/slots/{slot:path}", choose, methods=["POST"], name="choose"),
        Mount("/images", app=ImageFiles(directory=spec.output, check_dir=False), name="images"),
        Mount("/inputs", app=ImageFiles(directory=spec.folder, check_dir=False), name="inputs"),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(TokenGuard, token=token)]
    )


def review_page(title: str, token: str) -> str:
    """The page (the packaged template, autoescaped): its script reads `/api/state`."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flux_pipeline.review", "templates"), autoescape=True
    )
    return environment.get_template("review.html.j2").render(title=title, token=token)


async def page(request: HttpRequest) -> Response:
    token = request.query_params.get("token") or request.cookies.get(COOKIE, "")
    review: Review = request.state.review
    response = HTMLResponse(review_page(review.spec.name, token))
    if request.query_params.get("token"):
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return response


async def state(request: HttpRequest) -> Response:
    review: Review = request.state.review
    try:
        await asyncio.to_thread(review.refresh)
    except FluxPipelineError as exc:  # the spec or the picks file, mid-edit: said on the page
        return JSONResponse({"version": "", "error": str(exc), "slots": []})
    if request.query_params.get("since") == review.version:
        return Response(status_code=204)
    return JSONResponse(_state_json(request, review))


async def choose(request: HttpRequest) -> Response:
    review: Review = request.state.review
    slot = request.path_params["slot"]
    try:
        body = await request.json()
        pick = body.get("pick")
        rejected = [str(r) for r in body.get("rejected", [])]
        note = str(body.get("note", ""))
    except (ValueError, AttributeError, TypeError):
        raise HTTPException(400, "expected {pick, rejected, note}") from None
    async with request.state.writes:
        try:
            await asyncio.to_thread(
                decide, review.spec, review.requests, slot, pick, rejected, note, slots=review.slots
            )
        except ConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        await asyncio.to_thread(review.refresh)
    return JSONResponse(_state_json(request, review))


# ----- what the page reads -----------------------------------------------------------------


def _state_json(request: HttpRequest, review: Review) -> dict[str, Any]:
    assets = review.assets
    assert assets is not None
    entries = review.lock.entries if review.lock else {}
    by_id = {r.id: r for r in review.requests}
    files: dict[str, list[Any]] = {}
    for file in assets.files:
        files.setdefault(file.slot, []).append({"path": file.path, "status": str(file.status)})
    slots = []
    for slot_state in assets.slots:
        slot = slot_state.slot
        members = [by_id[c.request] for c in slot.candidates]
        differing = _differing([r.vars for r in members])
        slots.append(
            {
                "name": slot.name,
                "job": slot.job,
                "vars": dict(slot.vars),
                "status": str(slot_state.status),
                "stale": slot_state.status is SlotStatus.STALE,
                "reason": slot_state.reason,
                "pick": slot_state.pick.candidate,
                "rejected": list(slot_state.pick.rejected),
                "note": slot_state.pick.note,
                "files": files.get(slot.name, []),
                "candidates": [
                    _candidate_json(
                        request, review, c.name, c.image, by_id[c.request], differing, entries
                    )
                    for c in slot.candidates
                ],
            }
        )
    return {
        "spec": review.spec.name,
        "version": review.version,
        "slots": slots,
        "run": _what_run_does(assets),
    }


def _candidate_json(
    request: HttpRequest,
    review: Review,
    name: str,
    image: int,
    member: Request,
    differing: Sequence[str],
    entries: Mapping[str, Any],
) -> dict[str, Any]:
    entry = entries.get(member.id)
    url = size = None
    if entry is not None and entry.body_sha256 == member.body_sha256:
        output = entry.outputs[image]
        where = review.spec.lock_path.parent / output.path
        relative = os.path.relpath(where, review.spec.output)
        if not relative.startswith(".."):
            url = str(request.url_for("images", path=Path(relative).as_posix()))
            url += f"?v={output.sha256[:12]}"  # a new image at the same path is fetched anew
            size = f"{output.width}x{output.height}"
    inputs = [
        str(request.url_for("inputs", path=r.path))
        for r in references(member.body)
        if (review.spec.folder / r.path).is_file()
    ]
    return {
        "name": name,
        "request": member.id,
        "model": member.model,
        "seed": member.seed,
        "differs": {k: member.vars.get(k) for k in differing},
        "url": url,
        "size": size,
        "inputs": inputs,
    }


def _differing(combos: Sequence[Mapping[str, Any]]) -> list[str]:
    """The variables whose values differ among a slot's candidates (model, repeat, ...)."""
    keys = sorted({k for combo in combos for k in combo})
    return [k for k in keys if len({repr(c.get(k)) for c in combos}) > 1]


def _what_run_does(assets: Assets) -> str:
    """One line: what the next `run` (or `deliver`) will do with the picks."""
    deliver = sum(1 for f in assets.files if f.status is FileStatus.DELIVER)
    unpicked = sum(1 for s in assets.slots if s.status is SlotStatus.UNPICKED)
    stale = sum(1 for s in assets.slots if s.status is SlotStatus.STALE)
    parts = []
    if deliver:
        parts.append(f"`run` (or `deliver`) will write {deliver} asset file(s)")
    if unpicked:
        parts.append(f"{unpicked} slot(s) to pick")
    if stale:
        parts.append(f"{stale} stale pick(s) to pick again")
    return "; ".join(parts) or "every slot is picked and delivered"
