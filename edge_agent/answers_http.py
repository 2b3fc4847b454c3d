"""``GET /v2/answers/{answer_id}`` on the agent's HTTP port: a better answer by id.

The JSON document is the record (:meth:`edge_agent.answers.AnswerRecord.to_dict`);
a malformed id is 400 and an unknown or expired one 404, each with the v2 REST
error document ``{"error": "..."}``.
"""

from __future__ import annotations

from aiohttp import web

from edgecloud.core.errors import EdgecloudError
from edgecloud.core.http_auth import refusal
from edgecloud.edge_agent.answers import AnswerStore


def answer_routes(store: AnswerStore) -> list[web.RouteDef]:
    """The HTTP routes of the answers store."""

    async def get_answer(request: web.Request) -> web.Response:
        try:
            record = await store.get(request.match_info["answer_id"])
        except EdgecloudError as exc:
            raise refusal(exc) from None
        return web.json_response(record.to_dict())

    return [web.get("/v2/answers/{answer_id}", get_answer)]
