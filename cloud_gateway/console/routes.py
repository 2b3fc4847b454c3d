"""The console's HTTP routes: one static page, and JSON under ``/console/api/``.

The page (HTML, script, style sheet) is served to anyone: it holds no data.
Every JSON call checks the bearer token with :func:`core.http_auth.admit`:
operators and viewers read; only operators act. Reviewers see the review page
alone, and label its rows (as operators may); viewers see the queue but do not
label. The page keeps the token in
``sessionStorage`` and sends it in the ``Authorization`` header; it never
travels in a URL. A gateway without tokens is open: everyone acts as operator,
and the session call says so. An action must be sent as JSON
(``Content-Type: application/json``), which a form on another site cannot send
without the browser asking first, so an open gateway cannot be driven from
another site's page.

Errors are ``{"error": "..."}`` with the status of their kind (see :data:`STATUS`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources

import structlog
from aiohttp import web

from edgecloud.cloud_gateway.console.views import CONSOLE_ACTIONS, FleetConsole
from edgecloud.cloud_gateway.review import LabelFeed
from edgecloud.core.auth import OPERATOR, REVIEWER, VIEWER
from edgecloud.core.errors import EdgecloudError
from edgecloud.core.http_auth import admit, error_response, refusal

log = structlog.get_logger("edgecloud.gateway.console")

READERS = frozenset({OPERATOR, VIEWER})
ACTORS = frozenset({OPERATOR})
REVIEW_READERS = frozenset({OPERATOR, VIEWER, REVIEWER})
LABELLERS = frozenset({OPERATOR, REVIEWER})
MAX_ACTION_BODY = 4096
"""Largest action body read (it holds one small JSON object)."""

_PAGE_SECURITY = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
_PAGES = ("agents", "rollouts", "models", "policies", "examples", "review")
_REVIEWER_PAGES = ("review",)


def _read_static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def _json(data: object) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, allow_nan=False),
                             headers={"Cache-Control": "no-store", **_PAGE_SECURITY})


async def _call(what: str, work: Callable[[], object]) -> object:
    """Run blocking ``work`` in a thread; a domain error becomes its HTTP answer, anything
    else a 500 naming a request id (the log holds the rest)."""
    try:
        return await asyncio.to_thread(work)
    except EdgecloudError as exc:
        raise refusal(exc) from None
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("console_failed", what=what, request_id=request_id)
        raise error_response(web.HTTPInternalServerError,
                             f"internal error (request id {request_id})") from None


async def _json_body(request: web.Request) -> dict:
    """An action's JSON object body (415, 413 or 400 with a message otherwise)."""
    if request.content_type != "application/json":
        raise error_response(web.HTTPUnsupportedMediaType,
                             "send the action as JSON (Content-Type: application/json)")
    if request.content_length is not None and request.content_length > MAX_ACTION_BODY:
        raise error_response(web.HTTPRequestEntityTooLarge, "the action body is too large")
    try:
        body = json.loads(await request.content.read(MAX_ACTION_BODY + 1) or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise error_response(web.HTTPBadRequest, "the action body is not JSON") from None
    if not isinstance(body, dict):
        raise error_response(web.HTTPBadRequest, "the action body must be a JSON object")
    return body


def console_routes(console: FleetConsole, reviews: LabelFeed | None = None
                   ) -> list[web.RouteDef]:
    """The routes of ``/console`` over ``console``; ``reviews`` takes the review page's
    labels (the same call as the ReviewService's LabelReview)."""
    feed = reviews or LabelFeed(console.review_queue)
    page = _read_static("console.html")
    static = {name: (_read_static(name), kind) for name, kind in _STATIC.items()}

    async def index(_request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers=_PAGE_SECURITY)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in static:
            raise error_response(web.HTTPNotFound, f"no console file {name[:60]!r}")
        body, kind = static[name]
        return web.Response(body=body, content_type=kind, charset="utf-8",
                            headers=_PAGE_SECURITY)

    async def session(request: web.Request) -> web.Response:
        who = admit(request, REVIEW_READERS)
        role = who.role if who is not None else OPERATOR
        return _json({"role": role, "name": who.name if who is not None else "",
                      "open": who is None, "can_act": role in ACTORS,
                      "can_label": role in LABELLERS, "actions": list(CONSOLE_ACTIONS),
                      "pages": list(_REVIEWER_PAGES if role == REVIEWER else _PAGES)})

    def reader(what: str, work: Callable[[], object], roles: frozenset[str] = READERS
               ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            admit(request, roles)
            return _json(await _call(what, work))
        return handle

    async def label(request: web.Request) -> web.Response:
        who = admit(request, LABELLERS)
        body = await _json_body(request)
        value = body.get("label")
        if isinstance(value, bool) or not isinstance(value, int):
            raise error_response(web.HTTPBadRequest,
                                 'the label body must be {"label": CLASS} with a whole number')
        reviewer = (who.name or who.role) if who is not None else "reviewer"
        review_id = request.match_info["review_id"]
        try:
            given = await feed.label(review_id, value, reviewer)
        except EdgecloudError as exc:
            raise refusal(exc) from None
        return _json({"review_id": given.review_id, "label": given.label,
                      "reviewer": given.reviewer, "labelled_at": given.labelled_at,
                      "answer_id": given.answer_id})

    async def act(request: web.Request) -> web.Response:
        who = admit(request, ACTORS)
        body = await _json_body(request)
        if not isinstance(body.get("target", "edge"), str):
            raise error_response(web.HTTPBadRequest,
                                 'the action body must be {"target": "edge" or "cloud"}')
        name, action = request.match_info["name"], request.match_info["action"]
        target = body.get("target", "edge")
        result = await _call("act", lambda: console.act(action, name, target))
        log.info("console_rollout_action", action=action, model=name, target=target,
                 by=who.describe() if who is not None else "open gateway",
                 state=result["rollout"]["state"], generation=result["generation"])
        return _json(result)

    return [
        web.get("/console", index),
        web.get("/console/", index),
        web.get("/console/static/{name}", asset),
        web.get("/console/api/session", session),
        web.get("/console/api/agents", reader("agents", console.agents)),
        web.get("/console/api/rollouts", reader("rollouts", console.rollouts)),
        web.get("/console/api/models", reader("models", console.models)),
        web.get("/console/api/policies", reader("policies", console.policies)),
        web.get("/console/api/examples", reader("examples", console.examples)),
        web.get("/console/api/review", reader("review", console.review, REVIEW_READERS)),
        web.post("/console/api/rollouts/{name}/{action}", act),
        web.post("/console/api/review/{review_id}/label", label),
    ]
